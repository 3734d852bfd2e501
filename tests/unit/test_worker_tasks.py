"""The Celery task (run eagerly, no broker): it runs the pipeline, retries outages, and records giving up."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from celery.exceptions import SoftTimeLimitExceeded, TimeLimitExceeded
from sqlalchemy import select

from deploy.triton_client import ModelNotFound, TritonUnavailable
from gamma.inference import BatchOutputs, TorchBackend
from gamma.verdict import VerdictThresholds
from gamma.weights import Checkpoint
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
        Image.new("RGB", (40 + index, 30), (index * 40, 10, 200)).save(folder / f"{index}.png")
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
    task = tasks.scan_chunk
    assert task.autoretry_for == tasks.TRANSIENT_ERRORS and task.retry_backoff and task.retry_jitter


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
