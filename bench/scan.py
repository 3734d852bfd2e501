"""Images/s of a whole scan (gamma-submit -> Redis -> Celery workers -> backend -> masks -> DB) vs the raw backend.

    python bench/scan.py [--images 48] [--repeats 2] [--workers 2] [--chunk-size 4] [--backend triton|torch]
                         [--coverage centre|five|full]

Raw: the same backend, deployed as the workers deploy it, fed the same images already preprocessed (the same
tiles, under the scan's ``--coverage``: ``GAMMA_COVERAGE``, default ``five``) and cut into the same batches (a
chunk's tiles, at most the backend's batch size per batch, as :func:`gamma.inference.infer_tiles` sends them),
with nothing around inference. For PyTorch that is ``--workers`` processes of
``--torch-threads`` threads each (Python threads in one process reach about one process's speed, which would
flatter the scan); for Triton, ``--workers`` client threads on one server. Scan: the real path — ``gamma-submit
FOLDER --wait`` in a subprocess, a Redis server, ``celery worker --pool=prefork -c W`` — timed by the scan's own
clock in the database (scan row created -> last chunk committed), after a warm-up scan so the workers have their
model loaded. The ratio scan/raw is the price of everything around inference: listing, queueing, fetching,
decoding, PNG masks, the database; the target is >= 0.95.

The measured scans run ``gamma-submit --full`` (every image inferred again, as a first scan would). After the last
one, the same unchanged folder is submitted once more without ``--full``: an incremental rescan, whose every key
is linked to its existing result at listing time. Its time is printed as a fraction of the first scan's
(target <= 2%).

The default backend, ``--backend triton`` (the deployment the issue measures), exports the checkpoint (python
backend) and serves it with the local Triton server; the workers then hold a ``TritonBackend`` and the raw side
is ``--workers`` client threads on that server. ``--backend torch`` measures the in-process PyTorch backend
instead (``--workers`` processes of ``--torch-threads`` threads on the raw side, the same in the workers).
Without ``--model`` a random-weight gamma-b0 is used: throughput does not depend on the weights. Raw and scan
runs alternate (raw, scan, raw, scan, raw) and medians are compared. Sources are a local folder (S3 through moto
would add moto's own CPU to the 2 cores being measured) and the database is SQLite.

Two ratios, because this machine is shared: images/s (wall clock), and CPU per image (CPU seconds of every
process involved — worker tree, gamma-submit, Triton server tree — per image). When other people's work
competes for the cores, the scheduler gives the scan's many threads a different share than the raw side's few
processes and the wall ratio moves either way; CPU per image barely moves, so it is the number to trust there.
"""

from __future__ import annotations

import argparse
import io
import multiprocessing as mp
import os
import queue
import resource
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageDraw
from sqlalchemy import func, select

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))  # the server helpers live with the test fixtures (tests/ is not an installed package)

from gamma.config import preset  # noqa: E402
from gamma.inference import InferenceBackend, TorchBackend  # noqa: E402
from gamma.model import GammaModel  # noqa: E402
from gamma.preprocess import preprocess  # noqa: E402
from gamma.tiling import DEFAULT_COVERAGE, Coverage  # noqa: E402
from gamma.weights import Checkpoint, load_checkpoint, save_checkpoint  # noqa: E402
from tests.fixtures.services import celery_worker, redis_server  # noqa: E402
from worker.db import Result, ScanItem, make_engine, session_factory  # noqa: E402
from worker.records import scan_summary  # noqa: E402


