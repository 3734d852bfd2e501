"""In-process inference: one backend interface, the in-process detector, and batching of many images.

A backend turns a batch of preprocessed crops into the wire outputs of :mod:`gamma.wire`. The worker holds
either a Triton client or one of the in-process backends here (:class:`TorchBackend` for a checkpoint,
:class:`OnnxBackend` for the ONNX graph ``deploy/export_triton.py`` exported); everything after inference
(verdicts, masks, storage) is the same code whichever it holds.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol, TypeVar

import numpy as np
import onnxruntime as ort
import torch

from gamma import wire
from gamma.config import GammaConfig
from gamma.model.serving import ServingModel
from gamma.preprocess import DEFAULT_LIMITS, ImageRejected, PreprocessLimits, Tiles, preprocess
from gamma.tiling import MASK_STRIDE, Coverage, TileOutputs, combine_tiles, parse_coverage
from gamma.verdict import Judgement, VerdictThresholds, decide
from gamma.weights import DEFAULT_MODEL, METADATA_FILE, WeightsError, load_checkpoint

T = TypeVar("T")


@dataclass
class BatchOutputs:
    """Wire outputs for a batch: probability (B,), masks uint8 (B, h, w) with 0..255 = probability 0..1."""

    probability: np.ndarray
    ai_mask: np.ndarray
    manipulation_mask: np.ndarray

    def __len__(self) -> int:
        return len(self.probability)


class InferenceBackend(Protocol):
    """Something that runs GAMMA on a batch of uint8 tiles (B, 3, H, W), one tile shape per batch."""

    model_name: str
    model_version: int
    thresholds: VerdictThresholds
    max_batch_size: int

    def infer(self, images: np.ndarray) -> BatchOutputs: ...


def outputs_from_wire(probability: np.ndarray, ai_mask: np.ndarray, manipulation_mask: np.ndarray) -> BatchOutputs:
    """Squeeze the singleton axes of the wire tensors (B,1), (B,1,h,w)."""
    return BatchOutputs(
        probability=np.asarray(probability, dtype=np.float32).reshape(-1),
        ai_mask=np.asarray(ai_mask, dtype=np.uint8)[:, 0],
        manipulation_mask=np.asarray(manipulation_mask, dtype=np.uint8)[:, 0],
    )


class TorchBackend:
    """The PyTorch model in this process."""

    def __init__(
        self,
        model: torch.nn.Module,
        config: GammaConfig,
        name: str,
        version: int = 1,
        device: str = "cpu",
        max_batch_size: int = 8,
    ) -> None:
        self.serving = ServingModel(model).to(device).eval()
        self.device = device
        self.model_name = name
        self.model_version = version
        self.thresholds = config.thresholds
        self.max_batch_size = max_batch_size

    @classmethod
    def from_checkpoint(cls, name_or_path: str | Path = DEFAULT_MODEL, device: str = "cpu", **kw: int) -> TorchBackend:
        checkpoint = load_checkpoint(name_or_path, device)
        return cls(checkpoint.model, checkpoint.config, checkpoint.name, checkpoint.version, device, **kw)

    @torch.inference_mode()
    def infer(self, images: np.ndarray) -> BatchOutputs:
        batch = torch.from_numpy(np.ascontiguousarray(images)).to(self.device)
        probability, ai_mask, manipulation_mask = self.serving(batch)
        return outputs_from_wire(probability.cpu().numpy(), ai_mask.cpu().numpy(), manipulation_mask.cpu().numpy())


def ort_session(path: str | Path, threads: int = 0, spinning: bool = False) -> ort.InferenceSession:
    """A CPU ONNX Runtime session configured as the Triton python backend's (``threads`` = 0: one per core).

    Idle threads do not spin by default: on cores shared with preprocessing or other instances, a busy-waiting
    pool steals time from the threads doing work.
    """
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.add_session_config_entry("session.intra_op.allow_spinning", "1" if spinning else "0")
    options.log_severity_level = 3
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


class OnnxBackend:
    """GAMMA's exported ONNX graph (the served form: uint8 crops in, wire outputs out) through ONNX Runtime on CPU.

    The graph is the one Triton serves, so this backend answers exactly as the server does (the exporter's parity
    gate bounds its distance to :class:`TorchBackend`) without a server; it needs no torch model at all.
    """

    def __init__(
        self,
        path: str | Path,
        thresholds: VerdictThresholds,
        name: str,
        version: int = 1,
        max_batch_size: int = 8,
        threads: int = 0,
    ) -> None:
        self.path = Path(path)
        self.session = ort_session(self.path, threads)
        self.model_name = name
        self.model_version = version
        self.thresholds = thresholds
        self.max_batch_size = max_batch_size
        graph_inputs = {value.name for value in self.session.get_inputs()}
        graph_outputs = {value.name for value in self.session.get_outputs()}
        missing = [s.name for s in wire.INPUTS if s.name not in graph_inputs] + [
            s.name for s in wire.OUTPUTS if s.name not in graph_outputs
        ]
        if missing:  # a graph exported under other names fails here, not as a KeyError inside session.run
            raise WeightsError(
                f"{self.path}: ONNX graph lacks wire tensors {missing} "
                f"(has inputs {sorted(graph_inputs)}, outputs {sorted(graph_outputs)})"
            )

    @classmethod
    def from_export(
        cls,
        path: str | Path,
        thresholds: VerdictThresholds | None = None,
        max_batch_size: int = 8,
        threads: int = 0,
    ) -> OnnxBackend:
        """Load an exported version: ``path`` is its ``model.onnx`` or its version folder (``<model>/<version>/``).

        Name, version and thresholds come from the ``metadata.json`` the exporter writes beside the graph, so the
        verdicts are the checkpoint's. ``thresholds`` overrides them; without metadata it is required, because
        silently judging with the defaults would give verdicts the model was never validated for.
        """
        path = Path(path)
        folder = path if path.is_dir() else path.parent
        metadata_path = folder / METADATA_FILE
        metadata: dict[str, object] = {}
        if metadata_path.is_file():
            try:
                metadata = json.loads(metadata_path.read_text())
            except ValueError as exc:
                raise WeightsError(f"{metadata_path}: not JSON ({exc})") from exc
        if path.is_dir():
            onnx = metadata.get("onnx")
            if not isinstance(onnx, dict) or "file" not in onnx:
                raise WeightsError(f"{path}: a folder needs {METADATA_FILE} naming its ONNX file; pass the file")
            path = folder / str(onnx["file"])
        if not path.is_file():
            raise WeightsError(f"ONNX file not found: {path}")
        if thresholds is None:
            if "thresholds" not in metadata:
                raise WeightsError(f"{metadata_path} with the export's thresholds not found; pass thresholds=")
            thresholds = VerdictThresholds.from_dict(metadata["thresholds"])  # type: ignore[arg-type]
        name = str(metadata.get("model_name") or folder.parent.name)
        version = int(metadata.get("version") or (folder.name if folder.name.isdigit() else 1))  # type: ignore[arg-type]
        return cls(path, thresholds, name, version, max_batch_size, threads)

    def infer(self, images: np.ndarray) -> BatchOutputs:
        feed = {wire.IMAGES.name: np.ascontiguousarray(images, dtype=wire.IMAGES.dtype)}
        probability, ai_mask, manipulation_mask = self.session.run([s.name for s in wire.OUTPUTS], feed)
        return outputs_from_wire(probability, ai_mask, manipulation_mask)


class UnreadableSource(OSError):
    """The image's bytes could not be read at all (missing file, permission); not a judgement on the image."""

    reason = "unreadable"

    def __init__(self, source: str, cause: OSError) -> None:
        super().__init__(f"{source}: {cause}")
        self.detail = f"{type(cause).__name__}: {cause}"


