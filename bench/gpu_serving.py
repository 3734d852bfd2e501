"""gamma-b2 on a GPU with TensorRT fp16: images/s at 512x512 uint8 and the fraction of the GPU's dense fp16 peak.

    python bench/gpu_serving.py [--preset gamma-b2] [--batches 1 8 32 64] [--seconds 5]
        [--engine auto|ort-trt|trtexec] [--peak-tflops N] [--out DIR]

What it does, on a CUDA host:
1. A random-init ``--preset`` (throughput does not depend on the weights) is exported by the repository's exporter
   (``deploy/export_triton.py``: ONNX, dynamic batch and tile size, CPU parity gate) into a model repository
   (``--out``, else a temporary folder). ``ort-trt``: ``--backend onnxruntime``, whose config.pbtxt asks Triton's
   ONNX Runtime for the TensorRT execution provider with FP16 and an engine cache; ``trtexec``: ``--backend
   tensorrt`` and the engine is built here with the same shapes and flags as ``deploy/templates/build_engine.sh``
   (``model.plan``).
2. ``ort-trt``: ONNX Runtime's ``TensorrtExecutionProvider`` (fp16, engine + timing cache in ``--cache-dir``, one
   optimisation profile from the smallest tile at batch 1 to full 512x512 tiles at max(--batches), as served) runs
   the same ``model.onnx`` in-process on full tiles, inputs already on the GPU (I/O binding), so the numbers are
   the model's, not PCIe's; a second column feeds the batch from host memory.
   ``trtexec``: ``trtexec --loadEngine ... --useCudaGraph --noDataTransfers`` per batch size, its ``Throughput``.
3. Per batch size it prints ms per batch, images/s, achieved TFLOPs and the fraction of the GPU's dense fp16 peak.
   FLOPs per image are counted by ``bench/model_cost.py`` (2 x multiply-accumulates of what the model executes,
   attention matmuls included) at 512x512, not a hard-coded number. The peak comes from ``PEAK_FP16_DENSE_TFLOPS``
   by ``torch.cuda.get_device_name()``, or from ``--peak-tflops``. Target (issue 4): >= 50 % of peak.

``--engine auto`` picks ``ort-trt`` when ONNX Runtime offers the TensorRT provider (``pip install onnxruntime-gpu
tensorrt`` in place of ``onnxruntime``), else ``trtexec`` when that binary exists (NVIDIA's TensorRT or Triton
images: ``/usr/src/tensorrt/bin/trtexec``). Without CUDA it prints ``skipped: no CUDA ...`` and exits 0.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import glob
import importlib.util
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from gamma.weights import Checkpoint

BENCH_DIR = Path(__file__).resolve().parent
TARGET_FRACTION = 0.5
TRTEXEC_CANDIDATES = ("/usr/src/tensorrt/bin/trtexec", "/opt/tensorrt/bin/trtexec")

# Dense (no structured sparsity) fp16 tensor-core peaks, TFLOPs, from NVIDIA's datasheets. Matched against the
# words of torch.cuda.get_device_name() (e.g. "NVIDIA H100 80GB HBM3", "NVIDIA A100-SXM4-80GB", "Tesla T4"); the
# first entry whose words all appear wins, so "H100 PCIe" is tried before plain "H100" (SXM). A name that matches
# nothing (A10G, L40S, H100 NVL, ...) needs --peak-tflops.
PEAK_FP16_DENSE_TFLOPS: tuple[tuple[tuple[str, ...], float], ...] = (
    (("H100", "PCIe"), 756.0),
    (("H100",), 989.0),  # SXM
    (("H200",), 989.0),  # SXM
    (("GH200",), 989.0),
    (("A100",), 312.0),
    (("L4",), 121.0),
    (("A10",), 125.0),
    (("T4",), 65.0),
)


def peak_tflops_for(device_name: str) -> float | None:
    """The dense fp16 peak of a GPU by its CUDA device name, or None when the table does not know it."""
    words = {word.upper() for word in re.split(r"[^A-Za-z0-9]+", device_name) if word}
    for keys, peak in PEAK_FP16_DENSE_TFLOPS:
        if all(key.upper() in words for key in keys):
            return peak
    return None


def fraction_of_peak(images_per_s: float, gflops_per_image: float, peak_tflops: float) -> float:
    """Achieved FLOP rate over the peak: images/s x GFLOPs/image / (TFLOPs x 1000)."""
    return images_per_s * gflops_per_image / (peak_tflops * 1000.0)


def flops_per_image(preset_name: str, size: int) -> float:
    """GFLOPs per image as ``bench/model_cost.py`` counts them (imported from its file: bench/ is no package)."""
    spec = importlib.util.spec_from_file_location("gamma_bench_model_cost", BENCH_DIR / "model_cost.py")
    if spec is None or spec.loader is None:
        raise RuntimeError(f"cannot load {BENCH_DIR / 'model_cost.py'}")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    _, gflops = module.cost(preset_name, size)
    return float(gflops)


_THROUGHPUT = re.compile(r"Throughput:\s*([0-9.]+(?:[eE][-+]?[0-9]+)?)\s*qps")


def parse_trtexec_throughput(output: str) -> float:
    """Queries (batches) per second from trtexec's performance summary."""
    found = _THROUGHPUT.findall(output)
    if not found:
        raise ValueError("no 'Throughput: N qps' line in trtexec's output")
    return float(found[-1])


