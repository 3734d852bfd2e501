"""``TritonBackend``: :class:`gamma.inference.InferenceBackend` over Triton's gRPC API.

The worker holds this or an in-process backend and cannot tell them apart: same input (uint8 tiles (B, 3, H, W),
one tile shape per batch), same :class:`~gamma.inference.BatchOutputs`, and the thresholds come from the served
model's config (written by ``deploy/export_triton.py`` from the checkpoint), so a served version always decides
with its own thresholds.

Errors are typed for the caller's retry policy: :class:`TritonUnavailable` (server down, overloaded or too slow:
retry later), :class:`ModelNotFound` (wrong name or version: retrying will not help), :class:`TritonInferenceError`
(the server rejected the request).
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

from deploy.triton_config import MAX_TILE_SIDE, MIN_TILE_SIDE, thresholds_param
from gamma import wire
from gamma.inference import BatchOutputs, outputs_from_wire
from gamma.tiling import STRIDE
from gamma.verdict import VerdictThresholds
from gamma.weights import DEFAULT_MODEL

T = TypeVar("T")

DEFAULT_URL = "127.0.0.1:8001"

# gRPC status codes that mean "the server cannot answer now", not "the request is wrong".
RETRYABLE_STATUS = {"StatusCode.UNAVAILABLE", "StatusCode.DEADLINE_EXCEEDED", "StatusCode.RESOURCE_EXHAUSTED"}


class TritonError(RuntimeError):
    """Base of the Triton client errors."""

    retryable = False


class TritonUnavailable(TritonError):
    """The server is down, unreachable, overloaded or did not answer within the timeout. Retry later."""

    retryable = True


class ModelNotFound(TritonError):
    """The server has no such model, or not that version (or the model failed to load)."""


class TritonInferenceError(TritonError):
    """The server answered with an error that retrying will not fix (bad input, model error)."""


@dataclass(frozen=True)
class ServedModel:
    """What the server says about the model a backend talks to."""

    name: str
    version: int
    max_batch_size: int
    thresholds: VerdictThresholds


def _translate(exc: InferenceServerException, what: str) -> TritonError:
    status = exc.status() or ""
    message = exc.message() or str(exc)
    if "has no available versions" in message:
        # The name is known but no version is loaded: the server is starting, stopping or reloading the model
        # (seen while Triton drains on SIGTERM). Transient; a model that never loads ends as retries-exhausted.
        return TritonUnavailable(f"{what}: model loading or unloading: {message}")
    if status == "StatusCode.NOT_FOUND" or "unknown model" in message:
        return ModelNotFound(f"{what}: {message}")
    if status in RETRYABLE_STATUS:
        return TritonUnavailable(f"{what}: {status.removeprefix('StatusCode.')}: {message}")
    return TritonInferenceError(f"{what}: {status or 'error'}: {message}")


class TritonBackend:
    """Runs GAMMA on a Triton server. Safe to share between threads (one gRPC channel, which is thread-safe).

    ``model_version=None`` follows whatever version the server serves (the newest under ``latest``); the
    version, batch limit and thresholds are fetched on first use and refreshed when a response reports a
    different version. ``timeout_s`` bounds every call, so a hung server costs at most that long.

    Work that must be judged and recorded under one version (a scan chunk) takes :meth:`pinned`: the version
    the server has ready *now*, asked once, and a view that infers every batch with ``model_version`` set to it,
    so a version change on the server mid-chunk cannot mix two versions' outputs under one version number.
    """

    def __init__(
        self,
        url: str = DEFAULT_URL,
        model_name: str = DEFAULT_MODEL,
        model_version: int | None = None,
        timeout_s: float = 30.0,
        metadata_timeout_s: float = 5.0,
        thresholds: VerdictThresholds | None = None,
    ) -> None:
        self.url = url
        self.model_name = model_name
        self.requested_version = model_version
        self.timeout_s = timeout_s
        self.metadata_timeout_s = metadata_timeout_s
        self._thresholds_override = thresholds
        self._served: ServedModel | None = None
        self._versions: dict[int, ServedModel] = {}  # config + thresholds per version, read once each
        self._lock = threading.Lock()
        # Reconnect quickly after an outage: gRPC's default backoff grows to 120 s, during which every call on the
        # channel fails at once even though the server is back.
        self._client = grpcclient.InferenceServerClient(
            url,
            channel_args=[
                ("grpc.max_send_message_length", 2**31 - 1),
                ("grpc.max_receive_message_length", 2**31 - 1),
                ("grpc.initial_reconnect_backoff_ms", 200),
                ("grpc.max_reconnect_backoff_ms", 2000),
            ],
        )

    # --- InferenceBackend attributes (fetched from the server on first use) ---------------------------------

    @property
    def served(self) -> ServedModel:
        with self._lock:
            served = self._served
        if served is None:
            served = self._describe()
            with self._lock:
                self._served = served
        return served

    @property
    def model_version(self) -> int:
        return self.served.version

    @property
    def thresholds(self) -> VerdictThresholds:
        return self.served.thresholds

    @property
    def max_batch_size(self) -> int:
        return self.served.max_batch_size

    # --- calls ----------------------------------------------------------------------------------------------

    def _call(self, what: str, fn: Callable[..., T], *args: object, **kwargs: object) -> T:
        try:
            return fn(*args, **kwargs)
        except InferenceServerException as exc:
            raise _translate(exc, f"{what} ({self.url}, model {self.model_name!r})") from exc

    def _version_arg(self) -> str:
        return "" if self.requested_version is None else str(self.requested_version)

    def ready_version(self) -> int:
        """The version requests go to: the requested one, else the newest the server has ready now (one call)."""
        if self.requested_version is not None:
            return self.requested_version
        metadata = self._call(
            "model metadata",
            self._client.get_model_metadata,
            self.model_name,
            "",
            client_timeout=self.metadata_timeout_s,
        )
        if not metadata.versions:
            raise ModelNotFound(f"{self.model_name!r} on {self.url} has no ready version")
        return max(int(v) for v in metadata.versions)

    def _describe(self) -> ServedModel:
        return self.describe_version(self.ready_version())

    def describe_version(self, version: int) -> ServedModel:
        """Batch limit and thresholds of ``version`` (its config, read once per version and kept)."""
        with self._lock:
            known = self._versions.get(version)
        if known is not None:
            return known
        config = self._call(
            "model config",
            self._client.get_model_config,
            self.model_name,
            str(version),
            client_timeout=self.metadata_timeout_s,
        ).config
        self._check_contract(config)
        if config.max_batch_size < 1:
            raise TritonInferenceError(
                f"{self.model_name!r}: max_batch_size {config.max_batch_size}; the GAMMA "
                "contract has a batch axis (re-export with deploy/export_triton.py)"
            )
        served = ServedModel(
            self.model_name, version, int(config.max_batch_size), self._read_thresholds(config, version)
        )
        with self._lock:
            self._versions[version] = served
        return served

    def _check_contract(self, config: Any) -> None:
        served = {t.name for t in (*config.input, *config.output)}
        expected = {spec.name for spec in (*wire.INPUTS, *wire.OUTPUTS)}
        if not expected <= served:
            raise TritonInferenceError(
                f"{self.model_name!r} serves {sorted(served)}, the wire contract needs "
                f"{sorted(expected)}: not a GAMMA export, or an old one"
            )

    def _read_thresholds(self, config: Any, version: int) -> VerdictThresholds:
        if self._thresholds_override is not None:
            return self._thresholds_override
        parameter = config.parameters.get(thresholds_param(version))
        if parameter is None:
            raise TritonInferenceError(
                f"{self.model_name!r} v{version}: config has no {thresholds_param(version)} "
                "parameter (export with deploy/export_triton.py, or pass thresholds=)"
            )
        return VerdictThresholds.from_dict(json.loads(parameter.string_value))

    def _infer_chunk(self, images: np.ndarray, version_arg: str | None = None) -> tuple[BatchOutputs, int]:
        """One request (to ``version_arg``, default the requested version or ``latest``); the outputs and the
        version the server says answered it (0 if it does not say). The request carries the batch's own shape
        (B, 3, H, W): the served dims are -1 for H and W."""
        request = grpcclient.InferInput(wire.IMAGES.name, list(images.shape), wire.IMAGES.triton_dtype)
        request.set_data_from_numpy(images)
        outputs = [grpcclient.InferRequestedOutput(spec.name) for spec in wire.OUTPUTS]
        result = self._call(
            "infer",
            self._client.infer,
            self.model_name,
            [request],
            model_version=self._version_arg() if version_arg is None else version_arg,
            outputs=outputs,
            client_timeout=self.timeout_s,
        )
        arrays = [result.as_numpy(spec.name) for spec in wire.OUTPUTS]
        if any(a is None for a in arrays):
            raise TritonInferenceError(f"{self.model_name!r}: response lacks one of {[s.name for s in wire.OUTPUTS]}")
        return outputs_from_wire(*arrays), int(result.get_response().model_version or 0)

    @staticmethod
    def _checked(images: np.ndarray) -> np.ndarray:
        """``images`` as a contiguous uint8 (B, 3, H, W) batch of one tile shape, B >= 1, H and W multiples of
        STRIDE in [MIN_TILE_SIDE, MAX_TILE_SIDE]; ValueError before anything is sent otherwise (the server would
        refuse it, or worse, run a shape the model was never exported for)."""
        images = np.ascontiguousarray(images)
        channels = wire.IMAGES.shape[0]
        if images.dtype != np.uint8 or images.ndim != 4 or images.shape[1] != channels or not len(images):
            raise ValueError(f"expected uint8 (B, {channels}, H, W) with B >= 1, got {images.dtype} {images.shape}")
        height, width = images.shape[2:]
        for side in (height, width):
            if side % STRIDE or not MIN_TILE_SIDE <= side <= MAX_TILE_SIDE:
                raise ValueError(
                    f"tile {height}x{width}: height and width must be multiples of {STRIDE} "
                    f"in [{MIN_TILE_SIDE}, {MAX_TILE_SIDE}] (got uint8 {images.shape})"
                )
        return images

    def infer(self, images: np.ndarray) -> BatchOutputs:
        """uint8 tiles (B, 3, H, W) of one shape -> outputs: probability (B,), masks (B, H/4, W/4); batches above
        the model's ``max_batch_size`` are split.

        Follows the server: use :meth:`pinned` when the outputs must all come from one known version.
        """
        images = self._checked(images)
        served = self.served
        parts = []
        for start in range(0, len(images), served.max_batch_size):
            outputs, version = self._infer_chunk(images[start : start + served.max_batch_size])
            parts.append(outputs)
            if version and version != served.version:
                with self._lock:  # the server moved to another version: its thresholds apply from now on
                    self._served = None
        return _joined(parts)

    def pinned(self) -> PinnedVersion:
        """This model at the version the server has ready now (asked once), for one chunk of work.

        Every request of the view names that version, so all its outputs come from it, and its
        ``model_version`` and ``thresholds`` are that version's. If the server unloads the version meanwhile,
        the view's requests fail with :class:`TritonUnavailable`: the chunk is retried, on the new version.
        """
        served = self.describe_version(self.ready_version())
        with self._lock:
            self._served = served  # the unpinned attributes follow what the server has ready too
        return PinnedVersion(self, served)

    def is_ready(self) -> bool:
        """Whether the server and this model are ready (never raises; for health checks)."""
        try:
            return bool(
                self._client.is_model_ready(
                    self.model_name, self._version_arg(), client_timeout=self.metadata_timeout_s
                )
            )
        except InferenceServerException:
            return False

    def close(self) -> None:
        self._client.close()


def _joined(parts: list[BatchOutputs]) -> BatchOutputs:
    if len(parts) == 1:
        return parts[0]
    return BatchOutputs(
        *(np.concatenate([getattr(p, f) for p in parts]) for f in ("probability", "ai_mask", "manipulation_mask"))
    )


class PinnedVersion:
    """One version of a :class:`TritonBackend`'s model, fixed (see :meth:`TritonBackend.pinned`): an
    :class:`~gamma.inference.InferenceBackend` whose ``model_version`` is the version every one of its responses
    reported, so what is recorded under that number is that version's output."""

    def __init__(self, backend: TritonBackend, served: ServedModel) -> None:
        self.backend = backend
        self.served = served
        self.model_name = served.name
        self.model_version = served.version
        self.thresholds = served.thresholds
        self.max_batch_size = served.max_batch_size

    def infer(self, images: np.ndarray) -> BatchOutputs:
        images = self.backend._checked(images)
        version = self.model_version
        parts = []
        for start in range(0, len(images), self.max_batch_size):
            try:
                outputs, reported = self.backend._infer_chunk(images[start : start + self.max_batch_size], str(version))
            except ModelNotFound as gone:
                if self.backend.requested_version is not None:
                    raise  # the configured version is not served: configuration, not a passing state
                raise TritonUnavailable(
                    f"{self.model_name!r} v{version} went away mid-chunk (the server moved to another version): "
                    f"retry on the version it serves now ({gone})"
                ) from gone
            if reported and reported != version:
                raise TritonInferenceError(f"{self.model_name!r}: asked for v{version}, the response says v{reported}")
            parts.append(outputs)
        return _joined(parts)
