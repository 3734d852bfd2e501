"""GAMMA's served form (:class:`~gamma.model.serving.ServingModel`) to ONNX, and the parity check that gates it.

Export happens into a file the caller chooses (a staging folder); nothing reaches a model repository until
:func:`check_parity` has compared ONNX Runtime against PyTorch on the same uint8 crops.
"""

from __future__ import annotations

import contextlib
import io
import logging
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
import torch
from PIL import Image, ImageDraw, ImageFilter

from gamma import wire
from gamma.inference import ort_session
from gamma.model.serving import ServingModel
from gamma.preprocess import preprocess

log = logging.getLogger(__name__)

# At least 17 (LayerNormalization as one op). 18 rather than torch's default 20: the ONNX Runtime in older Triton
# images (23.x) and TensorRT 8.6 on GPU hosts read 18, and this model uses nothing newer.
DEFAULT_OPSET = 18

# Parity tolerances. The probability is a sigmoid in [0, 1]: 1e-4 absolute is far below any threshold's
# resolution and well above float32 reordering noise (seen: ~1e-7). Masks are round(sigmoid * 255): a logit that
# lands within float noise of a .5 boundary may round the other way, so one step (1/255) is allowed, never more.
PROBABILITY_ATOL = 1e-4
MASK_MAX_STEP = 1
PARITY_BATCHES: tuple[int, ...] = (1, 4)


class ExportError(RuntimeError):
    """Neither ONNX exporter produced a model that ONNX Runtime can load."""


class ParityError(RuntimeError):
    """ONNX Runtime disagrees with PyTorch beyond the stated tolerances; the export must not be served."""


@dataclass
class ExportResult:
    path: Path
    exporter: str  # "dynamo" or "torchscript"
    opset: int
    fallback_reason: str | None = None


@dataclass
class ParityReport:
    """Worst differences per batch size: {batch: (probability max abs diff, mask max abs step)}."""

    differences: dict[int, tuple[float, int]] = field(default_factory=dict)
    probability_atol: float = PROBABILITY_ATOL
    mask_max_step: int = MASK_MAX_STEP

    @property
    def ok(self) -> bool:
        return all(p <= self.probability_atol and m <= self.mask_max_step for p, m in self.differences.values())

    def summary(self) -> str:
        parts = [
            f"batch {b}: probability {p:.2e} (atol {self.probability_atol:g}), mask step {m} (max {self.mask_max_step})"
            for b, (p, m) in sorted(self.differences.items())
        ]
        return "; ".join(parts)

    def to_dict(self) -> dict[str, object]:
        return {
            "probability_atol": self.probability_atol,
            "mask_max_step": self.mask_max_step,
            "batches": {
                str(b): {"probability_max_abs": p, "mask_max_step": m} for b, (p, m) in sorted(self.differences.items())
            },
        }


def _example(batch: int, seed: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (batch, *wire.IMAGES.shape), dtype=torch.uint8, generator=generator)


# Source sizes of the synthetic photographs: larger than a crop, exactly one, and a short side below 512 (the
# contract upsizes it), landscape and portrait.
_PHOTO_SIZES = ((640, 480), (512, 512), (384, 576), (900, 600))


