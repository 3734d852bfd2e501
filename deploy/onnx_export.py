"""GAMMA's served form (:class:`~gamma.model.serving.ServingModel`) to ONNX, and the parity check that gates it.

Export happens into a file the caller chooses (a staging folder); nothing reaches a model repository until
:func:`check_parity` has compared ONNX Runtime against PyTorch on the same uint8 tiles.

The graph takes tiles of any size (contract v2, :mod:`gamma.tiling`): batch, height and width are dynamic axes of
``images`` (B, 3, H, W) and of the masks (B, 1, H/4, W/4); H and W are exported as multiples of the encoder's stride
(32) up to ``TILE_SIZE``. Parity runs at more than one tile shape, because a size the tracer baked into a Reshape or
an interpolation shows up only at a shape other than the example's.
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
from gamma.tiling import MIN_SIDE, STRIDE, TILE_SIZE

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
# Tile shapes (height, width) the parity check runs at: the full tile, and a small non-square one (a 300x200 photo's
# whole-image tile). Two shapes with H != W catch a size baked in at export and a swapped height/width.
PARITY_SHAPES: tuple[tuple[int, int], ...] = ((TILE_SIZE, TILE_SIZE), (192, 288))
# The example the exporters trace: batch 2 and sides other than 1 x STRIDE (torch.export specialises a size-1 axis,
# and a square example cannot tell height from width).
EXPORT_EXAMPLE: tuple[int, int, int] = (2, 256, 384)


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


RunKey = tuple[int, int, int]  # (batch, tile height, tile width) of one parity run


@dataclass
class ParityReport:
    """Worst differences per run: {(batch, height, width): (probability max abs diff, mask max abs step)}."""

    differences: dict[RunKey, tuple[float, int]] = field(default_factory=dict)
    probability_atol: float = PROBABILITY_ATOL
    mask_max_step: int = MASK_MAX_STEP

    @property
    def ok(self) -> bool:
        return all(p <= self.probability_atol and m <= self.mask_max_step for p, m in self.differences.values())

    def worst_by_batch(self) -> dict[int, tuple[float, int]]:
        """{batch: worst (probability, mask step) over the tile shapes run at that batch}."""
        worst: dict[int, tuple[float, int]] = {}
        for (batch, _, _), (p, m) in sorted(self.differences.items()):
            previous = worst.get(batch, (0.0, 0))
            worst[batch] = (max(previous[0], p), max(previous[1], m))
        return worst

    def summary(self) -> str:
        parts = [
            f"batch {b} at {h}x{w}: probability {p:.2e} (atol {self.probability_atol:g}), "
            f"mask step {m} (max {self.mask_max_step})"
            for (b, h, w), (p, m) in sorted(self.differences.items())
        ]
        return "; ".join(parts)

    def to_dict(self) -> dict[str, object]:
        """``batches``: the worst over tile shapes per batch size; ``runs``: every run, keyed ``BxCxHxW``."""
        return {
            "probability_atol": self.probability_atol,
            "mask_max_step": self.mask_max_step,
            "tile_shapes": [f"{h}x{w}" for h, w in sorted({(h, w) for _, h, w in self.differences})],
            "batches": {
                str(b): {"probability_max_abs": p, "mask_max_step": m} for b, (p, m) in self.worst_by_batch().items()
            },
            "runs": {
                f"{b}x{wire.IMAGES.shape[0]}x{h}x{w}": {"probability_max_abs": p, "mask_max_step": m}
                for (b, h, w), (p, m) in sorted(self.differences.items())
            },
        }


def _example(batch: int, seed: int, height: int = TILE_SIZE, width: int = TILE_SIZE) -> torch.Tensor:
    """Uniform noise, uint8 (batch, 3, height, width)."""
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (batch, *wire.IMAGES.concrete(height, width)), dtype=torch.uint8, generator=generator)


# Sides of the synthetic photographs whose centre tile is a full TILE_SIZE one: exactly a tile, and larger (the
# tile is cut from the middle). A side below TILE_SIZE is the tile side plus 0-31 px (cut to the stride).
_LARGE_SIDES = (512, 576, 640, 900)


def synthetic_photo(rng: np.random.Generator, width: int, height: int) -> Image.Image:
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
    # Near the centre, so the centre tile keeps it (partly, on the smallest photographs).
    x0 = width // 2 + int(rng.integers(-min(128, width // 2), 64))
    y0 = height // 2 + int(rng.integers(-min(128, height // 2), 64))
    draw.rectangle((x0, y0, x0 + 63, y0 + 63), fill=(255, 255, 255) if rng.integers(0, 2) else (0, 0, 0))
    image = image.filter(ImageFilter.GaussianBlur(float(rng.uniform(0.0, 1.5))))
    noisy = np.asarray(image, dtype=np.float32) + rng.normal(0.0, 3.0, (height, width, 3))
    return Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8))


def _photo_side(rng: np.random.Generator, tile: int) -> int:
    """An image side whose tile side (gamma.tiling.tile_side) is ``tile``."""
    return int(rng.choice(_LARGE_SIDES)) if tile == TILE_SIZE else tile + int(rng.integers(0, STRIDE))


def _check_tile_shape(height: int, width: int, smallest: int = STRIDE) -> None:
    for side in (height, width):
        if side % STRIDE or not smallest <= side <= TILE_SIZE:
            raise ValueError(f"tile {height}x{width}: sides must be multiples of {STRIDE} in [{smallest}, {TILE_SIZE}]")


def contract_tiles(count: int, seed: int = 0, height: int = TILE_SIZE, width: int = TILE_SIZE) -> np.ndarray:
    """``count`` tiles made the way served tiles are: synthetic photographs sized so that their centre tile is
    ``height`` x ``width``, encoded as JPEG (quality 85) or PNG, alternately, and cut by
    :func:`gamma.preprocess.preprocess` (coverage ``centre``, the serving contract) -> uint8 (count, 3, height, width).

    Noise alone never shows the model flat regions, edges, saturation or JPEG blocking; those drive activations
    (and mask logits near a rounding edge) where noise does not, so the parity check runs on both. Sides below
    ``gamma.tiling.MIN_SIDE`` have no photograph (the contract refuses it): ValueError.
    """
    _check_tile_shape(height, width, smallest=MIN_SIDE)
    rng = np.random.default_rng(seed)
    tiles = np.empty((count, *wire.IMAGES.concrete(height, width)), dtype=np.uint8)
    for index in range(count):
        photo = synthetic_photo(rng, _photo_side(rng, width), _photo_side(rng, height))
        encoded = io.BytesIO()
        if index % 2 == 0:
            photo.save(encoded, format="JPEG", quality=85)
        else:
            photo.save(encoded, format="PNG")
        (tiles[index],) = preprocess(encoded.getvalue(), coverage="centre").pixels
    return tiles


def parity_inputs(batch: int, seed: int, height: int = TILE_SIZE, width: int = TILE_SIZE) -> torch.Tensor:
    """The parity check's batch of ``height`` x ``width`` tiles: half (rounded up) :func:`contract_tiles`, the rest
    uniform noise -> uint8 (batch, 3, height, width). Noise only for a side below MIN_SIDE (no photograph has it)."""
    noise = _example(batch, seed, height, width).numpy()
    if min(height, width) < MIN_SIDE:
        return torch.from_numpy(noise)
    structured = contract_tiles((batch + 1) // 2, seed, height, width)
    return torch.from_numpy(np.concatenate([structured, noise[: batch - len(structured)]]))


def _dynamic_axes(spec: wire.TensorSpec) -> dict[int, str]:
    """{axis (with the batch axis): name} of the axes the wire contract leaves dynamic: the batch, then H and W."""
    names = {len(spec.shape) - 1: "height", len(spec.shape): "width"}
    axes = {0: "batch"}
    for axis, size in enumerate(spec.shape, start=1):
        if size == wire.DYNAMIC:
            axes[axis] = names[axis] if spec is wire.IMAGES else f"mask_{names[axis]}"
    return axes


def _export_dynamo(serving: ServingModel, path: Path, opset: int, max_batch: int) -> None:
    # Height and width as STRIDE x a block count: the exporter then knows every stage divides evenly (stride-2
    # convolutions, the decoders' upsampling to stride 4), so it keeps them symbolic instead of specialising.
    dims: dict[str, object] = {"batch": torch.export.Dim("batch", min=1, max=max(max_batch, 2))}
    for name in ("height", "width"):
        dims[name] = STRIDE * torch.export.Dim(f"{name}_blocks", min=1, max=TILE_SIZE // STRIDE)
    images_axes = {axis: dims[name] for axis, name in _dynamic_axes(wire.IMAGES).items()}
    batch, height, width = EXPORT_EXAMPLE
    program = torch.onnx.export(
        serving,
        (_example(batch, 0, height, width),),
        dynamo=True,
        opset_version=opset,
        input_names=[spec.name for spec in wire.INPUTS],
        output_names=[spec.name for spec in wire.OUTPUTS],
        # Positional (one entry per forward argument, in order): keyed by name it would repeat forward's
        # parameter name, a second home for a fact that ServingModel.forward and wire.IMAGES already hold.
        dynamic_shapes=(images_axes,),
        external_data=False,
        verbose=False,
    )
    if program is None:
        raise ExportError("torch.onnx.export(dynamo=True) returned no program")
    program.save(str(path), external_data=False)


def _export_torchscript(serving: ServingModel, path: Path, opset: int) -> None:
    batch, height, width = EXPORT_EXAMPLE
    torch.onnx.export(
        serving,
        (_example(batch, 0, height, width),),
        str(path),
        dynamo=False,
        opset_version=opset,
        input_names=[spec.name for spec in wire.INPUTS],
        output_names=[spec.name for spec in wire.OUTPUTS],
        dynamic_axes={spec.name: _dynamic_axes(spec) for spec in (*wire.INPUTS, *wire.OUTPUTS)},
    )


def _check_signature(path: Path) -> None:
    """The graph's names, dtypes and ranks must be the wire contract's, with a symbolic batch axis and symbolic
    axes wherever the contract says DYNAMIC (tile height and width)."""
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
        # A dynamic axis exported fixed would accept one tile shape only. A fixed axis may stay symbolic (exporters
        # do not always infer a constant), but a fixed one must match; the parity check runs the graph and checks
        # the actual shapes.
        for axis, (dim, expected) in enumerate(zip(dims[1:], spec.shape), start=1):
            if expected == wire.DYNAMIC and dim.HasField("dim_value"):
                raise ExportError(f"{spec.name}: axis {axis} is fixed at {dim.dim_value}, wire contract says dynamic")
            if expected != wire.DYNAMIC and dim.HasField("dim_value") and dim.dim_value != expected:
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
    shapes: Sequence[tuple[int, int]] = PARITY_SHAPES,
) -> ParityReport:
    """Run PyTorch and ONNX Runtime on the same uint8 tiles at each tile shape (height, width) and batch size;
    report the worst differences of each run.

    Each batch is :func:`parity_inputs`: tiles from the preprocessing contract (synthetic photographs through
    :func:`gamma.preprocess.preprocess`) and uniform noise. Batch > 1 matters: a batch axis baked into a Reshape
    shows up only there; so does a tile size baked in, at any shape but the traced example's. Every output must
    also have the wire shape for that tile: probability (B, 1), masks (B, 1, H/4, W/4).
    """
    session = ort_session(onnx_path)
    report = ParityReport(probability_atol=probability_atol, mask_max_step=mask_max_step)
    for height, width in shapes:
        _check_tile_shape(height, width)
        for batch in batches:
            images = parity_inputs(batch, 1000 + batch, height, width)
            expected = [t.numpy() for t in serving.eval()(images)]
            actual = session.run([spec.name for spec in wire.OUTPUTS], {wire.IMAGES.name: images.numpy()})
            for spec, got in zip(wire.OUTPUTS, actual):
                shape = (batch, *spec.concrete(height, width))
                if got.dtype != np.dtype(spec.dtype) or got.shape != shape:
                    raise ParityError(
                        f"{spec.name}: ONNX Runtime gave {got.dtype}{got.shape} for {height}x{width} tiles, "
                        f"expected {spec.dtype}{shape}"
                    )
            probability = float(np.abs(expected[0].astype(np.float64) - actual[0]).max())
            mask = max(
                int(np.abs(e.astype(np.int16) - a.astype(np.int16)).max()) for e, a in zip(expected[1:], actual[1:])
            )
            report.differences[(batch, height, width)] = (probability, mask)
    return report
