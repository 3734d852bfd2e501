"""The Celery task (run eagerly, no broker): it runs the pipeline, retries outages, and records giving up."""

from __future__ import annotations

import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from celery.exceptions import Reject, SoftTimeLimitExceeded, TimeLimitExceeded
from sqlalchemy import select
from sqlalchemy.exc import OperationalError

from deploy.triton_client import ModelNotFound, TritonUnavailable
from gamma.inference import BatchOutputs, TorchBackend
from gamma.verdict import VerdictThresholds
from gamma.weights import Checkpoint
from tests.fixtures.fake_backend import CountingBackend
from worker import tasks
from worker.app import app, decode_refs, encode_refs
from worker.db import Result, ScanItem
from worker.records import scan_summary
from worker.runtime import Runtime
from worker.scans import list_into_scan, open_scan
from worker.settings import Settings
from worker.storage import LocalSource, ObjectRef


class FailingBackend:
    """A backend whose every call raises ``error`` (an outage, or a bug)."""

    model_name = "gamma-test"
    model_version = 1
    thresholds = VerdictThresholds()
    max_batch_size = 4

    def __init__(self, error: Exception) -> None:
        self.error = error
        self.calls = 0

    def infer(self, images: np.ndarray) -> BatchOutputs:
        self.calls += 1
        raise self.error


@pytest.fixture(autouse=True)
def eager() -> Iterator[None]:
    app.conf.task_always_eager = True
    yield
    app.conf.task_always_eager = False
    tasks.use_runtime(None)


def _scan(tmp_path: Path, backend: object, count: int = 3) -> tuple[Runtime, int, str, list[ObjectRef]]:
    from PIL import Image

    folder = tmp_path / "images"
    folder.mkdir()
    for index in range(count):
        Image.new("RGB", (70 + index, 64), (index * 40, 10, 200)).save(folder / f"{index}.png")
    (folder / "broken.jpg").write_bytes(b"not an image")
    settings = Settings(db_url=f"sqlite:///{tmp_path / 'gamma.db'}", masks_url=str(tmp_path / "masks"))
    runtime = Runtime.create(settings, backend=backend)  # type: ignore[arg-type]
    tasks.use_runtime(runtime)
    source = LocalSource(folder)
    scan_id = open_scan(runtime.sessions, source, "gamma-test")
    refs: list[ObjectRef] = []
    list_into_scan(runtime.sessions, scan_id, source, 100, refs.extend)
    return runtime, scan_id, source.uri, refs


def test_message_items_round_trip_through_json_friendly_lists() -> None:
    refs = [ObjectRef("a/b.jpg", "etag", 12), ObjectRef("c.png", "", -1)]
    assert decode_refs(encode_refs(refs)) == refs


def test_the_task_runs_the_pipeline_and_records_the_chunk(tmp_path: Path, tiny_checkpoint: Checkpoint) -> None:
    c = tiny_checkpoint
    runtime, scan_id, uri, refs = _scan(tmp_path, TorchBackend(c.model, c.config, c.name, c.version), count=2)
    result = tasks.scan_chunk.apply(args=[scan_id, uri, encode_refs(refs)])
    assert result.successful() and result.get() == {"images": 3, "errors": 1, "reused": 0}
    with runtime.sessions() as session:
        summary = scan_summary(session, scan_id)
    assert summary.status == "done" and summary.error_reasons == {"undecodable": 1}


def test_an_outage_is_retried_then_every_pending_image_is_marked_failed(tmp_path: Path) -> None:
    backend = FailingBackend(TritonUnavailable("connection refused"))
    runtime, scan_id, uri, refs = _scan(tmp_path, backend)
    result = tasks.scan_chunk.apply(args=[scan_id, uri, encode_refs(refs)])
    assert result.failed()
    assert backend.calls == tasks.settings.max_retries + 1
    with runtime.sessions() as session:
        summary = scan_summary(session, scan_id)
        rows = session.execute(
            select(ScanItem.key, Result.error_reason, Result.error_detail).join(Result, Result.id == ScanItem.result_id)
        ).all()
    assert summary.status == "done"
    assert summary.error_reasons == {"retries-exhausted": 4}  # the chunk never committed, broken.jpg included
    assert all("TritonUnavailable" in detail for key, reason, detail in rows if reason == "retries-exhausted")


def test_a_bug_is_not_retried_and_is_recorded_as_internal_error(tmp_path: Path) -> None:
    backend = FailingBackend(RuntimeError("shape mismatch"))
    runtime, scan_id, uri, refs = _scan(tmp_path, backend)
    result = tasks.scan_chunk.apply(args=[scan_id, uri, encode_refs(refs)])
    assert result.failed() and backend.calls == 1
    with runtime.sessions() as session:
        assert scan_summary(session, scan_id).error_reasons == {"internal-error": 4}


