"""Celery tasks: one message = one chunk of object keys of one scan, run through :func:`worker.pipeline.run_chunk`.

Retry policy, decided here once:
- transient service errors (S3 throttling or connection trouble, the database unreachable or locked, Triton
  unavailable) retry the whole chunk with exponential backoff and jitter, at most ``max_retries`` times;
- bad input never raises (the pipeline turns it into error results), so it is never retried;
- a backend that answers "no such model" or rejects the request is misconfigured: no retry;
- anything else is a bug and is not retried either.
When a task gives up, :meth:`ChunkTask.on_failure` records ``verdict=error`` for the chunk's images still without
a result (reason ``retries-exhausted``, ``time-limit``, ``backend-error`` or ``internal-error``), so the scan
completes and says why.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from billiard.einfo import ExceptionInfo
from celery import Task
from celery.exceptions import SoftTimeLimitExceeded, TimeLimitExceeded
from celery.signals import worker_init, worker_process_init, worker_process_shutdown
from sqlalchemy.exc import OperationalError

from deploy.triton_client import TritonError, TritonUnavailable
from worker import metrics
from worker.app import TASK_NAME, app, decode_refs, settings
from worker.db import make_engine, migrate, utcnow
from worker.pipeline import mark_failed, run_chunk
from worker.records import note_scan
from worker.runtime import Runtime
from worker.schedule import SUBMIT_TASK_NAME
from worker.storage import StorageUnavailable
from worker.submit import submit_scan

log = logging.getLogger(__name__)

# "A service is unavailable right now": the exceptions worth retrying a whole chunk for.
TRANSIENT_ERRORS: tuple[type[BaseException], ...] = (StorageUnavailable, OperationalError, TritonUnavailable)

_runtime: Runtime | None = None
_runtime_pid = 0  # the process that built (or was given) _runtime


def get_runtime() -> Runtime:
    """This process's runtime, built on first use (after the prefork fork, never before).

    A runtime inherited across ``fork()`` (built in a parent) is never used: its pooled database connections
    are the parent's sockets. It is dropped without closing them (``dispose(close=False)``) and built again.
    It does not migrate: the worker's main process did that once at start (:func:`_migrate`).
    """
    global _runtime, _runtime_pid
    if _runtime is not None and _runtime_pid != os.getpid():
        _runtime.engine.dispose(close=False)
        _runtime = None
    if _runtime is None:
        _runtime = Runtime.create(settings, migrate_db=False)
        _runtime_pid = os.getpid()
    return _runtime


def use_runtime(runtime: Runtime | None) -> None:
    """Make the tasks in this process use ``runtime`` (tests and benchmarks inject a backend this way)."""
    global _runtime, _runtime_pid
    _runtime, _runtime_pid = runtime, os.getpid()


@contextmanager
def failure_runtime() -> Iterator[Runtime]:
    """The runtime to record a failure with, without ever building this process's shared one.

    In a pool child (or the solo pool) that is the process's own runtime. The prefork *main* process also calls
    :meth:`ChunkTask.on_failure` (a hard time limit is handled there, after the child was killed): it gets a
    throwaway runtime, closed on exit, so no engine or client of the main process is inherited by the children
    it forks later.
    """
    if _runtime is not None and _runtime_pid == os.getpid():
        yield _runtime
        return
    runtime = Runtime.create(settings, migrate_db=False)
    try:
        yield runtime
    finally:
        runtime.close()


@worker_init.connect
def _migrate(**_: Any) -> None:
    """``alembic upgrade head`` once per worker, in the main process before the pool forks (children racing to
    create the same tables on SQLite would fail). The engine is disposed so no connection crosses the fork."""
    engine = make_engine(settings.db_url)
    try:
        migrate(engine)
    finally:
        engine.dispose()
    if settings.metrics_port:
        metrics.clear_multiprocess_dir()
        metrics.serve(settings.metrics_port, settings.metrics_host)
        log.info(
            "metrics on %s:%d/metrics (%s)", settings.metrics_host, settings.metrics_port, metrics.multiprocess_dir()
        )


@worker_process_init.connect
def _warm_up(**_: Any) -> None:
    """Load the model (or set up the Triton client) as the child starts, not inside its first task's time limit.

    A failure here is logged, not raised: the first task builds the runtime again and its retry policy applies.
    """
    try:
        get_runtime().detector  # noqa: B018  (the property builds the backend)
    except Exception:
        log.exception("could not prepare the runtime at worker start; the first task will try again")
        use_runtime(None)


@worker_process_shutdown.connect
def _close_runtime(pid: int | None = None, **_: Any) -> None:
    metrics.process_exited(pid or os.getpid())
    if _runtime is not None and _runtime_pid == os.getpid():
        _runtime.close()


def failure_reason(exc: BaseException) -> str:
    if isinstance(exc, TRANSIENT_ERRORS):
        return "retries-exhausted"
    if isinstance(exc, (SoftTimeLimitExceeded, TimeLimitExceeded)):  # soft: raised in the task; hard: child killed
        return "time-limit"
    if isinstance(exc, TritonError):  # wrong model name or version, request rejected: configuration, not a bug
        return "backend-error"
    return "internal-error"


def _redelivered(task: Task) -> bool:
    """Redis marks a message it restores (unacked when its worker died, or rejected with requeue) redelivered."""
    request = task.request
    delivery_info = getattr(request, "delivery_info", None) or {}
    headers = getattr(request, "headers", None) or {}
    return bool(delivery_info.get("redelivered") or headers.get("redelivered") or getattr(request, "redelivered", 0))


def _note(runtime: Runtime, scan_id: int, note: str) -> None:
    try:
        with runtime.sessions.begin() as session:
            note_scan(session, scan_id, note)
    except Exception:  # a note is never worth failing the chunk for
        log.exception("could not add a note to scan %s", scan_id)


class ChunkTask(Task):
    """Records the chunk's images as failed when the task gives up for good, and notes retries on the scan."""

    def on_retry(
        self, exc: BaseException, task_id: str, args: tuple[Any, ...], kwargs: dict[str, Any], einfo: ExceptionInfo
    ) -> None:
        scan_id = args[0] if args else None
        if scan_id is not None:
            retries = self.request.retries + 1
            _note(get_runtime(), scan_id, f"{utcnow():%Y-%m-%d %H:%M:%S} chunk retry {retries}/{self.max_retries} "
                  f"after {type(exc).__name__}: {str(exc)[:200]}")  # fmt: skip

    def on_failure(
        self, exc: BaseException, task_id: str, args: tuple[Any, ...], kwargs: dict[str, Any], einfo: ExceptionInfo
    ) -> None:
        scan_id, source_uri, items = args
        reason = failure_reason(exc)
        log.error("chunk %s of scan %s failed for good (%s): %r", task_id, scan_id, reason, exc)
        try:
            with failure_runtime() as runtime:
                mark_failed(runtime, source_uri, decode_refs(items), scan_id, reason, f"{type(exc).__name__}: {exc}")
        except Exception:  # the database itself may be what failed; the log line above is all we can leave
            log.exception("could not record the failure of chunk %s of scan %s", task_id, scan_id)


