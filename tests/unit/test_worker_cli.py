"""gamma-scan end to end in-process, and gamma-submit against Celery's in-memory broker (no Redis)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner
from kombu import Connection
from PIL import Image
from sqlalchemy import select

from gamma.weights import Checkpoint
from worker.app import TASK_NAME, decode_refs
from worker.cli import scan, submit
from worker.db import Scan, ScanItem, make_engine, session_factory


def _folder(root: Path) -> Path:
    folder = root / "photos"
    (folder / "sub").mkdir(parents=True)
    Image.new("RGB", (96, 64), (200, 30, 30)).save(folder / "red.jpg")
    Image.new("RGB", (64, 64), (30, 200, 30)).save(folder / "sub" / "green.png")
    (folder / "sub" / "empty.jpg").write_bytes(b"")
    return folder


def test_gamma_scan_prints_one_json_object_per_image_and_a_summary(
    tmp_path: Path, tiny_checkpoint: Checkpoint, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("GAMMA_TRITON_URL", raising=False)
    folder = _folder(tmp_path)
    db = f"sqlite:///{tmp_path / 'scan.db'}"
    args = [str(folder), "--db", db, "--json", "--model", str(tiny_checkpoint.path), "--masks", str(tmp_path / "m")]
    result = CliRunner().invoke(scan, [*args, "--chunk-size", "2"])
    assert result.exit_code == 0, result.output
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    assert sorted(line["key"] for line in lines) == ["red.jpg", "sub/empty.jpg", "sub/green.png"]
    empty = next(line for line in lines if line["key"] == "sub/empty.jpg")
    assert (empty["verdict"], empty["error_reason"]) == ("error", "empty")
    judged = [line for line in lines if line["verdict"] != "error"]
    assert all(Path(line["ai_mask_url"].removeprefix("file://")).is_file() for line in judged)
    assert "images/s" in result.stderr and "processed / listed" in result.stderr
    with session_factory(make_engine(db))() as session:
        row = session.scalars(select(Scan)).one()
    assert (row.status, row.processed, row.errors, row.model_name) == ("done", 3, 1, "gamma-test")


def test_gamma_submit_records_the_scan_and_queues_json_chunks(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    folder = _folder(tmp_path)
    db = f"sqlite:///{tmp_path / 'submit.db'}"
    monkeypatch.setenv("GAMMA_QUEUE", "test-submit")
    result = CliRunner().invoke(submit, [str(folder), "--db", db, "--broker", "memory://", "--chunk-size", "2"])
    assert result.exit_code == 0, result.output
    scan_id = int(result.stdout.strip())
    with session_factory(make_engine(db))() as session:
        row = session.get(Scan, scan_id)
        keys = session.scalars(select(ScanItem.key).where(ScanItem.scan_id == scan_id)).all()
    assert row is not None and (row.status, row.total, row.source_uri) == ("running", 3, folder.resolve().as_uri())
    assert sorted(keys) == ["red.jpg", "sub/empty.jpg", "sub/green.png"]
    messages = []
    with Connection("memory://") as connection:
        queue = connection.SimpleQueue("test-submit")
        while queue.qsize():
            message = queue.get(timeout=1)
            messages.append(message)
            message.ack()
        queue.close()
    assert [m.headers["task"] for m in messages] == [TASK_NAME, TASK_NAME]
    assert all(m.content_type == "application/json" for m in messages)
    chunks = [m.decode()[0] for m in messages]  # body: (args, kwargs, embed)
    assert [c[0] for c in chunks] == [scan_id, scan_id]
    assert sorted(ref.key for c in chunks for ref in decode_refs(c[2])) == ["red.jpg", "sub/empty.jpg", "sub/green.png"]


def test_gamma_submit_of_a_missing_folder_fails_before_recording_anything(tmp_path: Path) -> None:
    db = tmp_path / "submit.db"
    result = CliRunner().invoke(submit, [str(tmp_path / "nope"), "--db", f"sqlite:///{db}", "--broker", "memory://"])
    assert result.exit_code == 1 and "no such folder" in result.output, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)  # no traceback
    assert not db.exists()  # checked before the database was opened: no stray database, no failed scan row


def test_gamma_submit_prints_the_scan_id_before_it_queues_anything(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With backpressure a big prefix lists for as long as the scan runs: the id must not wait for the listing."""
    import worker.submit

    folder = _folder(tmp_path)
    events: list[str] = []
    monkeypatch.setattr("click.echo", lambda message="", **_: events.append(f"echo {message}"))
    real_list = worker.submit.list_into_scan

    def listing(*args, **kwargs):  # type: ignore[no-untyped-def]
        events.append("listing")
        return real_list(*args, **kwargs)

    monkeypatch.setattr(worker.submit, "list_into_scan", listing)
    db = f"sqlite:///{tmp_path / 'early.db'}"
    result = CliRunner().invoke(submit, [str(folder), "--db", db, "--broker", "memory://", "--chunk-size", "2"])
    assert result.exit_code == 0, result.output
    assert events[:2] == ["echo 1", "listing"]


def test_gamma_scan_without_json_shows_each_image_flagged_first(
    tmp_path: Path, tiny_checkpoint: Checkpoint, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("GAMMA_TRITON_URL", raising=False)
    folder = _folder(tmp_path)
    db = f"sqlite:///{tmp_path / 'scan.db'}"
    args = [str(folder), "--db", db, "--model", str(tiny_checkpoint.path), "--masks", str(tmp_path / "m")]
    result = CliRunner().invoke(scan, args)
    assert result.exit_code == 0, result.output
    keys = ("red.jpg", "green.png", "empty.jpg")
    listed = [line for line in result.stderr.splitlines() if any(key in line for key in keys)]
    assert len(listed) == 3, result.stderr
    assert "error: empty" in next(line for line in listed if "empty.jpg" in line)
    # one chunk (default size): the bar's rate must count the chunk it just finished
    bar = next(line for line in result.stderr.splitlines() if line.startswith("scan ") and "img/s" in line)
    assert "3/3" in bar and " 0.0 img/s" not in bar, bar  # the rate counts the chunk just finished
    assert listed[-1].count("empty.jpg") == 1  # errors (no probability) come after the judged images


def test_the_image_table_is_bounded(tmp_path: Path, tiny_checkpoint: Checkpoint) -> None:
    from rich.console import Console

    from worker.report import image_table

    folder = tmp_path / "many"
    folder.mkdir()
    for index in range(7):
        Image.new("RGB", (64, 64), (index * 30, 10, 10)).save(folder / f"{index}.png")
    db = f"sqlite:///{tmp_path / 'many.db'}"
    args = [str(folder), "--db", db, "--json", "--model", str(tiny_checkpoint.path), "--masks", str(tmp_path / "m")]
    assert CliRunner().invoke(scan, args).exit_code == 0
    sessions = session_factory(make_engine(db))
    table = image_table(sessions, 1, limit=3)
    assert table is not None and table.row_count == 3
    console = Console(record=True, width=200)
    console.print(table)
    assert "first 3 of 7" in console.export_text()
    assert image_table(sessions, 99) is None