def tile_dims() -> tuple[tuple[int, ...], tuple[int, ...]]:
    """(smallest, full) tile dims (3, H, W) the served model takes: a TensorRT profile's min, and its opt/max.

    The exported graph's H and W are dynamic (contract v2 tiles); a TensorRT engine needs them concrete, over the
    same range as ``deploy/templates/build_engine.sh``. The bench measures full 512x512 tiles.
    """
    from deploy.triton_config import MAX_TILE_SIDE, MIN_TILE_SIDE
    from gamma import wire

    return wire.IMAGES.concrete(MIN_TILE_SIDE, MIN_TILE_SIDE), wire.IMAGES.concrete(MAX_TILE_SIDE, MAX_TILE_SIDE)


def shape_spec(input_name: str, batch: int, dims: Sequence[int]) -> str:
    """TensorRT's ``name:BxCxHxW`` shape notation (ONNX Runtime's trt_profile_* options and trtexec use it)."""
    return f"{input_name}:{batch}x" + "x".join(str(d) for d in dims)


def trt_provider_options(
    cache_dir: Path,
    input_name: str,
    dims: Sequence[int],
    max_batch: int,
    fp16: bool = True,
    min_dims: Sequence[int] | None = None,
) -> dict[str, str]:
    """TensorRT execution provider options: FP16, engine and timing caches, one profile from ``min_dims`` (default
    ``dims``) at batch 1 to ``dims`` at ``max_batch`` (optimised for ``max_batch``: this bench is about
    throughput). Dims are (3, H, W), concrete."""
    return {
        "trt_fp16_enable": "True" if fp16 else "False",
        "trt_engine_cache_enable": "True",
        "trt_engine_cache_path": str(cache_dir),
        "trt_timing_cache_enable": "True",
        "trt_timing_cache_path": str(cache_dir),
        "trt_max_workspace_size": str(8 << 30),
        "trt_builder_optimization_level": "3",
        "trt_profile_min_shapes": shape_spec(input_name, 1, dims if min_dims is None else min_dims),
        "trt_profile_opt_shapes": shape_spec(input_name, max_batch, dims),
        "trt_profile_max_shapes": shape_spec(input_name, max_batch, dims),
    }