def _synthetic_photo(rng: np.random.Generator, width: int, height: int) -> Image.Image:
    """A lit gradient under overlapping shapes, a saturated patch, slight blur and sensor-like noise."""
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    ramp = xx / width * rng.uniform(0.2, 1.0) + yy / height * rng.uniform(0.2, 1.0)
    low, high = rng.uniform(0, 255, 3), rng.uniform(0, 255, 3)
    pixels = low + (high - low) * (ramp / ramp.max())[..., None]
    image = Image.fromarray(pixels.astype(np.uint8))
    draw = ImageDraw.Draw(image)
    for _ in range(14):
        x0, y0 = int(rng.integers(0, width)), int(rng.integers(0, height))
        box = (x0, y0, x0 + int(rng.integers(8, width // 2)), y0 + int(rng.integers(8, height // 2)))
        fill = tuple(int(v) for v in rng.integers(0, 256, 3))
        shape = int(rng.integers(0, 3))
        if shape == 0:
            draw.ellipse(box, fill=fill)
        elif shape == 1:
            draw.rectangle(box, fill=fill)
        else:
            draw.line(box, fill=fill, width=int(rng.integers(1, 9)))
    # Near the centre, so the centre crop keeps it.
    x0 = width // 2 + int(rng.integers(-128, 64))
    y0 = height // 2 + int(rng.integers(-128, 64))
    draw.rectangle((x0, y0, x0 + 63, y0 + 63), fill=(255, 255, 255) if rng.integers(0, 2) else (0, 0, 0))
    image = image.filter(ImageFilter.GaussianBlur(float(rng.uniform(0.0, 1.5))))
    noisy = np.asarray(image, dtype=np.float32) + rng.normal(0.0, 3.0, (height, width, 3))
    return Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8))


def contract_crops(count: int, seed: int = 0) -> np.ndarray:
    """``count`` crops made the way served crops are: synthetic photographs, encoded as JPEG (quality 85) or PNG
    and turned into (3, 512, 512) uint8 by :func:`gamma.preprocess.preprocess`, the serving contract.

    Noise alone never shows the model flat regions, edges, saturation or JPEG blocking; those drive activations
    (and mask logits near a rounding edge) where noise does not, so the parity check runs on both.
    """
    rng = np.random.default_rng(seed)
    crops = np.empty((count, *wire.IMAGES.shape), dtype=np.uint8)
    for index in range(count):
        width, height = _PHOTO_SIZES[index % len(_PHOTO_SIZES)]
        encoded = io.BytesIO()
        if index % 2 == 0:
            _synthetic_photo(rng, width, height).save(encoded, format="JPEG", quality=85)
        else:
            _synthetic_photo(rng, width, height).save(encoded, format="PNG")
        crops[index] = preprocess(encoded.getvalue())
    return crops


def parity_inputs(batch: int, seed: int) -> torch.Tensor:
    """The parity check's batch: half (rounded up) :func:`contract_crops`, the rest uniform noise."""
    structured = contract_crops((batch + 1) // 2, seed)
    noise = _example(batch - len(structured), seed).numpy()
    return torch.from_numpy(np.concatenate([structured, noise]))


def _export_dynamo(serving: ServingModel, path: Path, opset: int, max_batch: int) -> None:
    batch = torch.export.Dim("batch", min=1, max=max(max_batch, 2))
    program = torch.onnx.export(
        serving,
        (_example(2, 0),),
        dynamo=True,
        opset_version=opset,
        input_names=[spec.name for spec in wire.INPUTS],
        output_names=[spec.name for spec in wire.OUTPUTS],
        # Positional (one entry per forward argument, in order): keyed by name it would repeat forward's
        # parameter name, a second home for a fact that ServingModel.forward and wire.IMAGES already hold.
        dynamic_shapes=({0: batch},),
        external_data=False,
        verbose=False,
    )
    if program is None:
        raise ExportError("torch.onnx.export(dynamo=True) returned no program")
    program.save(str(path), external_data=False)


def _export_torchscript(serving: ServingModel, path: Path, opset: int) -> None:
    names = [spec.name for spec in (*wire.INPUTS, *wire.OUTPUTS)]
    torch.onnx.export(
        serving,
        (_example(2, 0),),
        str(path),
        dynamo=False,
        opset_version=opset,
        input_names=[spec.name for spec in wire.INPUTS],
        output_names=[spec.name for spec in wire.OUTPUTS],
        dynamic_axes={name: {0: "batch"} for name in names},
    )


def _check_signature(path: Path) -> None:
    """The graph's names and dtypes must be the wire contract's, with a symbolic batch axis."""
    model = onnx.load(str(path), load_external_data=False)
    onnx.checker.check_model(model)
    graph_io = {value.name: value for value in (*model.graph.input, *model.graph.output)}
    for spec in (*wire.INPUTS, *wire.OUTPUTS):
        value = graph_io.get(spec.name)
        if value is None:
            raise ExportError(f"exported graph has no tensor {spec.name!r} (has {sorted(graph_io)})")
        tensor_type = value.type.tensor_type
        dtype = onnx.helper.tensor_dtype_to_np_dtype(tensor_type.elem_type)
        if dtype != np.dtype(spec.dtype):
            raise ExportError(f"{spec.name}: exported dtype {dtype}, wire contract says {spec.dtype}")
        dims = tensor_type.shape.dim
        if len(dims) != 1 + len(spec.shape):
            raise ExportError(f"{spec.name}: exported rank {len(dims)}, wire contract says {1 + len(spec.shape)}")
        if dims[0].HasField("dim_value"):
            raise ExportError(f"{spec.name}: batch axis is fixed at {dims[0].dim_value}, expected dynamic")
        # Other axes may stay symbolic (the TorchScript exporter leaves the mask size symbolic); a fixed one must
        # match. The parity check runs the graph and checks the actual shapes.
        for axis, (dim, expected) in enumerate(zip(dims[1:], spec.shape), start=1):
            if dim.HasField("dim_value") and dim.dim_value != expected:
                raise ExportError(
                    f"{spec.name}: axis {axis} exported as {dim.dim_value}, wire contract says {expected}"
                )


def export_onnx(
    serving: ServingModel, path: str | Path, opset: int = DEFAULT_OPSET, max_batch: int = 64
) -> ExportResult:
    """Export with the dynamo exporter (torch.export + onnxscript); fall back to the TorchScript exporter.

    Why both: the dynamo exporter is torch's maintained path and produces cleaner graphs, but it has failed on
    new operator/shape patterns before; the TorchScript exporter is frozen but handles this model. Either result
    is checked against the wire contract, and the caller checks numerical parity.
    """
    if opset < 17:
        raise ValueError(f"opset {opset} < 17: LayerNormalization needs 17")
    path = Path(path)
    serving = serving.eval()
    reason = None
    try:
        with _quiet():
            _export_dynamo(serving, path, opset, max_batch)
        _check_signature(path)
        return ExportResult(path, "dynamo", opset)
    except Exception as exc:  # any failure of the new exporter means: try the old one
        reason = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
        log.warning("dynamo ONNX export failed (%s); falling back to the TorchScript exporter", reason)
        path.unlink(missing_ok=True)
    try:
        with _quiet():
            _export_torchscript(serving, path, opset)
        _check_signature(path)
    except Exception as exc:
        raise ExportError(f"ONNX export failed with both exporters: dynamo ({reason}); torchscript ({exc})") from exc
    return ExportResult(path, "torchscript", opset, fallback_reason=reason)


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """The exporters print progress, warnings and log lines (e.g. "torchvision is not installed"); keep the CLI's
    output to what matters. Failures still raise."""
    torch_onnx_log = logging.getLogger("torch.onnx")
    level = torch_onnx_log.level
    torch_onnx_log.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            yield
    finally:
        torch_onnx_log.setLevel(level)


@torch.inference_mode()
def check_parity(
    serving: ServingModel,
    onnx_path: str | Path,
    batches: Sequence[int] = PARITY_BATCHES,
    probability_atol: float = PROBABILITY_ATOL,
    mask_max_step: int = MASK_MAX_STEP,
) -> ParityReport:
    """Run PyTorch and ONNX Runtime on the same uint8 crops at each batch size; report worst differences.

    Each batch is :func:`parity_inputs`: crops from the preprocessing contract (synthetic photographs through
    :func:`gamma.preprocess.preprocess`) and uniform noise. Batch > 1 matters: a batch axis baked into a Reshape
    shows up only there.
    """
    session = ort_session(onnx_path)
    report = ParityReport(probability_atol=probability_atol, mask_max_step=mask_max_step)
    for batch in batches:
        images = parity_inputs(batch, seed=1000 + batch)
        expected = [t.numpy() for t in serving.eval()(images)]
        actual = session.run([spec.name for spec in wire.OUTPUTS], {wire.IMAGES.name: images.numpy()})
        for spec, got in zip(wire.OUTPUTS, actual):
            if got.dtype != np.dtype(spec.dtype) or got.shape != (batch, *spec.shape):
                raise ParityError(
                    f"{spec.name}: ONNX Runtime gave {got.dtype}{got.shape}, expected "
                    f"{spec.dtype}{(batch, *spec.shape)}"
                )
        probability = float(np.abs(expected[0].astype(np.float64) - actual[0]).max())
        mask = max(int(np.abs(e.astype(np.int16) - a.astype(np.int16)).max()) for e, a in zip(expected[1:], actual[1:]))
        report.differences[batch] = (probability, mask)
    return report