@pytest.mark.parametrize(
    ("exc", "reason"),
    [
        (TritonUnavailable("down"), "retries-exhausted"),
        (SoftTimeLimitExceeded(), "time-limit"),
        (TimeLimitExceeded(360), "time-limit"),  # the hard limit: the main process reports it, the child is gone
        (ModelNotFound("no such model"), "backend-error"),
        (RuntimeError("a bug"), "internal-error"),
    ],
)
def test_failure_reasons(exc: BaseException, reason: str) -> None:
    assert tasks.failure_reason(exc) == reason


def test_delivery_settings_are_the_safe_ones() -> None:
    conf = app.conf
    assert conf.task_acks_late and conf.task_reject_on_worker_lost and conf.worker_prefetch_multiplier == 1
    assert conf.accept_content == ["json"] and conf.task_serializer == "json"
    assert conf.broker_transport_options["visibility_timeout"] > conf.task_time_limit > conf.task_soft_time_limit
    assert tasks.scan_chunk.max_retries == tasks.settings.max_retries


def test_backoff_is_exponential_capped_and_jittered_by_at_most_half() -> None:
    settings = Settings(retry_backoff_s=2, retry_backoff_max_s=120, max_retries=12)
    rng = random.Random(1)
    for retries, nominal in [(0, 2), (1, 4), (5, 64), (6, 120), (40, 120)]:
        waits = [tasks.retry_countdown(settings, retries, rng) for _ in range(200)]
        assert nominal / 2 <= min(waits) and max(waits) <= nominal
        assert max(waits) - min(waits) > nominal / 4  # really jittered


def test_the_default_retries_ride_out_minutes_of_outage() -> None:
    shortest, longest = tasks.retry_window_s(Settings())
    assert shortest >= 5 * 60 and longest <= 20 * 60  # e.g. a database failover or restart
    assert Settings().visibility_timeout_s > Settings().time_limit_s + Settings().retry_backoff_max_s


