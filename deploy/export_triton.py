"""Export a GAMMA checkpoint into a Triton model repository: ONNX + parity check + config.pbtxt + metadata.

    python deploy/export_triton.py [--checkpoint gamma-local-effl0] [--out model_repository/]
        [--backend onnxruntime|tensorrt|python] [--max-batch 8] [--model-name NAME] [--force]

Layout written (nothing at all if the parity check fails):

    <out>/<model>/config.pbtxt
    <out>/<model>/<version>/model.onnx          (all backends; the python backend loads it with ONNX Runtime)
    <out>/<model>/<version>/model.py            (--backend python)
    <out>/<model>/<version>/build_engine.sh     (--backend tensorrt: builds model.plan on the GPU host)
    <out>/<model>/<version>/metadata.json       (name, version, thresholds, provenance, parity numbers)

The version is the checkpoint's (``metadata.json`` ``version``); an existing version folder is never replaced
without ``--force``, because a served version must mean one set of weights.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import string
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path

from deploy.onnx_export import (
    DEFAULT_OPSET,
    PARITY_BATCHES,
    PARITY_SHAPES,
    ExportError,
    ExportResult,
    ParityError,
    ParityReport,
    check_parity,
    export_onnx,
)
from deploy.triton_config import (
    BACKENDS,
    MAX_TILE_SIDE,
    MIN_TILE_SIDE,
    Backend,
    InstanceKind,
    ModelSettings,
    render_config,
    thresholds_param,
)
from gamma import wire
from gamma.model.serving import ServingModel
from gamma.weights import DEFAULT_MODEL, METADATA_FILE, Checkpoint, WeightsError, load_checkpoint

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_REPOSITORY = REPO_ROOT / "model_repository"
TEMPLATES = Path(__file__).resolve().parent / "templates"
CONFIG_FILE = "config.pbtxt"


class VersionExists(FileExistsError):
    """The target version folder exists and ``force`` was not given."""


@dataclass(frozen=True)
class ExportOptions:
    backend: Backend = "onnxruntime"
    max_batch_size: int = 8
    model_name: str | None = None  # None: the checkpoint's name
    force: bool = False
    pin_version: bool = False  # version_policy specific [this version] instead of latest 1
    instance_count: int = 1
    instance_kind: InstanceKind | None = None  # None: GPU for onnxruntime/tensorrt, CPU for python
    cpu_threads: int = 0
    max_queue_delay_us: int = 2000
    opset: int = DEFAULT_OPSET
    parity_batches: tuple[int, ...] = PARITY_BATCHES
    parity_shapes: tuple[tuple[int, int], ...] = PARITY_SHAPES  # tile (height, width) at which parity runs
    trt_fp16: bool = True
    trt_cache_dir: str = "/tmp/triton-trt-cache"


@dataclass
class ExportedModel:
    name: str
    version: int
    model_dir: Path
    version_dir: Path
    onnx: ExportResult
    parity: ParityReport


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _metadata(
    checkpoint: Checkpoint, name: str, options: ExportOptions, onnx: ExportResult, parity: ParityReport
) -> dict[str, object]:
    return {
        "model_name": name,
        "version": checkpoint.version,
        "thresholds": checkpoint.config.thresholds.to_dict(),
        "backend": options.backend,
        "checkpoint": {
            "name": checkpoint.name,
            "path": str(checkpoint.path) if checkpoint.path else None,
            "metadata": checkpoint.metadata,
        },
        "config": checkpoint.config.to_dict(),
        "wire": {
            "inputs": {s.name: {"dtype": s.dtype, "shape": list(s.shape)} for s in wire.INPUTS},
            "outputs": {s.name: {"dtype": s.dtype, "shape": list(s.shape)} for s in wire.OUTPUTS},
        },
        "onnx": {
            "file": onnx.path.name,
            "sha256": _sha256(onnx.path),
            "exporter": onnx.exporter,
            "opset": onnx.opset,
            "fallback_reason": onnx.fallback_reason,
        },
        "parity": parity.to_dict(),
        "exported_at": datetime.now(UTC).isoformat(timespec="seconds"),
    }


def _write_backend_files(version_dir: Path, name: str, version: int, options: ExportOptions) -> None:
    if options.backend == "python":
        shutil.copyfile(TEMPLATES / "python_model.py", version_dir / "model.py")
    elif options.backend == "tensorrt":
        template = string.Template((TEMPLATES / "build_engine.sh").read_text())
        # One optimisation profile over every tile the contract sends: the smallest tile at batch 1 up to full
        # tiles at the largest batch, tuned for full tiles (most of any large image's tiles are).
        script = template.substitute(
            model_name=name,
            version=version,
            input_name=wire.IMAGES.name,
            min_dims="x".join(str(d) for d in wire.IMAGES.concrete(MIN_TILE_SIDE, MIN_TILE_SIDE)),
            input_dims="x".join(str(d) for d in wire.IMAGES.concrete(MAX_TILE_SIDE, MAX_TILE_SIDE)),
            opt_batch=max(1, options.max_batch_size // 2),
            max_batch=options.max_batch_size,
            precision_flag="--fp16" if options.trt_fp16 else "",
        )
        (version_dir / "build_engine.sh").write_text(script)
        (version_dir / "build_engine.sh").chmod(0o755)


def _served_thresholds(model_dir: Path, replaced: int, new: dict[str, float]) -> dict[str, str]:
    """Config parameters carrying each version's thresholds, so a gRPC client can read them for the version
    it is served (config.pbtxt is per model, versions are per folder)."""
    params = {thresholds_param(replaced): json.dumps(new, sort_keys=True)}
    for meta in model_dir.glob(f"*/{METADATA_FILE}"):
        if meta.parent.name.isdigit() and int(meta.parent.name) != replaced:
            try:
                params[thresholds_param(int(meta.parent.name))] = json.dumps(
                    json.loads(meta.read_text())["thresholds"], sort_keys=True
                )
            except (KeyError, ValueError):
                continue
    return params


def _install(staging: Path, version_dir: Path, force: bool) -> None:
    """Copy the staged version beside its target, then swap it in with renames (no half-written version)."""
    partial = version_dir.with_name(f".{version_dir.name}.partial")
    old = version_dir.with_name(f".{version_dir.name}.old")
    for leftover in (partial, old):
        shutil.rmtree(leftover, ignore_errors=True)
    shutil.copytree(staging, partial)
    if version_dir.exists():
        if not force:
            shutil.rmtree(partial)
            raise VersionExists(f"{version_dir} appeared during the export; nothing was replaced")
        version_dir.rename(old)
    partial.rename(version_dir)
    shutil.rmtree(old, ignore_errors=True)


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def export_to_repository(
    checkpoint: Checkpoint,
    repository: str | Path,
    options: ExportOptions | None = None,
    log: Callable[[str], object] = print,
) -> ExportedModel:
    """Export ``checkpoint`` into ``repository``; raises :class:`VersionExists`, :class:`ExportError` or
    :class:`ParityError` before anything is written."""
    options = options or ExportOptions()
    name = options.model_name or checkpoint.name
    version = checkpoint.version
    model_dir = Path(repository) / name
    version_dir = model_dir / str(version)
    if version_dir.exists() and not options.force:
        raise VersionExists(
            f"{version_dir} exists: version {version} of {name!r} is already exported "
            "(bump the checkpoint's metadata version, or pass --force to replace it)"
        )
    serving = ServingModel(checkpoint.model).eval()
    with tempfile.TemporaryDirectory(prefix="gamma-export-") as tmp:
        staging = Path(tmp) / str(version)
        staging.mkdir()
        started = time.perf_counter()
        onnx = export_onnx(serving, staging / "model.onnx", options.opset, max_batch=max(options.max_batch_size, 4))
        how = onnx.exporter + (f" (dynamo failed: {onnx.fallback_reason})" if onnx.fallback_reason else "")
        log(f"exported ONNX with the {how} exporter, opset {onnx.opset}, in {time.perf_counter() - started:.1f} s")
        parity = check_parity(serving, onnx.path, options.parity_batches, shapes=options.parity_shapes)
        if not parity.ok:
            raise ParityError(f"ONNX Runtime disagrees with PyTorch: {parity.summary()}")
        log(f"parity ok: {parity.summary()}")
        _write_backend_files(staging, name, version, options)
        (staging / METADATA_FILE).write_text(
            json.dumps(_metadata(checkpoint, name, options, onnx, parity), indent=2) + "\n"
        )
        settings = ModelSettings(
            name=name,
            backend=options.backend,
            max_batch_size=options.max_batch_size,
            max_queue_delay_us=options.max_queue_delay_us,
            instance_count=options.instance_count,
            instance_kind=options.instance_kind,
            versions=(version,) if options.pin_version else None,
            cpu_threads=options.cpu_threads,
            trt_fp16=options.trt_fp16,
            trt_cache_dir=options.trt_cache_dir,
            parameters=_served_thresholds(model_dir, version, checkpoint.config.thresholds.to_dict()),
        )
        config_text = render_config(settings)
        model_dir.mkdir(parents=True, exist_ok=True)
        _install(staging, version_dir, options.force)
        _write_atomic(model_dir / CONFIG_FILE, config_text)
    log(f"wrote {version_dir} and {model_dir / CONFIG_FILE}")
    return ExportedModel(name, version, model_dir, version_dir, replace(onnx, path=version_dir / "model.onnx"), parity)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", default=DEFAULT_MODEL, help="checkpoint name or folder (default %(default)s)")
    parser.add_argument("--out", type=Path, default=DEFAULT_REPOSITORY, help="model repository (default %(default)s)")
    parser.add_argument("--backend", choices=BACKENDS, default="onnxruntime")
    parser.add_argument("--max-batch", type=int, default=8, help="Triton max_batch_size (default %(default)s)")
    parser.add_argument("--model-name", help="served model name (default: the checkpoint's name)")
    parser.add_argument("--force", action="store_true", help="replace an existing version folder")
    parser.add_argument(
        "--pin-version",
        action="store_true",
        help="version_policy specific: serve exactly this version (default: the latest one)",
    )
    parser.add_argument("--instances", type=int, default=1, help="instance_group count (default %(default)s)")
    parser.add_argument(
        "--instance-kind",
        choices=("gpu", "cpu"),
        help="instance_group kind (default: gpu for onnxruntime/tensorrt, cpu for python)",
    )
    parser.add_argument(
        "--cpu-threads", type=int, default=0, help="python backend: ONNX Runtime threads per instance, 0 = one per core"
    )
    parser.add_argument(
        "--max-queue-delay-us",
        type=int,
        default=2000,
        help="dynamic batching: longest wait to grow a batch (default %(default)s)",
    )
    parser.add_argument("--opset", type=int, default=DEFAULT_OPSET)
    parser.add_argument("--fp32", action="store_true", help="TensorRT precision FP32 instead of FP16")
    parser.add_argument(
        "--trt-cache-dir",
        default="/tmp/triton-trt-cache",
        help="TensorRT engine cache on the serving host (onnxruntime GPU)",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    options = ExportOptions(
        backend=args.backend,
        max_batch_size=args.max_batch,
        model_name=args.model_name,
        force=args.force,
        pin_version=args.pin_version,
        instance_count=args.instances,
        instance_kind=f"KIND_{args.instance_kind.upper()}" if args.instance_kind else None,
        cpu_threads=args.cpu_threads,
        max_queue_delay_us=args.max_queue_delay_us,
        opset=args.opset,
        trt_fp16=not args.fp32,
        trt_cache_dir=args.trt_cache_dir,
    )
    try:
        checkpoint = load_checkpoint(args.checkpoint)
        exported = export_to_repository(checkpoint, args.out, options)
    except WeightsError as exc:
        hint = "" if args.checkpoint != DEFAULT_MODEL else " (not trained yet? pass --checkpoint NAME_OR_FOLDER)"
        print(f"error: {exc}{hint}", file=sys.stderr)
        return 1
    except (VersionExists, ExportError, ParityError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    if options.backend == "tensorrt":
        print(f"next, on the GPU host: sh {exported.version_dir / 'build_engine.sh'} (writes model.plan)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
