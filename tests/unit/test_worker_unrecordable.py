"""Chunks a worker cannot record (their scan is not in its database) and ``gamma-submit --wait`` that would
otherwise wait silently: never inferred, requeued at most ``max_deliveries`` times, then dead-lettered; the
waiting submitter stops with the reason (fake clocks, no broker)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from celery.exceptions import Reject
from click.testing import CliRunner
from PIL import Image
from rich.console import Console

from tests.fixtures.fake_backend import CountingBackend
from worker import tasks
from worker.app import app, encode_refs
from worker.db import Scan
from worker.deadletter import absolute_sqlite_url, database_identity, is_relative_sqlite
from worker.records import scan_summary
from worker.report import ScanStuck, wait_for_scan
from worker.runtime import Runtime
from worker.scans import list_into_scan, open_scan
from worker.settings import Settings
from worker.storage import LocalSource, ObjectRef
from worker.watch import StallWatch


@pytest.fixture(autouse=True)
def eager() -> Iterator[None]:
    app.conf.task_always_eager = True
    yield
    app.conf.task_always_eager = False
    tasks.use_runtime(None)


def _folder(tmp_path: Path, count: int = 3) -> Path:
    folder = tmp_path / "images"
    folder.mkdir()
    for index in range(count):
        Image.new("RGB", (70 + index, 64), (index * 40, 10, 200)).save(folder / f"{index}.png")
    return folder


def _runtime(tmp_path: Path, name: str, backend: CountingBackend) -> Runtime:
    settings = Settings(db_url=f"sqlite:///{tmp_path / name}", masks_url=str(tmp_path / "masks"))
    return Runtime.create(settings, backend=backend)  # type: ignore[arg-type]


def _submitted(runtime: Runtime, folder: Path) -> tuple[int, str, list[ObjectRef], str]:
    source = LocalSource(folder)
    scan_id = open_scan(runtime.sessions, source, "gamma-fake")
    refs: list[ObjectRef] = []
    list_into_scan(runtime.sessions, scan_id, source, 100, refs.extend)
    with runtime.sessions() as session:
        created = session.get(Scan, scan_id).created_at.isoformat()  # type: ignore[union-attr]
    return scan_id, source.uri, refs, created


def test_a_chunk_of_a_scan_in_another_database_is_dead_lettered_without_inference(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = _folder(tmp_path)
    submitter = _runtime(tmp_path, "submitter.db", CountingBackend())
    scan_id, uri, refs, created = _submitted(submitter, folder)
    backend = CountingBackend()
    tasks.use_runtime(_runtime(tmp_path, "worker.db", backend))  # the worker's database has no scan at all
    kept: list[dict[str, Any]] = []
    monkeypatch.setattr(tasks, "dead_letter", lambda url, queue, entry: kept.append(entry) or True)
    result = tasks.scan_chunk.apply(args=[scan_id, uri, encode_refs(refs)], kwargs={"scan_created_at": created})
    assert result.failed() and isinstance(result.result, tasks.ChunkDeadLettered)  # acked, never requeued again
    assert backend.calls == 0
    assert len(kept) == 1 and kept[0]["scan_id"] == scan_id and kept[0]["args"][2] == encode_refs(refs)
    assert f"no scan {scan_id} in this worker's database" in kept[0]["reason"]
    assert "worker.db" in kept[0]["reason"] and "submitter.db" not in kept[0]["reason"]


def test_a_scan_with_the_same_id_and_folder_in_another_database_is_not_taken_for_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Both databases have a scan 1 of the same folder (made at different moments): the chunk is refused."""
    folder = _folder(tmp_path)
    scan_id, uri, refs, created = _submitted(_runtime(tmp_path, "submitter.db", CountingBackend()), folder)
    backend = CountingBackend()
    worker = _runtime(tmp_path, "worker.db", backend)
    assert _submitted(worker, folder)[0] == scan_id
    tasks.use_runtime(worker)
    monkeypatch.setattr(tasks, "dead_letter", lambda *_: False)  # not Redis: only logged
    result = tasks.scan_chunk.apply(args=[scan_id, uri, encode_refs(refs)], kwargs={"scan_created_at": created + "1"})
    assert isinstance(result.result, tasks.ChunkDeadLettered) and "is another scan" in str(result.result)
    assert backend.calls == 0
    with worker.sessions() as session:
        assert scan_summary(session, scan_id).processed == 0
    # the same message without the creation time (an older submitter) is its scan: it runs
    assert tasks.scan_chunk.apply(args=[scan_id, uri, encode_refs(refs)]).successful() and backend.calls > 0


def test_requeued_while_deliveries_last_then_dead_lettered(monkeypatch: pytest.MonkeyPatch) -> None:
    task = SimpleNamespace(request=SimpleNamespace(id="t", retries=0, kwargs={"reuse": True}))
    forgotten: list[str] = []
    kept: list[dict[str, Any]] = []
    monkeypatch.setattr(tasks, "delivery_counter", lambda: SimpleNamespace(forget=lambda i, r: forgotten.append(i)))
    monkeypatch.setattr(tasks, "dead_letter", lambda url, queue, entry: kept.append(entry) or True)
    limit = tasks.settings.max_deliveries
    for delivery in range(1, limit):
        with pytest.raises(Reject) as rejected:
            tasks._refuse_unrecordable(task, delivery, 7, "file:///x", [["a", "", 1]], "no scan 7")  # type: ignore[arg-type]
        assert rejected.value.requeue
    with pytest.raises(tasks.ChunkDeadLettered):
        tasks._refuse_unrecordable(task, limit, 7, "file:///x", [["a", "", 1]], "no scan 7")  # type: ignore[arg-type]
    assert forgotten == ["t"] and [entry["task_id"] for entry in kept] == ["t"]


