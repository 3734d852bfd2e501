"""Throughput of one exported ONNX model in-process (ONNX Runtime) vs served by the local Triton server.

    python bench/serving.py [--checkpoint gamma-local-effl0] [--concurrency 1 2 4] [--seconds 10]

Both sides run the same ``model.onnx`` with ONNX Runtime on this machine's cores: in-process, client threads share
one session; served, client threads share one ``TritonBackend`` and Triton's python backend runs the session
(dynamic batching on). Every request is one 512x512 crop, as the worker sends them. The ratio served/in-process
is the price of the server hop (gRPC, shared memory, scheduling) on CPU; the target is >= 0.9.

Without ``--checkpoint`` a random-weight gamma-b0 is used: throughput does not depend on the weights.
Measurements are interleaved (in-process, served, in-process, …) ``--repeats`` times per concurrency; the ratio
is the median of the pairwise ratios, so background load on a shared machine hits both sides alike (the load
average is printed: on a busy machine read the ratio, not the absolute rates).
"""

from __future__ import annotations

import argparse
import os
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import tritonclient.grpc as grpcclient

from deploy.export_triton import ExportOptions, export_to_repository
from deploy.onnx_export import ort_session
from deploy.triton_client import TritonBackend
from deploy.triton_server import TritonServer, free_port
from gamma import wire
from gamma.config import preset
from gamma.model import GammaModel
from gamma.weights import Checkpoint, load_checkpoint, save_checkpoint


@dataclass
class Point:
    images: int
    seconds: float
    latencies: list[float]

    @property
    def throughput(self) -> float:
        return self.images / self.seconds

    @property
    def p50_ms(self) -> float:
        return float(np.median(self.latencies) * 1000)


def measure(infer: Callable[[np.ndarray], object], crops: np.ndarray, concurrency: int, seconds: float) -> Point:
    """``concurrency`` threads send one crop at a time until ``seconds`` have passed (after one warm-up each)."""
    for index in range(concurrency):
        infer(crops[index % len(crops)][None])
    latencies: list[list[float]] = [[] for _ in range(concurrency)]
    finished = [0.0] * concurrency
    start = threading.Barrier(concurrency + 1)
    began = 0.0

    def worker(index: int) -> None:
        start.wait()
        deadline = began + seconds
        while time.perf_counter() < deadline:
            sent = time.perf_counter()
            infer(crops[(index + len(latencies[index])) % len(crops)][None])
            latencies[index].append(time.perf_counter() - sent)
        finished[index] = time.perf_counter()

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(concurrency)]
    for thread in threads:
        thread.start()
    began = time.perf_counter()
    start.wait()
    for thread in threads:
        thread.join()
    flat = [latency for per_thread in latencies for latency in per_thread]
    return Point(len(flat), max(finished) - began, flat)


def _random_checkpoint(directory: Path) -> Checkpoint:
    torch.manual_seed(0)
    model = GammaModel(preset("gamma-b0")).eval()
    save_checkpoint(model, directory, {"name": "gamma-bench", "version": 1})
    return load_checkpoint(directory)


def _batch_sizes(url: str, model: str) -> Counter[int]:
    with grpcclient.InferenceServerClient(url) as client:
        (stats,) = client.get_inference_statistics(model).model_stats
    return Counter({s.batch_size: s.compute_infer.count for s in stats.batch_stats})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", help="checkpoint name or folder (default: random gamma-b0)")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--seconds", type=float, default=5.0, help="per measurement (default %(default)s)")
    parser.add_argument("--repeats", type=int, default=3, help="interleaved runs per point (default %(default)s)")
    parser.add_argument("--max-batch", type=int, default=4, help="Triton max_batch_size (default %(default)s)")
    parser.add_argument("--threads", type=int, default=0, help="ONNX Runtime threads, both sides (0 = per core)")
    parser.add_argument("--max-queue-delay-us", type=int, default=2000)
    parser.add_argument(
        "--instances", type=int, default=2, help="Triton model instances, CPU: ~one per 1-2 cores (default %(default)s)"
    )
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="gamma-bench-") as tmp:
        root = Path(tmp)
        checkpoint = load_checkpoint(args.checkpoint) if args.checkpoint else _random_checkpoint(root / "gamma-bench")
        options = ExportOptions(
            backend="python",
            max_batch_size=args.max_batch,
            cpu_threads=args.threads,
            max_queue_delay_us=args.max_queue_delay_us,
            instance_count=args.instances,
        )
        exported = export_to_repository(checkpoint, root / "repository", options, log=lambda line: print(f"# {line}"))
        session = ort_session(exported.version_dir / "model.onnx", args.threads)
        crops = np.random.default_rng(0).integers(0, 256, (8, *wire.IMAGES.concrete(512, 512)), dtype=np.uint8)

        def in_process(images: np.ndarray) -> object:
            return session.run(None, {wire.IMAGES.name: images})

        server = TritonServer(
            root / "repository", http_port=free_port(), grpc_port=free_port(), log_file=root / "tritonserver.log"
        )
        with server:
            backend = TritonBackend(server.grpc_url, exported.name, timeout_s=300)
            print(
                f"# {checkpoint.config.name} ({checkpoint.name}), 1 crop per request, median of {args.repeats} "
                f"interleaved runs of {args.seconds:g} s per point; load average {os.getloadavg()[0]:.1f}"
            )
            print(
                f"{'clients':>7} {'in-process img/s':>17} {'served img/s':>13} {'ratio':>6} "
                f"{'p50 in-proc ms':>15} {'p50 served ms':>14}  served batch sizes"
            )
            for concurrency in args.concurrency:
                local: list[Point] = []
                served: list[Point] = []
                before = _batch_sizes(server.grpc_url, exported.name)
                for _ in range(args.repeats):
                    local.append(measure(in_process, crops, concurrency, args.seconds))
                    served.append(measure(backend.infer, crops, concurrency, args.seconds))
                sizes = _batch_sizes(server.grpc_url, exported.name) - before
                local_rate = float(np.median([p.throughput for p in local]))
                served_rate = float(np.median([p.throughput for p in served]))
                # Ratio of each adjacent (in-process, served) pair, then the median: load bursts from other
                # processes last seconds, so neighbours see similar load even when the medians do not.
                ratio = float(np.median([s.throughput / p.throughput for p, s in zip(local, served)]))
                local_p50 = float(np.median([p.p50_ms for p in local]))
                served_p50 = float(np.median([p.p50_ms for p in served]))
                print(
                    f"{concurrency:>7} {local_rate:>17.2f} {served_rate:>13.2f} {ratio:>6.2f} "
                    f"{local_p50:>15.0f} {served_p50:>14.0f}  {dict(sorted(sizes.items()))}",
                    flush=True,
                )
            print(f"# load average at the end {os.getloadavg()[0]:.1f}")
            backend.close()


if __name__ == "__main__":
    main()
