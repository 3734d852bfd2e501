"""Prometheus metrics of the scan workers: images by verdict, errors by reason, batch sizes, stage latencies.

    GAMMA_METRICS_PORT=9100 celery -A worker.app worker --pool=prefork -c 4 -Q gamma.scan
    curl -s 127.0.0.1:9100/metrics | grep ^gamma_

Prefork: the tasks run in child processes, each with its own memory, while one port can only be served by one
process. prometheus-client's multiprocess mode solves exactly that: every child writes its samples to mmap'ed
files in ``PROMETHEUS_MULTIPROC_DIR`` and the worker's main process serves their sum on ``GAMMA_METRICS_PORT``.
The directory must be set before ``prometheus_client`` is first imported, in every process: when
``GAMMA_METRICS_PORT`` is set and ``PROMETHEUS_MULTIPROC_DIR`` is not, importing this module creates one (the
children inherit the variable through the fork); a deployment may set its own (one per worker container, an
emptyDir/tmpfs), which the main process empties at start because stale files would add old counts.
Without ``GAMMA_METRICS_PORT`` (gamma-scan, tests) the metrics live in this process's default registry.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

METRICS_PORT_ENV = "GAMMA_METRICS_PORT"
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"

if os.environ.get(METRICS_PORT_ENV, "0") not in ("", "0") and not os.environ.get(MULTIPROC_ENV):
    os.environ[MULTIPROC_ENV] = tempfile.mkdtemp(prefix="gamma-metrics-")

from prometheus_client import (  # noqa: E402  (after the multiprocess directory is decided)
    CollectorRegistry,
    Counter,
    Histogram,
    multiprocess,
    start_http_server,
)

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128)

IMAGES = Counter("gamma_images", "Images recorded, by verdict (error included)", ["verdict"])
ERRORS = Counter("gamma_image_errors", "Images recorded with verdict=error, by reason", ["reason"])
REUSED = Counter("gamma_images_reused", "Images whose earlier result of the same model version was reused")
# Tiles, not images, since contract v2: one image is 1 to many tiles, batched across images (gamma.inference).
BATCH_SIZE = Histogram("gamma_inference_batch_size", "Tiles per inference call", buckets=BATCH_BUCKETS)
INFERENCE_SECONDS = Histogram("gamma_inference_seconds", "Seconds per inference call (batch)", buckets=LATENCY_BUCKETS)
PREPROCESS_SECONDS = Histogram(
    "gamma_preprocess_seconds", "Seconds of decoding and preprocessing per image (amortised)", buckets=LATENCY_BUCKETS
)
FETCH_SECONDS = Histogram("gamma_fetch_seconds", "Seconds to fetch one object", buckets=LATENCY_BUCKETS)


def multiprocess_dir() -> Path | None:
    value = os.environ.get(MULTIPROC_ENV)
    return Path(value) if value else None


def clear_multiprocess_dir() -> None:
    """Remove stale sample files (the main process, before the pool forks)."""
    directory = multiprocess_dir()
    if directory is not None and directory.is_dir():
        for stale in directory.glob("*.db"):
            stale.unlink(missing_ok=True)


def serve(port: int, host: str = "0.0.0.0") -> Any:
    """Serve ``/metrics`` on ``host:port`` from this process; with multiprocess mode, the sum of all children.

    Returns prometheus-client's ``(server, thread)``; ``server.shutdown()`` stops it.
    """
    if multiprocess_dir() is not None:
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
        return start_http_server(port, host, registry=registry)
    return start_http_server(port, host)


def process_exited(pid: int) -> None:
    if multiprocess_dir() is not None:
        multiprocess.mark_process_dead(pid)


def record(outcomes: Any) -> None:
    """Count recorded outcomes (called after their transaction committed)."""
    for outcome in outcomes:
        IMAGES.labels(outcome.verdict).inc()
        if outcome.is_error:
            ERRORS.labels(outcome.error_reason or "unknown").inc()
        if outcome.result_id is not None:
            REUSED.inc()