def trtexec_build_command(
    trtexec: str,
    onnx: Path,
    plan: Path,
    input_name: str,
    dims: Sequence[int],
    max_batch: int,
    fp16: bool = True,
    min_dims: Sequence[int] | None = None,
) -> list[str]:
    """The engine build of deploy/templates/build_engine.sh (same flags), optimised for ``max_batch`` x ``dims``;
    the profile starts at ``min_dims`` (default ``dims``) at batch 1."""
    return [
        trtexec,
        f"--onnx={onnx}",
        f"--saveEngine={plan}",
        *(["--fp16"] if fp16 else []),
        f"--minShapes={shape_spec(input_name, 1, dims if min_dims is None else min_dims)}",
        f"--optShapes={shape_spec(input_name, max_batch, dims)}",
        f"--maxShapes={shape_spec(input_name, max_batch, dims)}",
    ]


def find_trtexec() -> str | None:
    return shutil.which("trtexec") or next((p for p in TRTEXEC_CANDIDATES if os.access(p, os.X_OK)), None)


@dataclass
class Row:
    batch: int
    ms_per_batch: float
    images_per_s: float
    images_per_s_from_host: float | None = None


def format_row(row: Row, gflops: float, peak: float | None) -> str:
    tflops = row.images_per_s * gflops / 1000.0
    share = f"{fraction_of_peak(row.images_per_s, gflops, peak):>7.1%}" if peak else f"{'?':>7}"
    host = f"{row.images_per_s_from_host:>13.1f}" if row.images_per_s_from_host is not None else f"{'-':>13}"
    return f"{row.batch:>6} {row.ms_per_batch:>10.2f} {row.images_per_s:>10.1f} {host} {tflops:>9.1f} {share}"


def _preload_tensorrt_libraries() -> None:
    """pip's ``tensorrt`` puts libnvinfer in ``tensorrt_libs/``, which is not on the loader path; ONNX Runtime's
    TensorRT provider links it by soname, so load those libraries globally first (no-op when absent)."""
    spec = importlib.util.find_spec("tensorrt_libs")
    if spec is None or not spec.submodule_search_locations:
        return
    folder = next(iter(spec.submodule_search_locations))
    for pattern in ("libnvinfer.so.*", "libnvinfer_plugin.so.*", "libnvonnxparser.so.*"):
        for library in sorted(glob.glob(os.path.join(folder, pattern))):
            with contextlib.suppress(OSError):
                ctypes.CDLL(library, mode=ctypes.RTLD_GLOBAL)


def _time(run: Callable[[], object], seconds: float, warmup: int = 3) -> tuple[int, float]:
    """Run ``run`` ``warmup`` times, then until ``seconds`` pass; (runs, elapsed seconds)."""
    for _ in range(warmup):
        run()
    runs, started = 0, time.perf_counter()
    while True:
        run()
        runs += 1
        elapsed = time.perf_counter() - started
        if elapsed >= seconds and runs >= 5:
            return runs, elapsed