def make_images(folder: Path, count: int, width: int, height: int, seed: int) -> list[Path]:
    """Photos-like JPEGs (gradients, shapes, sensor noise) so decoding costs what real uploads cost."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for index in range(count):
        ramp = np.linspace(0, 1, width)[None, :, None] * rng.integers(60, 200, 3)
        base = (ramp + np.linspace(0, 1, height)[:, None, None] * rng.integers(0, 60, 3)).astype(np.uint8)
        image = Image.fromarray(base)
        draw = ImageDraw.Draw(image)
        for _ in range(12):
            x, y = int(rng.integers(0, width)), int(rng.integers(0, height))
            r = int(rng.integers(10, max(11, width // 6)))
            draw.ellipse((x - r, y - r, x + r, y + r), fill=tuple(int(v) for v in rng.integers(0, 255, 3)))
        noisy = np.clip(np.asarray(image, np.int16) + rng.normal(0, 6, (height, width, 3)), 0, 255).astype(np.uint8)
        path = folder / f"{index:04d}.jpg"
        buffer = io.BytesIO()
        Image.fromarray(noisy).save(buffer, format="JPEG", quality=90)
        path.write_bytes(buffer.getvalue())
        paths.append(path)
    return paths


def random_checkpoint(folder: Path) -> Checkpoint:
    torch.manual_seed(0)
    save_checkpoint(GammaModel(preset("gamma-b0")).eval(), folder, {"name": folder.name, "version": 1})
    return load_checkpoint(folder)


@dataclass
class Measure:
    """Images done, wall seconds, CPU seconds (all processes involved)."""

    images: int
    wall: float
    cpu: float

    @property
    def rate(self) -> float:
        return self.images / self.wall

    @property
    def cpu_ms(self) -> float:
        return self.cpu * 1000 / self.images


def tree_cpu(pid: int) -> float:
    """CPU seconds (user + system) used so far by a live process and its live descendants, from /proc.

    On a shared machine wall-clock rates move with other people's load; CPU per image moves much less, so the
    bench reports both.
    """
    ticks = os.sysconf("SC_CLK_TCK")
    total, todo = 0.0, [pid]
    while todo:
        current = todo.pop()
        try:
            fields = Path(f"/proc/{current}/stat").read_text().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / ticks
            for task in Path(f"/proc/{current}/task").iterdir():
                todo.extend(int(child) for child in (task / "children").read_text().split())
        except (FileNotFoundError, ProcessLookupError):
            continue
    return total


def _batches(tile_counts: list[int], chunk_size: int, max_batch: int) -> list[tuple[int, int]]:
    """(start, stop) in the stacked tiles of every batch the scan sends: each chunk of ``chunk_size`` images has its
    tiles inferred in batches of at most ``max_batch`` (all images here have one size, so one tile shape: the
    batches :func:`gamma.inference.infer_tiles` makes for a chunk)."""
    offsets = np.concatenate([[0], np.cumsum(tile_counts)]).astype(int).tolist()
    batches = []
    for chunk in range(0, len(tile_counts), chunk_size):
        first, last = offsets[chunk], offsets[min(chunk + chunk_size, len(tile_counts))]
        batches.extend((offset, min(offset + max_batch, last)) for offset in range(first, last, max_batch))
    return batches


def _raw_torch_process(checkpoint: str, threads: int, tiles_file: str, todo: Any, barrier: Any, times: Any) -> None:
    """One of the raw side's processes: the model with the workers' thread count, fed batches until none are left."""
    torch.set_num_threads(threads)
    backend = TorchBackend.from_checkpoint(checkpoint)
    tiles = np.load(tiles_file, mmap_mode="r")
    backend.infer(np.array(tiles[:1]))  # warm-up
    barrier.wait()
    start, cpu = time.perf_counter(), time.process_time()
    while (batch := todo.get()) is not None:
        backend.infer(np.array(tiles[batch[0] : batch[1]]))  # a copy, as a worker's batch is freshly stacked
    times.put((start, time.perf_counter(), time.process_time() - cpu))


def raw_torch(
    checkpoint: Path, tiles_file: Path, batches: list[tuple[int, int]], workers: int, threads: int, images: int
) -> Measure:
    """Images/s of the PyTorch backend as the workers hold it — ``workers`` processes of ``threads`` threads —
    on the scan's batches, with nothing around inference. (Python threads in one process would not do: they
    reach about one process's speed, which would flatter the scan.)"""
    context = mp.get_context("spawn")
    todo, times, barrier = context.Queue(), context.Queue(), context.Barrier(workers + 1)
    for batch in batches:
        todo.put(batch)
    for _ in range(workers):
        todo.put(None)
    args = (str(checkpoint), threads, str(tiles_file), todo, barrier, times)
    processes = [context.Process(target=_raw_torch_process, args=args) for _ in range(workers)]
    for process in processes:
        process.start()
    barrier.wait()
    spans = [times.get() for _ in processes]
    for process in processes:
        process.join()
    wall = max(span[1] for span in spans) - min(span[0] for span in spans)
    return Measure(images, wall, sum(span[2] for span in spans))