@dataclass
class ImageResult:
    """One image's outcome: a judgement with its full-image masks (uint8 at MASK_STRIDE, zero where no tile
    looked) and what its tiles covered, or the reason it could not be judged."""

    source: str
    judgement: Judgement | None = None
    ai_mask: np.ndarray | None = field(default=None, repr=False)
    manipulation_mask: np.ndarray | None = field(default=None, repr=False)
    error: ImageRejected | UnreadableSource | None = None
    tiles: TileOutputs | None = field(default=None, repr=False)

    def to_dict(self) -> dict[str, object]:
        if self.judgement is None:
            assert self.error is not None
            return {"source": self.source, "verdict": "error", "reason": self.error.reason, "detail": self.error.detail}
        coverage = self.tiles.summary() if self.tiles is not None else {}
        return {"source": self.source, **self.judgement.to_dict(), **coverage}


def infer_tiles(backend: InferenceBackend, images: Sequence[Tiles]) -> list[TileOutputs]:
    """Every tile of ``images`` through ``backend``, tiles of different images batched together (one tile shape
    per batch, at most ``max_batch_size``), then each image's tiles combined (:func:`gamma.tiling.combine_tiles`)."""
    by_shape: dict[tuple[int, int], list[tuple[int, int]]] = {}
    for image, tiles in enumerate(images):
        shape = tuple(tiles.pixels.shape[-2:])
        by_shape.setdefault(shape, []).extend((image, tile) for tile in range(len(tiles)))  # type: ignore[arg-type]
    probability = [np.empty(len(t), dtype=np.float32) for t in images]
    ai = [
        np.empty((len(t), t.plan.tile_height // MASK_STRIDE, t.plan.tile_width // MASK_STRIDE), np.uint8)
        for t in images
    ]
    manipulation = [np.empty_like(a) for a in ai]
    for members in by_shape.values():
        for batch in _batches(members, backend.max_batch_size):
            outputs = backend.infer(np.stack([images[image].pixels[tile] for image, tile in batch]))
            for row, (image, tile) in enumerate(batch):
                probability[image][tile] = outputs.probability[row]
                ai[image][tile] = outputs.ai_mask[row]
                manipulation[image][tile] = outputs.manipulation_mask[row]
    thresholds = backend.thresholds
    return [
        combine_tiles(
            tiles.plan, probability[i], ai[i], manipulation[i], thresholds.mask_pixel,
            manipulated_pixel=thresholds.manipulated_pixel_threshold,
        )
        for i, tiles in enumerate(images)
    ]  # fmt: skip


def _batches(items: Iterable[T], size: int) -> Iterator[list[T]]:
    """Consecutive lists of ``size`` items (the last may be shorter), drawn lazily from ``items``."""
    batch: list[T] = []
    for item in items:
        batch.append(item)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def read_limited(path: str | Path, limits: PreprocessLimits = DEFAULT_LIMITS) -> bytes:
    """A file's bytes, never more than ``limits.max_bytes``: ImageRejected("too-many-bytes") above it.

    stat() first, so an oversized file is rejected without being opened; the read itself is also capped
    (``max_bytes + 1``) because stat can lie: a file growing meanwhile, a FIFO or a device (size 0, endless).
    Raises :class:`UnreadableSource` when the file cannot be read at all.
    """
    try:
        size = Path(path).stat().st_size
        if size > limits.max_bytes:
            raise ImageRejected("too-many-bytes", f"{size} bytes > limit {limits.max_bytes}")
        with open(path, "rb") as f:
            data = f.read(limits.max_bytes + 1)
    except OSError as exc:
        raise UnreadableSource(str(path), exc) from exc
    if len(data) > limits.max_bytes:
        raise ImageRejected("too-many-bytes", f"more than {limits.max_bytes} bytes (grew while read)")
    return data


class Detector:
    """Classifies image files or bytes with a backend: preprocess (parallel), batch, infer, judge.

    >>> detector = Detector.from_checkpoint("gamma-local-effl0")     # doctest: +SKIP
    >>> detector = Detector.from_onnx("model_repository/gamma-local-effl0/1")  # doctest: +SKIP
    >>> [r.to_dict() for r in detector.classify_files(["a.jpg"])]  # doctest: +SKIP
    """

    def __init__(
        self,
        backend: InferenceBackend,
        limits: PreprocessLimits = DEFAULT_LIMITS,
        workers: int = 2,
        coverage: Coverage | str | None = None,
    ) -> None:
        self.backend = backend
        self.limits = limits
        self.workers = workers
        self.coverage = parse_coverage(coverage)

    @classmethod
    def from_checkpoint(
        cls, name_or_path: str | Path = DEFAULT_MODEL, device: str = "cpu", coverage: Coverage | str | None = None
    ) -> Detector:
        return cls(TorchBackend.from_checkpoint(name_or_path, device), coverage=coverage)

    @classmethod
    def from_onnx(
        cls,
        path: str | Path,
        thresholds: VerdictThresholds | None = None,
        max_batch_size: int = 8,
        threads: int = 0,
        coverage: Coverage | str | None = None,
    ) -> Detector:
        """An exported version (its ``model.onnx`` or version folder), judged with its metadata's thresholds."""
        return cls(OnnxBackend.from_export(path, thresholds, max_batch_size, threads), coverage=coverage)

    @property
    def chunk_size(self) -> int:
        """Files read and preprocessed per round of :meth:`iter_files`: one batch, or enough to keep every
        preprocessing worker busy. Bounds what is in memory at once (``chunk_size`` x ``max_bytes`` at most)."""
        return max(self.backend.max_batch_size, self.workers)

    def _preprocess(self, data: bytes) -> Tiles | ImageRejected:
        try:
            return preprocess(data, self.limits, self.coverage)
        except ImageRejected as rejected:
            return rejected

    def _load_file(self, path: str | Path) -> Tiles | ImageRejected | UnreadableSource:
        """Read and preprocess in the same worker thread, so a file's bytes are dropped as soon as it is tiled."""
        try:
            data = read_limited(path, self.limits)
        except (ImageRejected, UnreadableSource) as error:
            return error
        return self._preprocess(data)

    def _judge(
        self, sources: Sequence[str], prepared: Sequence[Tiles | ImageRejected | UnreadableSource]
    ) -> list[ImageResult]:
        """Batches the valid images' tiles through the backend; results in the order of ``sources``."""
        results = [ImageResult(source) for source in sources]
        valid: list[tuple[int, Tiles]] = []
        for index, item in enumerate(prepared):
            if isinstance(item, ImageRejected | UnreadableSource):
                results[index].error = item
            else:
                valid.append((index, item))
        thresholds = self.backend.thresholds
        for (index, _), outputs in zip(valid, infer_tiles(self.backend, [tiles for _, tiles in valid])):
            result = results[index]
            result.tiles = outputs
            result.ai_mask, result.manipulation_mask = outputs.ai_mask, outputs.manipulation_mask
            result.judgement = decide(outputs.probability, outputs.ai_area, outputs.manipulated_area, thresholds)
        return results

    def classify_bytes(self, items: Sequence[tuple[str, bytes]]) -> list[ImageResult]:
        """``items`` = (source name, encoded bytes); results in the same order."""
        with ThreadPoolExecutor(self.workers) as pool:
            crops = list(pool.map(self._preprocess, (data for _, data in items)))
        return self._judge([source for source, _ in items], crops)

    def iter_files(self, paths: Iterable[str | Path]) -> Iterator[ImageResult]:
        """Files in, one result per file in input order, yielded a chunk at a time.

        Each chunk of :attr:`chunk_size` files is read, preprocessed, inferred and yielded before the next is
        read, so memory stays O(batch) however many files there are. A file over ``limits.max_bytes`` is
        rejected from its stat() without being read; one that cannot be read gets an ``unreadable`` error.
        """
        with ThreadPoolExecutor(self.workers) as pool:
            for chunk in _batches(paths, self.chunk_size):
                yield from self._judge([str(path) for path in chunk], list(pool.map(self._load_file, chunk)))

    def classify_files(self, paths: Iterable[str | Path]) -> list[ImageResult]:
        """:meth:`iter_files` collected into a list."""
        return list(self.iter_files(paths))