def bench_ort_trt(
    onnx_path: Path, batches: Sequence[int], seconds: float, cache_dir: Path, crops: np.ndarray, fp16: bool
) -> Iterator[Row | str]:
    import onnxruntime as ort

    from gamma import wire
    from gamma.inference import ort_session

    cache_dir.mkdir(parents=True, exist_ok=True)
    options = ort.SessionOptions()
    options.log_severity_level = 3
    smallest, full = tile_dims()
    providers = [
        (
            "TensorrtExecutionProvider",
            trt_provider_options(cache_dir, wire.IMAGES.name, full, max(batches), fp16, min_dims=smallest),
        ),
        "CUDAExecutionProvider",
    ]
    started = time.perf_counter()
    session = ort.InferenceSession(str(onnx_path), options, providers=providers)
    if session.get_providers()[0] != "TensorrtExecutionProvider":
        raise RuntimeError(f"ONNX Runtime did not enable TensorRT (providers {session.get_providers()})")
    names = [spec.name for spec in wire.OUTPUTS]
    reference = ort_session(onnx_path).run(names, {wire.IMAGES.name: crops[:1]})
    served = session.run(names, {wire.IMAGES.name: crops[:1]})  # builds (or loads) the engine
    yield f"TensorRT engine ready in {time.perf_counter() - started:.0f} s (cache {cache_dir})"
    probability = float(np.abs(reference[0] - served[0]).max())
    step = max(int(np.abs(a.astype(np.int16) - b.astype(np.int16)).max()) for a, b in zip(reference[1:], served[1:]))
    precision = "fp16" if fp16 else "fp32"
    yield f"TensorRT {precision} vs CPU fp32 on one crop: probability {probability:.1e}, mask step {step}"
    for batch in batches:
        images = np.ascontiguousarray(crops[np.arange(batch) % len(crops)])
        on_device = ort.OrtValue.ortvalue_from_numpy(images, "cuda", 0)
        binding = session.io_binding()
        binding.bind_ortvalue_input(wire.IMAGES.name, on_device)
        for name in names:
            binding.bind_output(name, "cuda", 0)

        def device_run(binding: ort.IOBinding = binding) -> None:
            session.run_with_iobinding(binding)  # ONNX Runtime synchronises the device at the end of a run
            binding.synchronize_outputs()

        runs, elapsed = _time(device_run, seconds)
        host_runs, host_elapsed = _time(
            lambda images=images: session.run(names, {wire.IMAGES.name: images}), seconds / 2
        )
        yield Row(batch, elapsed / runs * 1000, runs * batch / elapsed, host_runs * batch / host_elapsed)


