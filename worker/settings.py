"""Worker settings: every URL, bucket and knob the CLIs and the Celery tasks need, read from ``GAMMA_*`` env vars.

One frozen dataclass, one prefix. The same object configures ``gamma-submit``, the Celery workers and
``gamma-scan``, so a deployment sets environment variables once (e.g. in a compose file) and every process
agrees on the database, the broker and where masks go. Validation happens here, at start-up, because a wrong
combination (a visibility timeout shorter than the hard time limit) otherwise shows up hours later as tasks
running twice.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import TYPE_CHECKING, Any

from gamma.tiling import DEFAULT_COVERAGE, parse_coverage  # numpy only (loaded by these processes anyway)

if TYPE_CHECKING:
    from gamma.preprocess import PreprocessLimits

ENV_PREFIX = "GAMMA_"
# Equal to gamma.weights.DEFAULT_MODEL (a unit test checks it). Not imported from there: gamma.weights loads
# torch, which would add ~1.5 CPU seconds to every gamma-submit, a process that never runs the model.
DEFAULT_MODEL = "gamma-local-effl0"
MAX_PRESIGN_S = 7 * 24 * 3600  # the longest a SigV4 presigned URL may be valid


@dataclass(frozen=True)
class Settings:
    """Configuration for the scan pipeline; field ``foo_bar`` is read from ``GAMMA_FOO_BAR``.

    ``model`` is a checkpoint name or folder in-process, or the served model's name on Triton (the exporter
    serves a checkpoint under its own name). ``triton_url`` (``host:grpc_port``) empty means the worker holds
    the PyTorch model in-process (the embedded mode ``gamma-scan`` always uses). ``masks_url`` is
    ``s3://bucket/prefix`` or a local folder. ``visibility_timeout_s`` is Redis' redelivery clock for
    unacknowledged (acks-late) tasks: it must exceed the hard time limit (and the longest retry countdown, which
    also waits unacknowledged), or a slow but healthy task is handed to a second worker while the first runs it.
    ``coverage`` (``centre|five|full``, :mod:`gamma.tiling`) is the default tiling of new scans; a scan records
    its own mode and sends it with every chunk, so workers with another default still judge it under its mode.
    """

    db_url: str = "sqlite:///gamma.db"
    broker_url: str = "redis://127.0.0.1:6379/0"
    queue: str = "gamma.scan"
    triton_url: str = ""
    triton_timeout_s: int = 30
    s3_endpoint_url: str = ""
    s3_region: str = "us-east-1"
    masks_url: str = "masks"
    masks_presign: int = 0  # > 0: s3:// mask URLs are shown as presigned GET URLs valid this many seconds
    model: str = DEFAULT_MODEL
    model_version: int = 0  # 0: what Triton serves / the checkpoint's metadata.json (rescans skip per version)
    coverage: str = DEFAULT_COVERAGE.value
    chunk_size: int = 32
    # gamma-submit and the beat task wait while the broker queue holds this many chunks (0: never wait): a
    # million-key listing keeps at most this many messages in Redis, not ~31,000 (worker.scans.Backpressure).
    max_queued_chunks: int = 1000
    fetch_workers: int = 8
    preprocess_workers: int = 2
    torch_threads: int = 0  # 0: leave torch's default
    max_pixels: int = 0  # 0: the preprocessing contract's default limit
    max_bytes: int = 0
    soft_time_limit_s: int = 300
    time_limit_s: int = 360
    # The beat task's listing (worker.schedule): acks late like a chunk, so its limits stay under the visibility
    # timeout (a listing still running is never handed to a second worker); past 3/4 of the soft limit, or after
    # 5 minutes of a full queue nobody drains, it stops waiting for room in the queue (worker.scans.Backpressure).
    submit_soft_time_limit_s: int = 3000
    submit_time_limit_s: int = 3300
    visibility_timeout_s: int = 3600
    # Transient errors (S3, Triton, the database unreachable) retry the chunk after retry_backoff_s * 2**n
    # seconds, capped at retry_backoff_max_s, with equal jitter (half to all of it): by default 2, 4, .. 64, then
    # 120 s, 12 times: an outage of at least ~7 minutes (14 at most) before a chunk's images are marked failed.
    max_retries: int = 12
    retry_backoff_s: int = 2
    retry_backoff_max_s: int = 120
    # A chunk whose worker process dies under it (SIGKILL, segfault, OOM) goes back to the queue; after this many
    # starts of the same message its images are marked "worker-lost" instead of killing yet another process.
    max_deliveries: int = 3
    metrics_port: int = 0  # 0: no /metrics endpoint (worker.metrics)
    metrics_host: str = "0.0.0.0"
    schedule: str = ""  # beat: inline JSON or a TOML/JSON file of {source, cron} (worker.schedule)

    def __post_init__(self) -> None:
        # Normalised to the mode's name ("FULL " -> "full"): it is compared with stored rows' coverage, and a bad
        # name fails here, at start-up, with the choices (one line in the CLIs) instead of in the first chunk.
        object.__setattr__(self, "coverage", parse_coverage(self.coverage).value)
        if self.chunk_size < 1:
            raise ValueError(f"chunk_size={self.chunk_size} must be >= 1")
        if self.max_queued_chunks < 0:
            raise ValueError(f"max_queued_chunks={self.max_queued_chunks} must be >= 0 (0: no bound)")
        if not 0 <= self.masks_presign <= MAX_PRESIGN_S:
            raise ValueError(f"masks_presign={self.masks_presign} must be 0 (off) to {MAX_PRESIGN_S} s (SigV4's limit)")
        if not 0 < self.soft_time_limit_s < self.time_limit_s:
            raise ValueError("need 0 < soft_time_limit_s < time_limit_s (the soft limit lets a task mark its images)")
        if not 0 < self.submit_soft_time_limit_s < self.submit_time_limit_s < self.visibility_timeout_s:
            raise ValueError(
                "need 0 < submit_soft_time_limit_s < submit_time_limit_s < visibility_timeout_s: Redis would hand a "
                "listing still running to a second worker"
            )
        if self.max_retries < 0 or not 0 < self.retry_backoff_s <= self.retry_backoff_max_s:
            raise ValueError("need max_retries >= 0 and 0 < retry_backoff_s <= retry_backoff_max_s")
        if self.max_deliveries < 1:
            raise ValueError(f"max_deliveries={self.max_deliveries} must be >= 1")
        if self.visibility_timeout_s <= self.time_limit_s + self.retry_backoff_max_s:
            raise ValueError(
                f"visibility_timeout_s={self.visibility_timeout_s} must exceed time_limit_s + retry_backoff_max_s "
                f"({self.time_limit_s + self.retry_backoff_max_s}): Redis redelivers unacked tasks after it"
            )

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
        """Defaults, then ``GAMMA_*`` variables, then explicit ``overrides`` (CLI options) that are not None."""
        env = os.environ if env is None else env
        values: dict[str, Any] = {}
        for field in fields(cls):
            raw = env.get(ENV_PREFIX + field.name.upper())
            if raw is not None and raw != "":
                values[field.name] = int(raw) if field.type in ("int", int) else raw
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)

    def replace(self, **changes: Any) -> Settings:
        return dataclasses.replace(self, **changes)

    def preprocess_limits(self) -> PreprocessLimits:
        """:data:`gamma.preprocess.DEFAULT_LIMITS` with ``max_pixels``/``max_bytes`` where these are set (not 0):
        the one byte limit for the scan pipeline and for anything else that reads originals (the HTML report)."""
        from gamma.preprocess import DEFAULT_LIMITS  # Pillow and numpy: only for the processes that read images

        changes = {name: getattr(self, name) for name in ("max_pixels", "max_bytes") if getattr(self, name)}
        return dataclasses.replace(DEFAULT_LIMITS, **changes) if changes else DEFAULT_LIMITS

    def as_env(self) -> dict[str, str]:
        """The ``GAMMA_*`` variables that reproduce these settings in a child process (a worker)."""
        return {ENV_PREFIX + f.name.upper(): str(getattr(self, f.name)) for f in fields(self)}
