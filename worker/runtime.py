"""What a process holds to run scan chunks: a detector around a backend, a mask store, a database, sources.

Built once per process from :class:`~worker.settings.Settings` (a Celery child builds it on its first task,
after the fork: a PyTorch model or a gRPC channel created before ``fork()`` is not safe to use in the child).
The backend is the only thing that differs between ``gamma-scan`` (PyTorch in-process) and a Celery worker
(Triton client when ``GAMMA_TRITON_URL`` is set, else PyTorch in-process too).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
from sqlalchemy import Engine
from sqlalchemy.orm import sessionmaker

from gamma.inference import BatchOutputs, Detector, InferenceBackend, TorchBackend
from gamma.preprocess import PreprocessLimits
from gamma.tiling import Coverage, parse_coverage
from gamma.verdict import VerdictThresholds
from worker import metrics
from worker.db import make_engine, migrate, session_factory
from worker.masks import MaskStore
from worker.settings import Settings
from worker.storage import LocalSource, S3Source, parse_source


class TimedBackend:
    """A backend that adds up the seconds spent in ``infer`` (the rest of classifying is preprocessing).

    Attributes are read through, not copied: a Triton backend learns its version from the server on first use
    and follows the server to a new version.
    """

    def __init__(self, backend: InferenceBackend) -> None:
        self.backend = backend
        self.seconds = 0.0

    @property
    def model_name(self) -> str:
        return self.backend.model_name

    @property
    def model_version(self) -> int:
        return self.backend.model_version

    @property
    def thresholds(self) -> VerdictThresholds:
        return self.backend.thresholds

    @property
    def max_batch_size(self) -> int:
        return self.backend.max_batch_size

    def infer(self, images: np.ndarray) -> BatchOutputs:
        start = time.perf_counter()
        try:
            return self.backend.infer(images)
        finally:
            elapsed = time.perf_counter() - start
            self.seconds += elapsed
            metrics.INFERENCE_SECONDS.observe(elapsed)
            metrics.BATCH_SIZE.observe(len(images))


class ModelVersionChanged(RuntimeError):
    """The backend's model version changed while a chunk was inferred: its outputs mix versions. Retry it."""


class FixedVersion:
    """A backend without :meth:`pinned` (the in-process ones, whose version cannot change) held to the version it
    had when the chunk began; should it change anyway, :class:`ModelVersionChanged` instead of mislabelled rows."""

    def __init__(self, backend: InferenceBackend) -> None:
        self.backend = backend
        self.model_name = backend.model_name
        self.model_version = backend.model_version
        self.thresholds = backend.thresholds
        self.max_batch_size = backend.max_batch_size

    def infer(self, images: np.ndarray) -> BatchOutputs:
        outputs = self.backend.infer(images)
        now = self.backend.model_version
        if now != self.model_version:
            raise ModelVersionChanged(f"{self.model_name}: v{self.model_version} became v{now} during the chunk")
        return outputs


def pin(backend: InferenceBackend) -> InferenceBackend:
    """``backend`` held to one model version for one chunk: its ``pinned()`` view (Triton: the version the server
    has ready now, named in every request), else :class:`FixedVersion`."""
    pinned = getattr(backend, "pinned", None)
    return pinned() if callable(pinned) else FixedVersion(backend)


def preprocess_limits(settings: Settings) -> PreprocessLimits:
    return settings.preprocess_limits()


def make_backend(settings: Settings) -> InferenceBackend:
    """A Triton client if ``triton_url`` is set, else the PyTorch checkpoint ``settings.model`` in this process."""
    if settings.triton_url:
        from deploy.triton_client import TritonBackend  # only workers that talk to Triton build a client

        return TritonBackend(
            settings.triton_url,
            settings.model,
            model_version=settings.model_version or None,
            timeout_s=settings.triton_timeout_s,
        )
    if settings.torch_threads:
        import torch

        torch.set_num_threads(settings.torch_threads)
    return TorchBackend.from_checkpoint(settings.model)


@dataclass
class Runtime:
    """A process's database, mask store, sources and (built on first use) detector.

    The detector is built lazily so that a process whose backend cannot be reached (Triton down) can still
    reach the database, e.g. to mark a chunk's images failed after its retries ran out.
    """

    settings: Settings
    masks: MaskStore
    engine: Engine
    sessions: sessionmaker
    backend_factory: Callable[[], InferenceBackend]
    _detector: Detector | None = field(default=None, repr=False)
    _sources: dict[str, S3Source | LocalSource] = field(default_factory=dict, repr=False)

    @classmethod
    def create(cls, settings: Settings, backend: InferenceBackend | None = None, migrate_db: bool = True) -> Runtime:
        """Everything for ``settings``; ``backend`` overrides the one the settings name (tests, benchmarks)."""
        engine = make_engine(settings.db_url)
        if migrate_db:
            migrate(engine)
        masks = MaskStore.from_url(settings.masks_url, settings.s3_endpoint_url, settings.s3_region)
        factory = (lambda: backend) if backend is not None else (lambda: make_backend(settings))
        return cls(settings, masks, engine, session_factory(engine), factory)

    @property
    def detector(self) -> Detector:
        if self._detector is None:
            backend = TimedBackend(self.backend_factory())
            self._detector = Detector(
                backend, preprocess_limits(self.settings), self.settings.preprocess_workers, self.settings.coverage
            )
        return self._detector

    @property
    def backend(self) -> TimedBackend:
        backend = self.detector.backend
        assert isinstance(backend, TimedBackend)
        return backend

    def pinned_detector(self, coverage: Coverage | str | None = None) -> Detector:
        """A detector for one chunk: the same preprocessing, the backend held to one model version
        (:func:`pin`), timed on its own. Read its ``backend.model_version`` for the version its results are of.

        ``coverage``: the chunk's scan's mode (``None``: this process's ``GAMMA_COVERAGE``), so every chunk of a
        scan sees the same tiles whichever worker runs it; the detector's ``coverage`` is what its results record.
        """
        detector = self.detector
        chosen = parse_coverage(coverage) if coverage else detector.coverage
        return Detector(TimedBackend(pin(self.backend.backend)), detector.limits, detector.workers, chosen)

    def model_identity(self) -> tuple[str, int]:
        """(name, version) of the loaded model; (configured name, 0) if the backend was never reached."""
        if self._detector is None:
            return self.settings.model, 0
        return self.backend.model_name, self.backend.model_version

    def source(self, uri: str) -> S3Source | LocalSource:
        """The source for ``uri``, cached: one S3 client (and its connection pool) per process, not per task."""
        if uri not in self._sources:
            self._sources[uri] = parse_source(uri, self.settings.s3_endpoint_url, self.settings.s3_region)
        return self._sources[uri]

    def close(self) -> None:
        self.engine.dispose()