def bench_trtexec(
    trtexec: str, onnx_path: Path, plan: Path, batches: Sequence[int], seconds: float, fp16: bool
) -> Iterator[Row | str]:
    from gamma import wire

    started = time.perf_counter()
    smallest, full = tile_dims()
    build = trtexec_build_command(
        trtexec, onnx_path, plan, wire.IMAGES.name, full, max(batches), fp16, min_dims=smallest
    )
    done = subprocess.run(build, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"trtexec engine build failed ({done.returncode}):\n{done.stdout[-3000:]}{done.stderr}")
    yield f"TensorRT engine {plan} built in {time.perf_counter() - started:.0f} s"
    for batch in batches:
        command = [
            trtexec,
            f"--loadEngine={plan}",
            f"--shapes={shape_spec(wire.IMAGES.name, batch, full)}",
            f"--duration={max(1, round(seconds))}",
            "--warmUp=500",
            "--useCudaGraph",
            "--noDataTransfers",
            "--useSpinWait",
        ]
        done = subprocess.run(command, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            raise RuntimeError(f"trtexec failed at batch {batch}:\n{done.stdout[-3000:]}{done.stderr}")
        qps = parse_trtexec_throughput(done.stdout)
        yield Row(batch, 1000.0 / qps, qps * batch)


def _random_checkpoint(preset_name: str, directory: Path) -> Checkpoint:
    import torch

    from gamma.config import preset
    from gamma.model import GammaModel
    from gamma.weights import load_checkpoint, save_checkpoint

    torch.manual_seed(0)
    save_checkpoint(GammaModel(preset(preset_name)).eval(), directory, {"name": f"{preset_name}-bench", "version": 1})
    return load_checkpoint(directory)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="gamma-b2")
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 8, 32, 64])
    parser.add_argument("--seconds", type=float, default=5.0, help="per batch size (default %(default)s)")
    parser.add_argument("--engine", choices=("auto", "ort-trt", "trtexec"), default="auto")
    parser.add_argument("--peak-tflops", type=float, help="the GPU's dense fp16 peak (default: from the table)")
    parser.add_argument("--fp32", action="store_true", help="TensorRT in fp32 (the peak stays the fp16 one)")
    parser.add_argument("--out", type=Path, help="keep the exported model repository here (default: temporary)")
    parser.add_argument(
        "--cache-dir",
        type=Path,
        default=Path(tempfile.gettempdir()) / "gamma-trt-cache",
        help="TensorRT engine/timing cache for ort-trt (default %(default)s; reruns skip the engine build)",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if min(args.batches) < 1:
        print("error: batch sizes must be >= 1", file=sys.stderr)
        return 2
    import torch

    if not torch.cuda.is_available():
        print(f"skipped: no CUDA (torch {torch.__version__} sees no GPU); run this on a CUDA host")
        return 0

    import onnxruntime as ort

    from deploy.export_triton import ExportOptions, export_to_repository

    _preload_tensorrt_libraries()
    engine = args.engine
    trtexec = find_trtexec()
    has_trt_ep = "TensorrtExecutionProvider" in ort.get_available_providers()
    if engine == "auto":
        engine = "ort-trt" if has_trt_ep else "trtexec" if trtexec else ""
    if not engine or (engine == "ort-trt" and not has_trt_ep) or (engine == "trtexec" and not trtexec):
        print(
            "error: no TensorRT here: ONNX Runtime has no TensorrtExecutionProvider "
            f"(providers {ort.get_available_providers()}; pip install onnxruntime-gpu tensorrt, without the CPU "
            "onnxruntime) and no trtexec on PATH or in /usr/src/tensorrt/bin",
            file=sys.stderr,
        )
        return 2

    device = torch.cuda.get_device_name(0)
    peak = args.peak_tflops or peak_tflops_for(device)
    _, full = tile_dims()
    size = full[-1]  # full tiles, square
    gflops = flops_per_image(args.preset, size)
    fp16 = not args.fp32
    print(f"# {device}; dense fp16 peak {f'{peak:g} TFLOPs' if peak else 'unknown (pass --peak-tflops)'}")
    print(f"# {args.preset} at {size}x{size} uint8: {gflops:.1f} GFLOPs per image (bench/model_cost.py)")

    with tempfile.TemporaryDirectory(prefix="gamma-gpu-bench-") as tmp:
        root = Path(tmp)
        repository = args.out or root / "repository"
        checkpoint = _random_checkpoint(args.preset, root / f"{args.preset}-bench")
        options = ExportOptions(
            backend="onnxruntime" if engine == "ort-trt" else "tensorrt",
            max_batch_size=max(args.batches),
            parity_batches=(1,),
            trt_fp16=fp16,
            trt_cache_dir=str(args.cache_dir),
            force=True,
        )
        exported = export_to_repository(checkpoint, repository, options, log=lambda line: print(f"# {line}"))
        onnx_path = exported.version_dir / "model.onnx"
        crops = np.random.default_rng(0).integers(0, 256, (8, *full), dtype=np.uint8)
        if engine == "ort-trt":
            results = bench_ort_trt(onnx_path, args.batches, args.seconds, args.cache_dir, crops, fp16)
        else:
            assert trtexec is not None
            results = bench_trtexec(
                trtexec, onnx_path, exported.version_dir / "model.plan", args.batches, args.seconds, fp16
            )
        rows: list[Row] = []
        header = False
        for item in results:
            if isinstance(item, str):
                print(f"# {item}", flush=True)
                continue
            if not header:
                print(f"# engine {engine}, TensorRT {'fp16' if fp16 else 'fp32'}, {args.seconds:g} s per batch size")
                print(f"{'batch':>6} {'ms/batch':>10} {'images/s':>10} {'from host/s':>13} {'TFLOPs':>9} {'peak':>7}")
                header = True
            rows.append(item)
            print(format_row(item, gflops, peak), flush=True)

    best = max(rows, key=lambda row: row.images_per_s)
    line = f"{args.preset} @ {size}: best {best.images_per_s:.1f} images/s at batch {best.batch}"
    if peak:
        share = fraction_of_peak(best.images_per_s, gflops, peak)
        verdict = "meets" if share >= TARGET_FRACTION else "below"
        line += f" = {share:.1%} of {peak:g} TFLOPs dense fp16 ({verdict} the {TARGET_FRACTION:.0%} target)"
    print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