def test_a_failure_that_cannot_be_recorded_for_want_of_the_scan_is_dead_lettered_not_requeued(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The scan vanished between the check and the write (LookupError from the database): on_failure must not
    requeue the chunk forever."""
    folder = _folder(tmp_path)
    runtime = _runtime(tmp_path, "gamma.db", CountingBackend())
    tasks.use_runtime(runtime)
    scan_id, uri, refs, _ = _submitted(runtime, folder)

    def gone(*_: Any, **__: Any) -> None:
        raise LookupError(f"no scan {scan_id}")

    monkeypatch.setattr(tasks, "run_chunk", gone)
    monkeypatch.setattr(tasks, "mark_failed", gone)
    monkeypatch.setattr(tasks, "dead_letter", lambda *_: True)
    result = tasks.scan_chunk.apply(args=[scan_id, uri, encode_refs(refs)])  # no Reject raised
    assert result.failed() and isinstance(result.result, LookupError)


def test_relative_sqlite_urls_resolve_against_the_working_directory(tmp_path: Path) -> None:
    assert absolute_sqlite_url("sqlite:///gamma.db", tmp_path) == f"sqlite:///{tmp_path}/gamma.db"
    assert absolute_sqlite_url("sqlite:///./a/../g.db", tmp_path) == f"sqlite:///{tmp_path}/g.db"
    for url in ("sqlite:////abs/gamma.db", "sqlite:///:memory:", "sqlite://", "postgresql://u:p@h/db"):
        assert absolute_sqlite_url(url, tmp_path) == url
    assert is_relative_sqlite("sqlite:///gamma.db") and not is_relative_sqlite("sqlite:////a.db")
    assert database_identity("postgresql://u:secret@h/db") == "postgresql://u:***@h/db"


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


def test_no_consumer_stops_the_wait_after_the_grace_period() -> None:
    clock = Clock()
    asked: list[float] = []

    def consumers() -> int:
        asked.append(clock.now)
        return 0

    watch = StallWatch("gamma.scan", 30, consumers, lambda: [], clock=clock)
    for processed in (0, 1, 2):  # progress: nothing asked
        clock.sleep(20)
        assert watch(processed) == ""
    clock.sleep(29)
    assert watch(2) == "" and asked == []
    clock.sleep(1)
    assert "no worker is consuming queue gamma.scan" in watch(2) and asked == [clock.now]


def test_consumers_without_progress_only_note_it() -> None:
    clock, notes = Clock(), []
    watch = StallWatch("q", 10, lambda: 2, lambda: [], clock=clock, on_note=notes.append)
    for _ in range(5):
        clock.sleep(10)
        assert watch(0) == ""
    assert len(notes) == 4 and "2 worker(s) consume queue q" in notes[0]  # the first look starts the clock


def test_a_dead_lettered_chunk_stops_the_wait_at_once() -> None:
    clock = Clock()
    letters: list[dict[str, Any]] = []
    watch = StallWatch("q", 0, lambda: 1, lambda: list(letters), clock=clock, dead_every_s=5)
    assert watch(0) == ""
    letters.append({"worker": "w1", "reason": "no scan 1 in this worker's database sqlite:////A/gamma.db"})
    clock.sleep(4)
    assert watch(0) == ""  # asked every 5 s only
    clock.sleep(1)
    assert "dead-lettered by worker w1: no scan 1" in watch(0)


def test_wait_for_scan_raises_what_the_watch_says(tmp_path: Path) -> None:
    runtime = _runtime(tmp_path, "gamma.db", CountingBackend())
    scan_id, *_ = _submitted(runtime, _folder(tmp_path))
    clock = Clock()
    watch = StallWatch("q", 60, lambda: 0, lambda: [], clock=clock)
    console = Console(file=open(tmp_path / "out.txt", "w"))
    with pytest.raises(ScanStuck, match="no worker is consuming queue q"):
        wait_for_scan(runtime.sessions, scan_id, console, 3600, watch=watch, clock=clock, sleep=clock.sleep)
    assert 60 <= clock.now < 62


def test_gamma_submit_wait_without_a_worker_exits_non_zero(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The in-memory broker: no worker answers; the wait ends after the stall timeout with the reason."""
    from worker import watch
    from worker.cli import submit

    folder = _folder(tmp_path)
    monkeypatch.setattr(watch, "queue_consumers", lambda app, queue: 0)
    monkeypatch.chdir(tmp_path)
    args = [str(folder), "--db", "sqlite:///rel.db", "--broker", "memory://", "--wait", "--stall-timeout", "0.01"]
    result = CliRunner().invoke(submit, args)
    assert result.exit_code == 1, result.output
    assert "no worker is consuming queue" in result.stderr
    assert f"{tmp_path}/rel.db" in result.stderr  # the relative path, said absolutely
