"""Celery tasks: one message = one chunk of object keys of one scan, run through :func:`worker.pipeline.run_chunk`.

Retry policy, decided here once:
- transient service errors (S3 throttling or connection trouble, the database unreachable or locked, Triton
  unavailable) retry the whole chunk with exponential backoff and equal jitter (:func:`retry_countdown`), at most
  ``max_retries`` times (by default minutes of outage: :func:`retry_window_s`);
- bad input never raises (the pipeline turns it into error results), so it is never retried;
- a backend that answers "no such model" or rejects the request is misconfigured: no retry;
- anything else is a bug and is not retried either.
When a task gives up, the chunk's images still without a result get ``verdict=error`` (reason
``retries-exhausted`` from the task itself; ``time-limit``, ``backend-error`` or ``internal-error`` from
:meth:`ChunkTask.on_failure`), so the scan completes and says why. A chunk is never acknowledged without its
rows: if the failure cannot be recorded either (the database is what is down), the chunk is retried or its
message requeued instead.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import random
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from billiard.einfo import ExceptionInfo
from celery import Task
from celery.exceptions import Reject, SoftTimeLimitExceeded, TimeLimitExceeded
from celery.signals import worker_init, worker_process_init, worker_process_shutdown
from sqlalchemy.exc import OperationalError

from deploy.triton_client import TritonError, TritonUnavailable
from gamma.preprocess import warn_if_no_heif
from gamma.tiling import Coverage
from worker import metrics
from worker.app import TASK_NAME, app, decode_refs, settings
from worker.db import Scan, make_engine, migrate, utcnow
from worker.deadletter import database_identity, dead_letter, is_relative_sqlite
from worker.pipeline import mark_failed, run_chunk
from worker.reasons import Reason
from worker.records import note_scan
from worker.runtime import ModelVersionChanged, Runtime
from worker.schedule import SUBMIT_TASK_NAME, submit_key
from worker.settings import Settings
from worker.storage import ObjectRef, StorageUnavailable
from worker.submit import submit_scan

log = logging.getLogger(__name__)

# "A service is unavailable right now": the exceptions worth retrying a whole chunk for (a model version that
# changed mid-chunk too: the retry runs the whole chunk on the new one).
TRANSIENT_ERRORS: tuple[type[BaseException], ...] = (
    StorageUnavailable,
    OperationalError,
    TritonUnavailable,
    ModelVersionChanged,
)

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
    log.info("recording in database %s", database_identity(settings.db_url))
    if is_relative_sqlite(settings.db_url):
        log.warning("GAMMA_DB_URL is a relative SQLite path: this worker writes %s; a gamma-submit started in "
                    "another directory records its scans elsewhere, and their chunks are dead-lettered here",
                    database_identity(settings.db_url))  # fmt: skip
    engine = make_engine(settings.db_url)
    try:
        migrate(engine)
    finally:
        engine.dispose()
    warn_if_no_heif()  # once, in the main process: HEIF/HEIC uploads would be recorded unsupported-format
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


def failure_reason(exc: BaseException) -> Reason:
    if isinstance(exc, TRANSIENT_ERRORS):
        return Reason.RETRIES_EXHAUSTED
    if isinstance(exc, (SoftTimeLimitExceeded, TimeLimitExceeded)):  # soft: raised in the task; hard: child killed
        return Reason.TIME_LIMIT
    if isinstance(exc, TritonError):  # wrong model name or version, request rejected: configuration, not a bug
        return Reason.BACKEND_ERROR
    return Reason.INTERNAL_ERROR


def retry_countdown(settings: Settings, retries: int, rng: random.Random | None = None) -> float:
    """Seconds before retry ``retries + 1``: ``retry_backoff_s * 2**retries`` capped at ``retry_backoff_max_s``,
    with equal jitter (half of it plus a random part of the other half): workers hit by one outage spread out,
    and the total window is never less than half the nominal one (celery's full jitter can make it ~0)."""
    nominal = _nominal_backoff(settings, retries)
    return nominal / 2 + (rng or random).uniform(0, nominal / 2)


def _nominal_backoff(settings: Settings, retries: int) -> int:
    return min(settings.retry_backoff_max_s, settings.retry_backoff_s * 2 ** min(retries, 32))


def retry_window_s(settings: Settings) -> tuple[float, float]:
    """(shortest, longest) outage the retries of one chunk ride out before its images are marked failed."""
    nominal = sum(_nominal_backoff(settings, n) for n in range(settings.max_retries))
    return nominal / 2, float(nominal)


class ChunkGaveUp(Exception):
    """The task itself gave the chunk's images error results; :meth:`ChunkTask.on_failure` has nothing to do."""


def _redelivered(task: Task) -> bool:
    """Redis marks a message it restores (unacked when its worker died, or rejected with requeue) redelivered."""
    request = task.request
    delivery_info = getattr(request, "delivery_info", None) or {}
    headers = getattr(request, "headers", None) or {}
    return bool(delivery_info.get("redelivered") or headers.get("redelivered") or getattr(request, "redelivered", 0))


class DeliveryCounter:
    """How many times each message was started, counted in the broker's Redis (``INCR``, expiring keys).

    A message is a (task id, retry number) pair: a retry is a new message, a redelivery (the process running
    it died, or the worker lost the broker) is the same one again. Counting happens as the task starts, before
    anything can crash, so a chunk that kills its process every time is recognised on its next delivery
    (``max_deliveries``) and its images are marked ``worker-lost`` instead. A broker that is not Redis, or
    Redis unreachable for the counter, means "not counted" (``None``): the chunk then simply runs.
    """

    PREFIX = "gamma:deliveries:"
    TTL_S = 7 * 24 * 3600  # a message redelivered later than this starts counting again

    def __init__(self, broker_url: str) -> None:
        self._client: Any = None
        if broker_url.startswith(("redis://", "rediss://", "unix://")):
            import redis

            self._client = redis.Redis.from_url(broker_url, socket_timeout=5, socket_connect_timeout=5)

    def _key(self, task_id: str, retries: int) -> str:
        return f"{self.PREFIX}{task_id}:{retries}"

    def started(self, task_id: str, retries: int) -> int | None:
        if self._client is None:
            return None
        try:
            pipe = self._client.pipeline()
            pipe.incr(self._key(task_id, retries))
            pipe.expire(self._key(task_id, retries), self.TTL_S)
            count, _ = pipe.execute()
            return int(count)
        except Exception as exc:  # never worth failing a chunk for (and the broker URL is never logged)
            log.warning("could not count the delivery of %s (%s): not counted", task_id, type(exc).__name__)
            return None

    def forget(self, task_id: str, retries: int) -> None:
        if self._client is None:
            return
        try:
            self._client.delete(self._key(task_id, retries))
        except Exception as exc:  # the key expires anyway
            log.warning("could not clear the delivery count of %s (%s)", task_id, type(exc).__name__)


_counter: tuple[int, DeliveryCounter] | None = None


def delivery_counter() -> DeliveryCounter:
    """This process's counter (built after the fork: a Redis connection is never shared with a parent)."""
    global _counter
    if _counter is None or _counter[0] != os.getpid():
        _counter = (os.getpid(), DeliveryCounter(settings.broker_url))
    return _counter[1]


def _stamp() -> str:
    return f"{utcnow():%Y-%m-%d %H:%M:%S}"


def _what(exc: BaseException) -> str:
    """``Type: first line of the message`` (SQLAlchemy adds the statement and a help link on further lines)."""
    lines = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {lines[0][:160] if lines else ''}"


def _coverage(kwargs: dict[str, Any] | None) -> str | None:
    """The coverage mode a chunk's message names (its scan's), to record its failures under. None in a message
    queued before contract v2, or one naming no mode (its chunk failed for that): this worker's GAMMA_COVERAGE
    then, since recording the failure must not fail the same way (the chunk would be requeued forever)."""
    value = (kwargs or {}).get("coverage")
    return value if value in tuple(Coverage) else None


MAX_CARRIED_NOTES = 2  # per chunk: the first and the latest (a scan's detail is bounded: keep an outage short)


def _write_notes(runtime: Runtime, scan_id: int | None, notes: list[str]) -> list[str]:
    """Append ``notes`` to the scan's detail; returns those that could not be written (the database is down),
    bounded, for the next attempt to carry (they travel in the retry message)."""
    if scan_id is None or not notes:
        return []
    try:
        with runtime.sessions.begin() as session:
            for note in notes:
                note_scan(session, scan_id, note)
    except Exception as exc:  # a note is never worth failing the chunk for
        log.warning("could not add %d note(s) to scan %s (%s); the next attempt carries them", len(notes), scan_id, exc)
        if len(notes) > MAX_CARRIED_NOTES:
            notes = [notes[0], notes[-1]]
        return notes
    return []


def _retry(
    task: Task, exc: BaseException, countdown: float, notes: list[str], beyond_budget: bool = False, lost: int = 0
) -> None:
    """Send the chunk again in ``countdown`` s (a new message: the old one is then acked); always raises.

    ``beyond_budget``: the retries are spent but the failure could not be recorded either, so the chunk must not
    be dropped: retry anyway. If publishing the retry fails (the broker is down), the message is requeued
    instead of celery's default (rejected *without* requeue: dropped).
    """
    request = task.request
    kwargs = {**(request.kwargs or {}), "notes": notes}
    if lost:
        kwargs["lost"] = lost
    try:
        max_retries = request.retries + 1 if beyond_budget else None
        raise task.retry(args=request.args, kwargs=kwargs, exc=exc, countdown=countdown, max_retries=max_retries)
    except Reject as rejected:
        if rejected.requeue:
            raise
        log.error("could not send the retry of chunk %s (%s): requeueing it", request.id, rejected.reason)
        raise Reject(str(rejected.reason), requeue=True) from exc
    finally:
        task.__dict__.pop("override_max_retries", None)  # retry() leaves it on the (shared) task object


def _retry_or_give_up(
    task: Task,
    runtime: Runtime,
    scan_id: int | None,
    source_uri: str,
    refs: list[ObjectRef],
    exc: Exception,
    notes: list[str],
) -> None:
    """A transient error: retry with backoff while the budget lasts, then mark the chunk's pending images
    ``retries-exhausted``. If even that fails (the database is what is down), retry again after the longest
    backoff, for as long as it takes: a chunk is never acked without its rows. Always raises."""
    retries, budget = task.request.retries, task.max_retries
    if retries < budget:
        countdown = retry_countdown(settings, retries)
        log.warning("chunk %s of scan %s: retry %d/%d in %.1f s after %r", task.request.id, scan_id, retries + 1,
                    budget, countdown, exc)  # fmt: skip
        note = f"{_stamp()} chunk of {len(refs)} retry {retries + 1}/{budget} in {countdown:.0f} s after {_what(exc)}"
        _retry(task, exc, countdown, _write_notes(runtime, scan_id, [*notes, note]))
    try:
        mark_failed(
            runtime, source_uri, refs, scan_id, Reason.RETRIES_EXHAUSTED, _what(exc), _coverage(task.request.kwargs)
        )
    except LookupError as record_exc:  # no such scan here: retrying cannot help
        _dead_letter(task, scan_id, source_uri, task.request.args[2], f"{_what(exc)}; not recorded: {record_exc}")
    except Exception as record_exc:
        countdown = float(settings.retry_backoff_max_s)
        log.error("chunk %s of scan %s: retries exhausted (%r) and recording that failed too (%r): trying the chunk "
                  "again in %.0f s", task.request.id, scan_id, exc, record_exc, countdown)  # fmt: skip
        note = (f"{_stamp()} chunk of {len(refs)}: {retries} retries exhausted ({_what(exc)}) and the failure could "
                f"not be recorded ({_what(record_exc)}); the chunk runs again in {countdown:.0f} s")  # fmt: skip
        _retry(task, exc, countdown, [*notes, note], beyond_budget=True)
    note = f"{_stamp()} chunk of {len(refs)} failed for good after {retries} retries: {_what(exc)}"
    _write_notes(runtime, scan_id, [*notes, note])
    raise ChunkGaveUp(f"{Reason.RETRIES_EXHAUSTED}: {_what(exc)}") from exc


def _mark_worker_lost(
    task: Task,
    runtime: Runtime,
    scan_id: int | None,
    source_uri: str,
    refs: list[ObjectRef],
    lost: int,
    notes: list[str],
) -> None:
    """The chunk killed its worker process ``lost`` times: give its pending images ``worker-lost``. Always raises.

    If the database refuses that, retry (after the longest backoff) with ``lost`` in the message, so the next
    attempt goes straight to recording instead of running the chunk, and killing a process, again."""
    what = (f"its worker process died {lost} times while running it (SIGKILL, a crash in a decoder, the OOM "
            "killer?)")  # fmt: skip
    log.error("chunk %s of scan %s: %s; marking its images worker-lost", task.request.id, scan_id, what)
    try:
        mark_failed(runtime, source_uri, refs, scan_id, Reason.WORKER_LOST, what, _coverage(task.request.kwargs))
    except LookupError as record_exc:  # no such scan here: retrying cannot help
        _dead_letter(task, scan_id, source_uri, task.request.args[2], f"{what}; not recorded: {record_exc}")
    except Exception as record_exc:
        countdown = float(settings.retry_backoff_max_s)
        note = (f"{_stamp()} chunk of {len(refs)}: {what}; marking it worker-lost failed ({_what(record_exc)}); "
                f"trying again in {countdown:.0f} s")  # fmt: skip
        _retry(task, record_exc, countdown, [*notes, note], beyond_budget=True, lost=lost)
    _write_notes(runtime, scan_id, [*notes, f"{_stamp()} chunk of {len(refs)}: {what}; its images are worker-lost"])
    raise ChunkGaveUp(f"{Reason.WORKER_LOST}: {what}")


class ChunkDeadLettered(ChunkGaveUp):
    """The chunk cannot be recorded by this worker (its scan is not in this worker's database): it was
    dead-lettered (:mod:`worker.deadletter`) and its message is acknowledged."""


def scan_mismatch(runtime: Runtime, scan_id: int | None, source_uri: str, created_at: str = "") -> str:
    """Why this worker's database cannot hold the results of a chunk of scan ``scan_id`` ("" if it can).

    The scan must exist, be of ``source_uri`` and, when the message says when the scan was created
    (``created_at``, sent by submitters since dead-lettering exists), have been created then: a scan 1 of the
    same folder in a *different* database (two relative SQLite URLs) is not taken for the submitter's.
    Raises what the database raises (an outage is transient: the chunk is retried).
    """
    if scan_id is None:
        return ""
    with runtime.sessions() as session:
        row = session.get(Scan, scan_id)
        if row is None:
            return f"no scan {scan_id} in this worker's database {database_identity(runtime.settings.db_url)}"
        if row.source_uri != source_uri or (created_at and row.created_at.isoformat() != created_at):
            return (f"scan {scan_id} in this worker's database {database_identity(runtime.settings.db_url)} is "
                    f"another scan ({row.source_uri}, created {row.created_at:%Y-%m-%d %H:%M:%S})")  # fmt: skip
    return ""


def _dead_letter(
    task: Task, scan_id: int | None, source_uri: str, items: list[Any], why: str, task_id: str | None = None
) -> None:
    """Keep the chunk in the dead-letter list and log it; then acknowledge it (raises :class:`ChunkDeadLettered`)."""
    request = task.request
    task_id = task_id or request.id
    kept = dead_letter(
        settings.broker_url,
        settings.queue,
        {
            "at": _stamp(),
            "task_id": task_id,
            "scan_id": scan_id,
            "source_uri": source_uri,
            "images": len(items),
            "reason": why,
            "database": database_identity(settings.db_url),
            "args": [scan_id, source_uri, items],
            "kwargs": {k: v for k, v in (request.kwargs or {}).items() if k != "notes"},
        },
    )
    log.error("chunk %s of scan %s (%d images) dead-lettered%s: %s", task_id, scan_id, len(items),
              f" in {settings.queue}'s dead-letter list" if kept else " (only in this log)", why)  # fmt: skip
    raise ChunkDeadLettered(why)


def _refuse_unrecordable(
    task: Task, deliveries: int | None, scan_id: int | None, source_uri: str, items: list[Any], why: str
) -> None:
    """A chunk this worker cannot record (:func:`scan_mismatch`), never inferred. Always raises.

    Requeued (another worker, on the right database, may take it) while its deliveries are below
    ``max_deliveries``; then, or at once when deliveries are not counted (the broker is not Redis), dead-lettered
    and acknowledged: never requeued forever."""
    request = task.request
    if deliveries is not None and deliveries < settings.max_deliveries:
        log.warning("chunk %s of scan %s: %s; requeued without inferring (delivery %d of at most %d)", request.id,
                    scan_id, why, deliveries, settings.max_deliveries)  # fmt: skip
        raise Reject(why, requeue=True)
    if deliveries is not None:
        delivery_counter().forget(request.id, request.retries)
    _dead_letter(task, scan_id, source_uri, items, why)


class ChunkTask(Task):
    """Records the chunk's images as failed when the task fails for good outside its own retry policy."""

    def on_failure(
        self, exc: BaseException, task_id: str, args: tuple[Any, ...], kwargs: dict[str, Any], einfo: ExceptionInfo
    ) -> None:
        """Soft time limit or a bug (in the child), hard time limit (in the main process): mark the chunk failed.

        If that cannot be written (the database is down), the message is not acked: a pool child requeues it
        (``Reject``); the main process, which must not raise here, sends the chunk again after the longest backoff.
        """
        if isinstance(exc, ChunkGaveUp):  # already recorded by the task
            return
        scan_id, source_uri, items = args[0], args[1], args[2]
        reason = failure_reason(exc)
        log.error("chunk %s of scan %s failed for good (%s): %r", task_id, scan_id, reason, exc)
        try:
            with failure_runtime() as runtime:
                mark_failed(runtime, source_uri, decode_refs(items), scan_id, reason, _what(exc), _coverage(kwargs))
                _write_notes(runtime, scan_id, [f"{_stamp()} chunk of {len(items)} failed ({reason}): {_what(exc)}"])
        except LookupError as record_exc:  # the scan is not in this worker's database: requeueing cannot help
            try:
                why = f"{reason} ({_what(exc)}); not recorded: {record_exc}"
                _dead_letter(self, scan_id, source_uri, items, why, task_id=task_id)
            except ChunkDeadLettered:
                return
        except Exception as record_exc:
            if isinstance(exc, TimeLimitExceeded):  # celery's timeout handler in the main process: it acks next
                log.exception("could not record the failure of chunk %s of scan %s: sending it again", task_id, scan_id)
                try:
                    self.apply_async(args=args, kwargs=kwargs, task_id=task_id, countdown=settings.retry_backoff_max_s)
                except Exception:  # the broker too: nothing is left to try from here
                    log.exception("could not send chunk %s of scan %s again", task_id, scan_id)
                return
            log.exception("could not record the failure of chunk %s of scan %s: requeueing it", task_id, scan_id)
            raise Reject(f"recording the failure failed: {_what(record_exc)}", requeue=True) from record_exc


@app.task(bind=True, base=ChunkTask, name=TASK_NAME, max_retries=settings.max_retries)
def scan_chunk(
    self: Task,
    scan_id: int | None,
    source_uri: str,
    items: list[list[Any]],
    reuse: bool = True,
    notes: list[str] | None = None,
    lost: int = 0,
    scan_created_at: str = "",
    coverage: str = "",
) -> dict[str, int]:
    """Classify and record one chunk; returns counts (for logs: results live in the database).

    ``reuse`` (the default; ``gamma-submit --full`` sends False): objects unchanged since a result of this
    model version are not fetched, and known content under a new key is not inferred. ``notes``: lines for the
    scan's detail that an earlier attempt could not write (the database was down); written as soon as it can be.
    ``lost``: the chunk already killed its worker process this many times; only record its images worker-lost.
    ``scan_created_at``: when the submitter created the scan (ISO), so a scan of the same id and source in
    another database is not mistaken for it (:func:`scan_mismatch`). A chunk this worker cannot record is never
    inferred: it is requeued, then dead-lettered after ``max_deliveries`` (:func:`_refuse_unrecordable`).
    ``coverage``: the scan's coverage mode (:mod:`gamma.tiling`), so every chunk of a scan sees the same tiles
    whatever this worker's ``GAMMA_COVERAGE``; "" (a message from before contract v2): the worker's.
    """
    request = self.request
    deliveries = None if request.is_eager else delivery_counter().started(request.id, request.retries)
    runtime = get_runtime()
    refs = decode_refs(items)
    pending = list(notes or [])
    try:
        mismatch = scan_mismatch(runtime, scan_id, source_uri, scan_created_at)
    except TRANSIENT_ERRORS as exc:
        _retry_or_give_up(self, runtime, scan_id, source_uri, refs, exc, pending)
        raise  # not reached
    if mismatch:
        _refuse_unrecordable(self, deliveries, scan_id, source_uri, items, mismatch)
    if lost or (deliveries is not None and deliveries > settings.max_deliveries):
        try:
            _mark_worker_lost(self, runtime, scan_id, source_uri, refs, lost or (deliveries or 1) - 1, pending)
        finally:
            if deliveries is not None:
                delivery_counter().forget(request.id, request.retries)
    if scan_id is not None and (_redelivered(self) or (deliveries or 0) > 1):
        log.warning("chunk %s of scan %s was redelivered: running it again", request.id, scan_id)
        count = f"delivery {deliveries} of at most {settings.max_deliveries}; " if deliveries else ""
        pending.append(f"{_stamp()} chunk of {len(items)} redelivered ({count}a worker process died or lost the "
                       "broker mid-chunk); processed again")  # fmt: skip
    pending = _write_notes(runtime, scan_id, pending)
    try:
        try:
            outcomes = run_chunk(runtime, source_uri, refs, scan_id, reuse, coverage or None)
        except TRANSIENT_ERRORS as exc:
            _retry_or_give_up(self, runtime, scan_id, source_uri, refs, exc, pending)
            raise  # not reached: the line above always raises
    except Reject:  # the same message comes back: it still counts as that message's delivery
        raise
    except BaseException:
        if deliveries is not None:
            delivery_counter().forget(request.id, request.retries)
        raise
    if deliveries is not None:
        delivery_counter().forget(request.id, request.retries)
    _write_notes(runtime, scan_id, pending)
    return {
        "images": len(outcomes),
        "errors": sum(o.is_error for o in outcomes),
        "reused": sum(o.result_id is not None for o in outcomes),
    }


# Past this share of its soft time limit, the beat task's listing stops waiting for room in the queue, so that
# it ends (the rest of a big prefix queued at once) instead of being cut off half-listed.
SUBMIT_WAIT_SHARE = 0.75


@app.task(
    name=SUBMIT_TASK_NAME,
    ignore_result=True,
    acks_late=True,  # a worker dying mid-listing gives the message back: the same scan is listed again
    reject_on_worker_lost=True,
    soft_time_limit=settings.submit_soft_time_limit_s,
    time_limit=settings.submit_time_limit_s,
)
def submit_scheduled(
    source: str, full: bool = False, entry: str = "", fired_at: str = "", coverage: str = ""
) -> dict[str, int]:
    """The beat task: submit a scan of ``source`` as ``gamma-submit`` does (list, skip known, queue chunks), under
    the entry's ``coverage`` if it names one, else this worker's ``GAMMA_COVERAGE``.

    Idempotent per (``entry``, ``fired_at``), both in the message beat sends (:mod:`worker.schedule`): a second
    delivery of it finds the scan the first one claimed. Without ``fired_at`` every call is a new scan.
    """
    key = submit_key(entry or source, fired_at) if fired_at else None
    budget = SUBMIT_WAIT_SHARE * settings.submit_soft_time_limit_s
    scan_settings = dataclasses.replace(settings, coverage=coverage) if coverage else settings
    submitted = submit_scan(scan_settings, source, full=full, submit_key=key, time_budget_s=budget)
    log.info("scheduled scan %d of %s (%s): %d objects listed%s", submitted.scan_id, source, key, submitted.total,
             " (there already)" if submitted.existing else "")  # fmt: skip
    return {"scan_id": submitted.scan_id, "total": submitted.total, "existing": int(submitted.existing)}
