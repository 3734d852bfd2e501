"""Incremental rescans: unchanged objects are neither fetched nor inferred, copies reuse results, changes and
new model versions are inferred again. Counted at the backend (inference calls) on SQLite and a local folder."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
from PIL import Image
from sqlalchemy import func, select

from tests.fixtures.fake_backend import CountingBackend
from worker.app import create_app
from worker.db import Result, Scan, ScanItem
from worker.outcome import Outcome
from worker.pipeline import mark_failed, run_chunk
from worker.runtime import Runtime
from worker.scans import list_into_scan, open_scan
from worker.settings import Settings
from worker.storage import LocalSource, ObjectRef
from worker.submit import checkpoint_identity, checkpoint_version, submit_scan

COUNT = 5


def write_folder(folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for index in range(COUNT):
        Image.new("RGB", (70 + index, 64), (index * 50, 90, 200 - index * 30)).save(folder / f"{index}.png")
    (folder / "broken.jpg").write_bytes(b"not an image")


def runtime_for(tmp_path: Path, backend: CountingBackend) -> Runtime:
    settings = Settings(db_url=f"sqlite:///{tmp_path / 'gamma.db'}", masks_url=str(tmp_path / "masks"), chunk_size=2)
    return Runtime.create(settings, backend=backend)


def scan_folder(runtime: Runtime, folder: Path, reuse: bool = True) -> tuple[int, list[Outcome]]:
    """What gamma-scan does: list, then run every chunk in this process."""
    source = LocalSource(folder)
    scan_id = open_scan(runtime.sessions, source, runtime.backend.model_name)
    outcomes: list[Outcome] = []

    def dispatch(chunk: list[ObjectRef]) -> None:
        outcomes.extend(run_chunk(runtime, source.uri, chunk, scan_id, reuse=reuse))

    list_into_scan(runtime.sessions, scan_id, source, runtime.settings.chunk_size, dispatch)
    return scan_id, outcomes


def scan_row(runtime: Runtime, scan_id: int) -> Scan:
    with runtime.sessions() as session:
        scan = session.get(Scan, scan_id)
        assert scan is not None
        return scan


def results_of(runtime: Runtime, scan_id: int) -> dict[str, int]:
    with runtime.sessions() as session:
        rows = session.execute(select(ScanItem.key, ScanItem.result_id).where(ScanItem.scan_id == scan_id)).all()
    return {key: result_id for key, result_id in rows}


def test_rescan_of_an_unchanged_folder_runs_no_inference(tmp_path: Path) -> None:
    write_folder(tmp_path / "images")
    backend = CountingBackend()
    runtime = runtime_for(tmp_path, backend)
    first, _ = scan_folder(runtime, tmp_path / "images")
    assert backend.images == COUNT
    backend.images = backend.calls = 0

    second, outcomes = scan_folder(runtime, tmp_path / "images")
    assert backend.calls == 0
    assert all(o.result_id is not None for o in outcomes if o.key != "broken.jpg")
    assert results_of(runtime, second) == results_of(runtime, first)
    row = scan_row(runtime, second)
    assert (row.status, row.processed, row.errors, row.total) == ("done", COUNT + 1, 1, COUNT + 1)
    with runtime.sessions() as session:
        assert session.scalar(select(func.count()).select_from(Result)) == COUNT + 1

    backend_full = backend.images
    scan_folder(runtime, tmp_path / "images", reuse=False)  # --full: everything again
    assert backend.images - backend_full == COUNT


def test_unchanged_objects_are_skipped_at_listing_time(tmp_path: Path) -> None:
    write_folder(tmp_path / "images")
    backend = CountingBackend()
    runtime = runtime_for(tmp_path, backend)
    scan_folder(runtime, tmp_path / "images")
    (tmp_path / "images" / "new.png").write_bytes((tmp_path / "images" / "0.png").read_bytes()[:-1] + b"\0")

    source = LocalSource(tmp_path / "images")
    scan_id = open_scan(runtime.sessions, source, backend.model_name)
    dispatched: list[list[ObjectRef]] = []
    total = list_into_scan(
        runtime.sessions, scan_id, source, 2, dispatched.append, skip_known=("gamma-fake", 1, "five")
    )
    assert total == COUNT + 2
    assert [[ref.key for ref in chunk] for chunk in dispatched] == [["new.png"]]
    row = scan_row(runtime, scan_id)
    assert (row.status, row.processed) == ("running", COUNT + 1)  # the new key is still owed

    nothing: list[list[ObjectRef]] = []
    other_version = open_scan(runtime.sessions, source, backend.model_name)
    list_into_scan(runtime.sessions, other_version, source, 100, nothing.append, skip_known=("gamma-fake", 2, "five"))
    assert sum(len(chunk) for chunk in nothing) == COUNT + 2  # another version knows nothing


def test_a_copy_under_a_new_key_reuses_the_result_without_inference(tmp_path: Path) -> None:
    write_folder(tmp_path / "images")
    backend = CountingBackend()
    runtime = runtime_for(tmp_path, backend)
    first, _ = scan_folder(runtime, tmp_path / "images")
    (tmp_path / "images" / "copies").mkdir()
    shutil.copyfile(tmp_path / "images" / "3.png", tmp_path / "images" / "copies" / "three.png")
    backend.calls = 0

    second, outcomes = scan_folder(runtime, tmp_path / "images")
    assert backend.calls == 0
    ids = results_of(runtime, second)
    assert ids["copies/three.png"] == results_of(runtime, first)["3.png"]
    copy = next(o for o in outcomes if o.key == "copies/three.png")
    assert copy.fetch_ms is not None and copy.result_id is not None  # fetched (to hash it), not inferred

    backend.calls = 0
    scan_folder(runtime, tmp_path / "images")  # the copy is now known by its ETag too
    assert backend.calls == 0


def test_a_changed_object_is_scanned_again(tmp_path: Path) -> None:
    write_folder(tmp_path / "images")
    backend = CountingBackend()
    runtime = runtime_for(tmp_path, backend)
    first, _ = scan_folder(runtime, tmp_path / "images")
    path = tmp_path / "images" / "2.png"
    Image.new("RGB", (71, 64), (255, 255, 255)).save(path)
    os.utime(path, ns=(path.stat().st_atime_ns, path.stat().st_mtime_ns + 10**9))  # a new ETag
    backend.images = 0

    second, _ = scan_folder(runtime, tmp_path / "images")
    assert backend.images == 1
    before, after = results_of(runtime, first), results_of(runtime, second)
    assert after["2.png"] != before["2.png"]
    assert {k: v for k, v in after.items() if k != "2.png"} == {k: v for k, v in before.items() if k != "2.png"}


def test_a_new_model_version_rescans_everything(tmp_path: Path) -> None:
    write_folder(tmp_path / "images")
    runtime = runtime_for(tmp_path, CountingBackend(model_version=1))
    first, _ = scan_folder(runtime, tmp_path / "images")
    newer = CountingBackend(model_version=2)
    runtime2 = runtime_for(tmp_path, newer)
    second, _ = scan_folder(runtime2, tmp_path / "images")
    assert newer.images == COUNT
    assert set(results_of(runtime2, second).values()).isdisjoint(results_of(runtime, first).values())
    assert scan_row(runtime2, second).model_version == 2


def test_gamma_submit_queues_only_what_is_unknown(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """submit_scan (gamma-submit, the beat task) on the in-memory broker: a rescan queues no chunk at all."""
    write_folder(tmp_path / "images")
    backend = CountingBackend(model_name="gamma-fake", model_version=1)
    runtime = runtime_for(tmp_path, backend)
    scan_folder(runtime, tmp_path / "images")
    settings = runtime.settings.replace(broker_url="memory://", queue="incremental.test", model="gamma-fake")
    monkeypatch.setenv("GAMMA_MODEL_PATH", str(tmp_path / "models"))
    (tmp_path / "models" / "gamma-fake").mkdir(parents=True)
    (tmp_path / "models" / "gamma-fake" / "model.safetensors").write_bytes(b"")
    (tmp_path / "models" / "gamma-fake" / "metadata.json").write_text('{"version": 1}')
    assert checkpoint_version("gamma-fake") == 1
    # A checkpoint given by path is recorded under its metadata name: the listing must look that name up.
    (tmp_path / "models" / "gamma-fake" / "metadata.json").write_text('{"version": 1, "name": "gamma-fake"}')
    (tmp_path / "elsewhere" / "renamed").mkdir(parents=True)
    shutil.copy(tmp_path / "models" / "gamma-fake" / "metadata.json", tmp_path / "elsewhere" / "renamed")
    (tmp_path / "elsewhere" / "renamed" / "model.safetensors").write_bytes(b"")
    assert checkpoint_identity(str(tmp_path / "elsewhere" / "renamed")) == ("gamma-fake", 1)
    assert checkpoint_identity("no-such-model") == ("no-such-model", 0)

    app = create_app(settings)
    with app.connection() as connection:
        channel = connection.default_channel
        channel.queue_declare(settings.queue)
        channel.queue_purge(settings.queue)
        submitted = submit_scan(settings, str(tmp_path / "images"))
        assert submitted.model_version == 1 and submitted.total == COUNT + 1
        assert channel.queue_declare(settings.queue, passive=True).message_count == 0
        assert scan_row(runtime, submitted.scan_id).status == "done"

        by_path = submit_scan(settings.replace(model=str(tmp_path / "elsewhere" / "renamed")), str(tmp_path / "images"))
        assert channel.queue_declare(settings.queue, passive=True).message_count == 0
        assert scan_row(runtime, by_path.scan_id).status == "done"

        full = submit_scan(settings, str(tmp_path / "images"), full=True)
        assert channel.queue_declare(settings.queue, passive=True).message_count == 3  # 6 keys, chunks of 2
        assert scan_row(runtime, full.scan_id).status == "running"
        channel.queue_purge(settings.queue)


# every reason a task gives up with (worker/tasks.py), spelled out: the test must fail if one is forgotten
GIVE_UP_REASONS = ["retries-exhausted", "time-limit", "backend-error", "internal-error", "worker-lost"]


@pytest.mark.parametrize("reason", GIVE_UP_REASONS)
def test_a_run_failure_is_not_reused_by_the_next_scan(tmp_path: Path, reason: str) -> None:
    """A chunk that gave up (a dead backend, a time limit, a child killed every time) says nothing about the bytes:
    the nightly rescan infers those images again instead of copying the error forward."""
    write_folder(tmp_path / "images")
    backend = CountingBackend()
    runtime = runtime_for(tmp_path, backend)
    source = LocalSource(tmp_path / "images")
    scan_id = open_scan(runtime.sessions, source, backend.model_name)
    chunks: list[list[ObjectRef]] = []
    list_into_scan(runtime.sessions, scan_id, source, 100, chunks.append)
    failed = mark_failed(runtime, source.uri, chunks[0], scan_id, reason, "test")
    assert len(failed) == COUNT + 1 and backend.images == 0

    _, outcomes = scan_folder(runtime, tmp_path / "images")
    assert backend.images == COUNT  # every decodable image inferred again
    assert {o.key: o.verdict for o in outcomes}["broken.jpg"] == "error"
    assert all(o.verdict != "error" for o in outcomes if o.key != "broken.jpg")