class DatabaseDown:
    """Makes the patched task functions raise OperationalError (connection refused) while ``down``."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, *names: str) -> None:
        self.down = True
        for name in names:
            original = getattr(tasks, name)
            monkeypatch.setattr(tasks, name, self._wrap(original))

    def _wrap(self, original: Any) -> Any:
        def call(*args: Any, **kwargs: Any) -> Any:
            if self.down:
                raise OperationalError("SELECT 1", {}, ConnectionRefusedError("connection refused"))
            return original(*args, **kwargs)

        return call


def test_a_database_outage_is_retried_and_the_notes_are_written_once_it_is_back(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    runtime, scan_id, uri, refs = _scan(tmp_path, CountingBackend())
    db = DatabaseDown(monkeypatch, "run_chunk", "note_scan")
    attempts = []
    original = tasks.run_chunk

    def run_chunk(*args: Any, **kwargs: Any) -> Any:
        attempts.append(1)
        db.down = len(attempts) <= 3  # three attempts find the database down, the fourth does not
        return original(*args, **kwargs)

    monkeypatch.setattr(tasks, "run_chunk", run_chunk)
    result = tasks.scan_chunk.apply(args=[scan_id, uri, encode_refs(refs)])
    assert result.successful() and len(attempts) == 4
    with runtime.sessions() as session:
        summary = scan_summary(session, scan_id)
    assert summary.status == "done" and summary.processed == 4 and summary.error_reasons == {"undecodable": 1}
    retries = [line for line in summary.detail.splitlines() if "retry" in line]
    assert all("OperationalError" in line and "\n" not in line for line in retries), summary.detail
    # carried while the database was down: the first and the latest (a scan's detail is bounded)
    assert [line.split(" retry ")[1].split(" ")[0] for line in retries] == ["1/12", "3/12"]


def test_when_the_failure_cannot_be_recorded_the_chunk_is_retried_not_dropped(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    backend = FailingBackend(TritonUnavailable("connection refused"))
    runtime, scan_id, uri, refs = _scan(tmp_path, backend)
    monkeypatch.setattr(tasks.scan_chunk, "max_retries", 2)
    db = DatabaseDown(monkeypatch, "mark_failed")
    recorded = []
    original = tasks.mark_failed

    def mark_failed(*args: Any, **kwargs: Any) -> Any:
        recorded.append(1)
        db.down = len(recorded) <= 2  # the first two attempts to record the failure find the database down
        return original(*args, **kwargs)

    monkeypatch.setattr(tasks, "mark_failed", mark_failed)
    result = tasks.scan_chunk.apply(args=[scan_id, uri, encode_refs(refs)])
    assert result.failed() and isinstance(result.result, tasks.ChunkGaveUp)
    assert backend.calls == 2 + 1 + 2 and len(recorded) == 3  # two retries, then the chunk twice more
    with runtime.sessions() as session:
        summary = scan_summary(session, scan_id)
    assert summary.status == "done" and summary.error_reasons == {"retries-exhausted": 4}
    assert summary.detail.count("could not be recorded") == 2, summary.detail
    assert summary.detail.count("failed for good") == 1, summary.detail


def test_on_failure_requeues_the_message_when_the_failure_cannot_be_recorded(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    runtime, scan_id, uri, refs = _scan(tmp_path, FailingBackend(RuntimeError("a bug")))
    DatabaseDown(monkeypatch, "mark_failed")
    with pytest.raises(Reject) as rejected:
        tasks.scan_chunk.apply(args=[scan_id, uri, encode_refs(refs)])
    assert rejected.value.requeue  # back to the queue, not acked: the chunk runs again
    with runtime.sessions() as session:
        assert scan_summary(session, scan_id).processed == 0


def test_a_model_without_a_loaded_version_is_transient_but_an_unknown_name_is_not() -> None:
    from tritonclient.utils import InferenceServerException

    from deploy.triton_client import ModelNotFound, TritonUnavailable, _translate

    draining = InferenceServerException(
        "Request for unknown model: 'm' has no available versions", "StatusCode.UNAVAILABLE"
    )
    assert isinstance(_translate(draining, "infer"), TritonUnavailable)  # Triton stopping or (re)loading it
    unknown = InferenceServerException("Request for unknown model: 'x' is not found", "StatusCode.NOT_FOUND")
    assert isinstance(_translate(unknown, "infer"), ModelNotFound)


def test_on_failure_in_a_process_without_a_runtime_uses_a_throwaway_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The prefork main process reports a hard time limit: it must not build the runtime its children inherit."""
    runtime, scan_id, uri, refs = _scan(tmp_path, FailingBackend(RuntimeError("unused")))
    monkeypatch.setattr(tasks, "settings", runtime.settings)
    tasks.use_runtime(None)  # the main process never ran a task
    closed: list[Runtime] = []
    original_close = Runtime.close

    def close(self: Runtime) -> None:
        closed.append(self)
        original_close(self)

    monkeypatch.setattr(Runtime, "close", close)
    tasks.scan_chunk.on_failure(TimeLimitExceeded(360), "task-id", (scan_id, uri, encode_refs(refs)), {}, None)
    assert tasks._runtime is None  # nothing left behind for a fork to inherit
    assert len(closed) == 1 and closed[0] is not runtime  # the throwaway one, disposed
    with runtime.sessions() as session:
        assert scan_summary(session, scan_id).error_reasons == {"time-limit": 4}


def test_a_runtime_inherited_across_fork_is_not_reused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    runtime, _, _, _ = _scan(tmp_path, FailingBackend(RuntimeError("unused")))
    monkeypatch.setattr(tasks, "settings", runtime.settings)
    with runtime.sessions() as session:  # the parent holds a pooled connection
        session.execute(select(1))
    assert tasks.get_runtime() is runtime
    monkeypatch.setattr(tasks, "_runtime_pid", -1)  # as a forked child sees it: built by another process
    disposed: list[bool] = []
    monkeypatch.setattr(runtime.engine, "dispose", lambda close=True: disposed.append(close))
    fresh = tasks.get_runtime()
    assert fresh is not runtime and fresh.engine is not runtime.engine
    assert disposed == [False]  # the parent's sockets are dropped, not closed under it
    fresh.close()


def test_a_chunk_that_kept_killing_its_worker_is_recorded_worker_lost_without_running(tmp_path: Path) -> None:
    backend = CountingBackend()
    runtime, scan_id, uri, refs = _scan(tmp_path, backend)
    result = tasks.scan_chunk.apply(args=[scan_id, uri, encode_refs(refs)], kwargs={"lost": 3})
    assert result.failed() and isinstance(result.result, tasks.ChunkGaveUp)
    assert backend.calls == 0  # not run a fourth time
    with runtime.sessions() as session:
        summary = scan_summary(session, scan_id)
    assert summary.status == "done" and summary.error_reasons == {"worker-lost": 4}
    assert summary.detail.count("died 3 times") == 1, summary.detail


def test_the_delivery_counter_counts_only_on_redis_and_never_fails_a_chunk() -> None:
    from tests.fixtures.services import free_port

    assert tasks.DeliveryCounter("memory://").started("t", 0) is None
    unreachable = tasks.DeliveryCounter(f"redis://127.0.0.1:{free_port()}/0")
    assert unreachable.started("t", 0) is None  # refused: not counted, the chunk simply runs
    unreachable.forget("t", 0)
