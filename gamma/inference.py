"""In-process inference: one backend interface, the in-process detector, and batching of many images.

A backend turns a batch of preprocessed crops into the wire outputs of :mod:`gamma.wire`. The worker holds
either a Triton client or one of the in-process backends here; everything after inference (verdicts, masks,
storage) is the same code whichever it holds.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import numpy as np
import torch

from gamma.config import GammaConfig
from gamma.model.serving import ServingModel
from gamma.preprocess import DEFAULT_LIMITS, ImageRejected, PreprocessLimits, preprocess
from gamma.verdict import Judgement, VerdictThresholds, judge
from gamma.weights import DEFAULT_MODEL, load_checkpoint


@dataclass
class BatchOutputs:
    """Wire outputs for a batch: probability (B,), masks uint8 (B, h, w) with 0..255 = probability 0..1."""

    probability: np.ndarray
    ai_mask: np.ndarray
    manipulation_mask: np.ndarray

    def __len__(self) -> int:
        return len(self.probability)


class InferenceBackend(Protocol):
    """Something that runs GAMMA on a batch of uint8 crops (B, 3, 512, 512)."""

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


class UnreadableSource(OSError):
    """The image's bytes could not be read at all (missing file, permission); not a judgement on the image."""

    reason = "unreadable"

    def __init__(self, source: str, cause: OSError) -> None:
        super().__init__(f"{source}: {cause}")
        self.detail = f"{type(cause).__name__}: {cause}"


@dataclass
class ImageResult:
    """One image's outcome: a judgement with its masks, or the reason it could not be judged."""

    source: str
    judgement: Judgement | None = None
    ai_mask: np.ndarray | None = field(default=None, repr=False)
    manipulation_mask: np.ndarray | None = field(default=None, repr=False)
    error: ImageRejected | UnreadableSource | None = None

    def to_dict(self) -> dict[str, object]:
        if self.judgement is None:
            assert self.error is not None
            return {"source": self.source, "verdict": "error", "reason": self.error.reason, "detail": self.error.detail}
        return {"source": self.source, **self.judgement.to_dict()}


def _batches(items: Iterable[tuple[int, np.ndarray]], size: int) -> Iterator[list[tuple[int, np.ndarray]]]:
    batch: list[tuple[int, np.ndarray]] = []
    for item in items:
        batch.append(item)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


class Detector:
    """Classifies image files or bytes with a backend: preprocess (parallel), batch, infer, judge.

    >>> detector = Detector.from_checkpoint("gamma-local-b0")     # doctest: +SKIP
    >>> [r.to_dict() for r in detector.classify_files(["a.jpg"])]  # doctest: +SKIP
    """

    def __init__(
        self, backend: InferenceBackend, limits: PreprocessLimits = DEFAULT_LIMITS, workers: int = 2
    ) -> None:
        self.backend = backend
        self.limits = limits
        self.workers = workers

    @classmethod
    def from_checkpoint(cls, name_or_path: str | Path = DEFAULT_MODEL, device: str = "cpu") -> Detector:
        return cls(TorchBackend.from_checkpoint(name_or_path, device))

    def _preprocess(self, data: bytes) -> np.ndarray | ImageRejected:
        try:
            return preprocess(data, self.limits)
        except ImageRejected as rejected:
            return rejected

    def classify_bytes(self, items: Sequence[tuple[str, bytes]]) -> list[ImageResult]:
        """``items`` = (source name, encoded bytes); results in the same order."""
        results = [ImageResult(source) for source, _ in items]
        with ThreadPoolExecutor(self.workers) as pool:
            crops = list(pool.map(self._preprocess, (data for _, data in items)))
        valid = []
        for index, crop in enumerate(crops):
            if isinstance(crop, ImageRejected):
                results[index].error = crop
            else:
                valid.append((index, crop))
        for batch in _batches(valid, self.backend.max_batch_size):
            outputs = self.backend.infer(np.stack([crop for _, crop in batch]))
            for row, (index, _) in enumerate(batch):
                result = results[index]
                result.ai_mask = outputs.ai_mask[row]
                result.manipulation_mask = outputs.manipulation_mask[row]
                result.judgement = judge(
                    outputs.probability[row], result.ai_mask, result.manipulation_mask, self.backend.thresholds
                )
        return results

    def classify_files(self, paths: Sequence[str | Path]) -> list[ImageResult]:
        """Files in, one result per file in order; a file that cannot be read gets an ``unreadable`` error."""
        readable: list[tuple[str, bytes]] = []
        unreadable: dict[str, UnreadableSource] = {}
        for path in paths:
            try:
                readable.append((str(path), Path(path).read_bytes()))
            except OSError as exc:
                unreadable[str(path)] = UnreadableSource(str(path), exc)
        judged = iter(self.classify_bytes(readable))
        return [
            ImageResult(str(p), error=unreadable[str(p)]) if str(p) in unreadable else next(judged) for p in paths
        ]