@app.task(
    bind=True,
    base=ChunkTask,
    name=TASK_NAME,
    autoretry_for=TRANSIENT_ERRORS,
    retry_backoff=True,
    retry_backoff_max=settings.retry_backoff_max_s,
    retry_jitter=True,
    max_retries=settings.max_retries,
)
def scan_chunk(
    self: Task, scan_id: int | None, source_uri: str, items: list[list[Any]], reuse: bool = True
) -> dict[str, int]:
    """Classify and record one chunk; returns counts (for logs: results live in the database).

    ``reuse`` (the default; ``gamma-submit --full`` sends False): objects unchanged since a result of this
    model version are not fetched, and known content under a new key is not inferred.
    """
    runtime = get_runtime()
    if scan_id is not None and _redelivered(self):
        log.warning("chunk %s of scan %s was redelivered: running it again", self.request.id, scan_id)
        _note(runtime, scan_id, f"{utcnow():%Y-%m-%d %H:%M:%S} chunk of {len(items)} redelivered "
              "(a worker process died or lost the broker mid-chunk); processed again")  # fmt: skip
    outcomes = run_chunk(runtime, source_uri, decode_refs(items), scan_id, reuse)
    return {
        "images": len(outcomes),
        "errors": sum(o.is_error for o in outcomes),
        "reused": sum(o.result_id is not None for o in outcomes),
    }


@app.task(name=SUBMIT_TASK_NAME, ignore_result=True)
def submit_scheduled(source: str, full: bool = False) -> dict[str, int]:
    """The beat task: submit a scan of ``source`` as ``gamma-submit`` does (list, skip known, queue chunks)."""
    submitted = submit_scan(settings, source, full=full)
    log.info("scheduled scan %d of %s: %d objects listed", submitted.scan_id, source, submitted.total)
    return {"scan_id": submitted.scan_id, "total": submitted.total}
