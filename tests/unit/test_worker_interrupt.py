"""Issue 11 B: Ctrl-C or SIGTERM during ``gamma-scan`` leaves the scan ``interrupted`` (with a finish time and
a note), never ``listing`` forever; ``gamma-scan --resume SCAN_ID`` finishes it without re-running what was
done. The interrupt is simulated inside the chunk loop (KeyboardInterrupt, or a real SIGTERM to this process)."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from PIL import Image

import worker.pipeline
from gamma.weights import Checkpoint
from worker.cli import scan
from worker.db import Scan, make_engine, session_factory


def _folder(root: Path, count: int = 8) -> Path:
    folder = root / "photos"
    folder.mkdir()
    for index in range(count):
        Image.new("RGB", (70 + index, 64), (index * 30, 90, 200 - index * 20)).save(folder / f"{index}.png")
    return folder


def _row(db: str, scan_id: int) -> Scan:
    engine = make_engine(db)
    try:
        with session_factory(engine)() as session:
            row = session.get(Scan, scan_id)
            assert row is not None
            return row
    finally:
        engine.dispose()


@pytest.mark.parametrize("how", ["sigint", "sigterm"])
def test_an_interrupted_scan_is_marked_and_resumed(
    tmp_path: Path, tiny_checkpoint: Checkpoint, monkeypatch: pytest.MonkeyPatch, how: str
) -> None:
    monkeypatch.delenv("GAMMA_TRITON_URL", raising=False)
    folder = _folder(tmp_path)
    db = f"sqlite:///{tmp_path / 'scan.db'}"
    base = ["--db", db, "--json", "--model", str(tiny_checkpoint.path), "--masks", str(tmp_path / "m")]
    real = worker.pipeline.run_chunk
    calls: list[int] = []

    def interrupted_on_the_third_chunk(*args: Any, **kwargs: Any) -> Any:
        calls.append(len(args[2]))
        if len(calls) == 3:
            if how == "sigint":
                raise KeyboardInterrupt
            os.kill(os.getpid(), signal.SIGTERM)  # the handler gamma-scan installs raises here
        return real(*args, **kwargs)

    monkeypatch.setattr(worker.pipeline, "run_chunk", interrupted_on_the_third_chunk)
    handler = signal.getsignal(signal.SIGTERM)
    result = CliRunner().invoke(scan, [str(folder), *base, "--chunk-size", "2"])
    assert result.exit_code == (130 if how == "sigint" else 143), result.output
    assert "gamma-scan --resume 1" in result.stderr
    assert signal.getsignal(signal.SIGTERM) == handler  # restored
    row = _row(db, 1)
    assert (row.status, row.processed) == ("interrupted", 4) and row.finished_at is not None
    assert f"interrupted by {how.upper()} after 4 images" in (row.detail or "")

    monkeypatch.setattr(worker.pipeline, "run_chunk", real)
    inferred: list[str] = []
    original_classify = worker.pipeline.classify_chunk

    def classify(runtime: Any, source: Any, refs: Any, reuse: bool = True, detector: Any = None) -> Any:
        inferred.extend(ref.key for ref in refs)
        return original_classify(runtime, source, refs, reuse, detector)

    monkeypatch.setattr(worker.pipeline, "classify_chunk", classify)
    resumed = CliRunner().invoke(scan, ["--resume", "1", *base, "--chunk-size", "2"])
    assert resumed.exit_code == 0, resumed.output
    row = _row(db, 1)
    assert (row.status, row.processed, row.total, row.errors) == ("done", 8, 8, 0)
    assert len(inferred) == 4  # only what had no result: the first four were linked at listing
    lines = [json.loads(line) for line in resumed.stdout.splitlines()]
    assert sorted(line["key"] for line in lines) == sorted(inferred)
    assert "resumed by gamma-scan --resume" in (row.detail or "")


def test_resume_refuses_what_it_cannot_resume(tmp_path: Path, tiny_checkpoint: Checkpoint) -> None:
    db = f"sqlite:///{tmp_path / 'scan.db'}"
    folder = _folder(tmp_path, 2)
    base = ["--db", db, "--model", str(tiny_checkpoint.path), "--masks", str(tmp_path / "m")]
    assert CliRunner().invoke(scan, [str(folder), *base]).exit_code == 0
    done = CliRunner().invoke(scan, ["--resume", "1", *base])
    assert done.exit_code == 1 and "scan 1 is done: nothing to resume" in done.output
    missing = CliRunner().invoke(scan, ["--resume", "9", *base])
    assert missing.exit_code == 1 and "no scan 9" in missing.output
    both = CliRunner().invoke(scan, [str(folder), "--resume", "1", *base])
    assert both.exit_code == 2 and "not both" in both.output


def test_resume_does_not_reopen_a_scan_the_workers_closed_meanwhile(
    tmp_path: Path, tiny_checkpoint: Checkpoint, monkeypatch: pytest.MonkeyPatch
) -> None:
    """--resume checks the status, then loads the model (seconds): a Celery scan still running at the check can be
    closed by its workers before the reopen. The reopen is one guarded UPDATE, so a done scan stays done."""
    from datetime import datetime

    from sqlalchemy import update

    from worker.runtime import Runtime

    db = f"sqlite:///{tmp_path / 'scan.db'}"
    folder = _folder(tmp_path, 2)
    base = ["--db", db, "--model", str(tiny_checkpoint.path), "--masks", str(tmp_path / "m")]
    assert CliRunner().invoke(scan, [str(folder), *base]).exit_code == 0
    engine = make_engine(db)
    closed_at = datetime(2026, 12, 2, 3, 30)

    def set_status(status: str, finished_at: datetime | None) -> None:
        with session_factory(engine).begin() as session:
            session.execute(update(Scan).where(Scan.id == 1).values(status=status, finished_at=finished_at))

    set_status("running", None)  # as if its chunks were still with Celery workers
    original = Runtime.create

    def create_while_the_workers_close_it(*args: Any, **kwargs: Any) -> Any:
        runtime = original(*args, **kwargs)
        set_status("done", closed_at)
        return runtime

    monkeypatch.setattr(Runtime, "create", create_while_the_workers_close_it)
    resumed = CliRunner().invoke(scan, ["--resume", "1", *base])
    engine.dispose()
    assert resumed.exit_code == 1 and "scan 1 is done: nothing to resume" in resumed.output
    row = _row(db, 1)
    assert (row.status, row.finished_at) == ("done", closed_at)
    assert "resumed by" not in (row.detail or "")