def raw_threads(
    backend: InferenceBackend, tiles: np.ndarray, tile_counts: list[int], chunk_size: int, concurrency: int,
    server_pid: int,
) -> Measure:  # fmt: skip
    """A served backend (Triton) on the scan's batches from ``concurrency`` client threads; CPU = the server's
    process tree + this process (the client threads)."""
    batches: queue.SimpleQueue[tuple[int, int]] = queue.SimpleQueue()
    for batch in _batches(tile_counts, chunk_size, backend.max_batch_size):
        batches.put(batch)
    for _ in range(concurrency):
        backend.infer(tiles[:1])

    def drain() -> None:
        while True:
            try:
                first, stop = batches.get_nowait()
            except queue.Empty:
                return
            backend.infer(tiles[first:stop])

    threads = [threading.Thread(target=drain) for _ in range(concurrency)]
    start, cpu = time.perf_counter(), time.process_time() + tree_cpu(server_pid)
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return Measure(len(tile_counts), time.perf_counter() - start, time.process_time() + tree_cpu(server_pid) - cpu)


def submit_and_wait(folder: Path, env: dict[str, str], *options: str) -> int:
    """``gamma-submit FOLDER --wait [OPTIONS]`` as a user runs it; returns the scan id."""
    done = subprocess.run(
        [str(Path(sys.executable).parent / "gamma-submit"), str(folder), "--wait", "--timeout", "1800", *options],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        raise SystemExit(f"gamma-submit failed ({done.returncode}):\n{done.stdout}\n{done.stderr}")
    return int(done.stdout.strip().splitlines()[-1])


@contextmanager
def triton_serving(checkpoint: Checkpoint, workdir: Path, max_batch: int) -> Iterator[Any]:
    from deploy.export_triton import ExportOptions, export_to_repository
    from deploy.triton_server import TritonServer, free_port

    repository = workdir / "model_repository"
    export_to_repository(checkpoint, repository, ExportOptions(backend="python", max_batch_size=max_batch))
    server = TritonServer(repository, http_port=free_port(), grpc_port=free_port(), log_file=workdir / "triton.log")
    with server:
        yield server


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=48)
    parser.add_argument("--repeats", type=int, default=2, help="scans; raw runs before, between and after them")
    parser.add_argument("--size", default="1024x768", help="WIDTHxHEIGHT of the generated JPEGs")
    parser.add_argument("--workers", type=int, default=2, help="Celery worker processes (prefork -c)")
    parser.add_argument("--torch-threads", type=int, default=1, help="torch threads per worker process (torch)")
    parser.add_argument("--chunk-size", type=int, default=4)
    parser.add_argument("--model", help="checkpoint name or folder (default: random-weight gamma-b0)")
    parser.add_argument(
        "--coverage",
        choices=[c.value for c in Coverage],
        default=DEFAULT_COVERAGE.value,
        help=f"tiles per image, for the scan (GAMMA_COVERAGE) and the raw side alike (default {DEFAULT_COVERAGE})",
    )
    parser.add_argument(
        "--backend",
        choices=("triton", "torch"),
        default="triton",
        help="triton (default): the model served by the local Triton server; torch: PyTorch in each worker",
    )
    args = parser.parse_args(argv)
    width, height = (int(v) for v in args.size.split("x"))

    with tempfile.TemporaryDirectory(prefix="bench-scan-") as tmp, ExitStack() as stack:
        work = Path(tmp)
        checkpoint = load_checkpoint(args.model) if args.model else random_checkpoint(work / "gamma-bench")
        paths = make_images(work / "images", args.images, width, height, seed=1)
        warmup = make_images(work / "warmup", 2 * args.workers * args.chunk_size, width, height, seed=2)
        print(f"{len(paths)} JPEGs {width}x{height}, {sum(p.stat().st_size for p in paths) / 1e6:.1f} MB; "
              f"{len(warmup)} more to warm up; load average {os.getloadavg()[0]:.2f}", flush=True)  # fmt: skip

        start = time.perf_counter()
        prepared = [preprocess(path.read_bytes(), coverage=args.coverage) for path in paths]
        preprocess_ms = (time.perf_counter() - start) * 1000 / len(paths)
        tile_counts = [len(tiles) for tiles in prepared]
        if len({tiles.pixels.shape[1:] for tiles in prepared}) != 1:
            raise SystemExit("the raw side batches one tile shape: give every image one size")
        tiles = np.concatenate([t.pixels for t in prepared])
        tiles_file = work / "tiles.npy"
        np.save(tiles_file, tiles)
        del prepared
        print(f"coverage {args.coverage}: {len(tiles) / len(paths):.1f} tiles of {tiles.shape[2]}x{tiles.shape[3]} "
              "per image", flush=True)  # fmt: skip

        env = {
            "GAMMA_DB_URL": f"sqlite:///{work / 'bench.db'}",
            "GAMMA_MASKS_URL": str(work / "masks"),
            "GAMMA_CHUNK_SIZE": str(args.chunk_size),
            "GAMMA_QUEUE": f"bench.{os.getpid()}",
            "GAMMA_PREPROCESS_WORKERS": "1",
            "GAMMA_FETCH_WORKERS": "2",
            "GAMMA_COVERAGE": args.coverage,
        }
        server_pid = 0  # the Triton server's process tree does inference for both sides, when there is one
        if args.backend == "triton":
            from deploy.triton_client import TritonBackend

            server = stack.enter_context(triton_serving(checkpoint, work, args.chunk_size))
            server_pid = server.process.pid
            env["GAMMA_TRITON_URL"] = server.grpc_url
            env["GAMMA_MODEL"] = checkpoint.name
            triton = TritonBackend(server.grpc_url, checkpoint.name, timeout_s=120)

            def raw() -> Measure:
                return raw_threads(triton, tiles, tile_counts, args.chunk_size, args.workers, server_pid)
        else:
            assert checkpoint.path is not None
            env["GAMMA_MODEL"] = str(checkpoint.path)
            env["GAMMA_TORCH_THREADS"] = str(args.torch_threads)
            max_batch = TorchBackend(checkpoint.model, checkpoint.config, checkpoint.name).max_batch_size
            batches = _batches(tile_counts, args.chunk_size, max_batch)

            def raw() -> Measure:
                return raw_torch(checkpoint.path, tiles_file, batches, args.workers, args.torch_threads, len(paths))

        env["GAMMA_BROKER_URL"] = stack.enter_context(redis_server(work))
        raws: list[Measure] = []
        scans: list[Measure] = []
        workers_only: list[Measure] = []  # the same scans without gamma-submit's one-off CPU (workers, Triton)
        submit_cpu: list[float] = []
        scan_ids: list[int] = []
        rescan_id = 0
        for repeat in range(args.repeats):  # interleaved, so drifting background load hits both sides alike
            raws.append(raw())
            print(f"raw {repeat + 1}: {raws[-1].rate:.2f} images/s, {raws[-1].cpu_ms:.0f} CPU ms/image", flush=True)
            with celery_worker(env, work, concurrency=args.workers, queue=env["GAMMA_QUEUE"]) as worker:
                submit_and_wait(work / "warmup", env, "--full")
                before = tree_cpu(worker.pid) + (tree_cpu(server_pid) if server_pid else 0.0)
                children_before = resource.getrusage(resource.RUSAGE_CHILDREN)
                scan_ids.append(submit_and_wait(work / "images", env, "--full"))  # every image inferred again
                children = resource.getrusage(resource.RUSAGE_CHILDREN)
                after = tree_cpu(worker.pid) + (tree_cpu(server_pid) if server_pid else 0.0)
                if repeat == args.repeats - 1:  # incremental: the prefix is unchanged, nothing should be queued
                    rescan_id = submit_and_wait(work / "images", env)
            submit_cpu.append(
                children.ru_utime + children.ru_stime - children_before.ru_utime - children_before.ru_stime
            )
            with session_factory(make_engine(env["GAMMA_DB_URL"]))() as session:
                summary = scan_summary(session, scan_ids[-1])
            scans.append(Measure(summary.processed, summary.seconds, after - before + submit_cpu[-1]))
            workers_only.append(Measure(summary.processed, summary.seconds, after - before))
            print(f"scan {repeat + 1}: {scans[-1].rate:.2f} images/s, {scans[-1].cpu_ms:.0f} CPU ms/image "
                  f"(gamma-submit process {submit_cpu[-1]:.2f} CPU s)", flush=True)  # fmt: skip
        raws.append(raw())
        print(f"raw {len(raws)}: {raws[-1].rate:.2f} images/s, {raws[-1].cpu_ms:.0f} CPU ms/image", flush=True)

        with session_factory(make_engine(env["GAMMA_DB_URL"]))() as session:
            verdicts = scan_summary(session, scan_ids[-1]).verdicts
            first_scan = scan_summary(session, scan_ids[0])
            rescan = scan_summary(session, rescan_id)
            stages = session.execute(
                select(func.avg(Result.fetch_ms), func.avg(Result.preprocess_ms), func.avg(Result.infer_ms))
                .select_from(ScanItem)
                .join(Result, Result.id == ScanItem.result_id)
                .where(ScanItem.scan_id == scan_ids[-1])
            ).one()
        raw_rate = statistics.median(m.rate for m in raws)
        scan_rate = statistics.median(m.rate for m in scans)
        raw_cpu = statistics.median(m.cpu_ms for m in raws)
        scan_cpu = statistics.median(m.cpu_ms for m in scans)
        worker_cpu = statistics.median(m.cpu_ms for m in workers_only)
        triton_kind = f"Triton ({env.get('GAMMA_TRITON_URL')})"
        kind = triton_kind if args.backend == "triton" else f"PyTorch, {args.torch_threads} thread(s)"
        print()
        print(f"backend              {kind}, {args.workers} workers, chunks of {args.chunk_size}, {len(paths)} images, "
              f"coverage {args.coverage} ({len(tiles) / len(paths):.1f} tiles per image)")  # fmt: skip
        print(f"scan                 {scan_rate:.2f} images/s, {scan_cpu:.0f} CPU ms/image (medians; {dict(verdicts)})")
        print(f"raw backend          {raw_rate:.2f} images/s, {raw_cpu:.0f} CPU ms/image (medians)")
        ratios = (
            ("wall clock", scan_rate / raw_rate),
            ("CPU per image", raw_cpu / scan_cpu),
            ("CPU w/o gamma-submit", raw_cpu / worker_cpu),
        )
        for label, ratio in ratios:
            print(f"ratio {label:20s} {ratio:.3f}  (target >= 0.95: {'met' if ratio >= 0.95 else 'NOT met'})")
        print(f"gamma-submit         {statistics.median(submit_cpu):.2f} CPU s per scan (start-up, listing, --wait)")
        fraction = rescan.seconds / first_scan.seconds
        verdict = "met" if fraction <= 0.02 else "NOT met"
        print(f"rescan unchanged     {rescan.seconds:.3f} s vs first scan {first_scan.seconds:.2f} s = {fraction:.2%} "
              f"({rescan.processed}/{rescan.total} reused; target <= 2%: {verdict})")  # fmt: skip
        print(f"per image (mean)     fetch {stages[0]:.1f} ms, preprocess {stages[1]:.1f} ms (amortised), "
              f"infer {stages[2]:.1f} ms (batch time / batch size)")  # fmt: skip
        print(f"preprocess alone     {preprocess_ms:.1f} ms per image, one thread")
        print(f"load average         {os.getloadavg()[0]:.2f} (2 shared cores: other work moves the wall ratio)")


if __name__ == "__main__":
    main()
