"""Issue 11 A with real servers: a prefork worker whose database is not the submitter's (each on a relative
``sqlite:///gamma.db`` in its own directory). Its chunks are never inferred, go round at most
``GAMMA_MAX_DELIVERIES`` times, then are dead-lettered in Redis; ``gamma-submit --wait`` stops with the reason
and marks the scan failed instead of showing 0/N until its timeout."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from sqlalchemy import func, select

from tests.fixtures.services import celery_worker
from tests.integration.test_worker_faults import HOOKS, scan_state, worker_env, write_images
from worker.db import Result, make_engine, session_factory
from worker.deadletter import dead_letters

pytestmark = pytest.mark.integration


def test_a_worker_on_another_database_dead_letters_and_the_wait_says_so(
    redis_url: str, services_dir: Path, tmp_path: Path
) -> None:
    write_images(tmp_path / "images", 6)
    worker_dir, submit_dir = tmp_path / "A", tmp_path / "B"
    worker_dir.mkdir()
    submit_dir.mkdir()
    env = worker_env(tmp_path, redis_url, "gamma-fake", "dead.letter")
    env.update({"GAMMA_DB_URL": "sqlite:///gamma.db", "GAMMA_MAX_DELIVERIES": "3"})
    repo = str(Path(__file__).resolve().parents[2])
    with celery_worker(env, services_dir, concurrency=1, queue="dead.letter",
                       include=HOOKS, cwd=worker_dir) as worker:  # fmt: skip
        submit = subprocess.run(
            [sys.executable, "-c", "from worker.cli import submit; submit()", str(tmp_path / "images"), "--wait",
             "--stall-timeout", "60", "--timeout", "120"],
            cwd=submit_dir, env={**os.environ, **env, "PYTHONPATH": repo}, capture_output=True, text=True,
            timeout=180,
        )  # fmt: skip
        assert worker.poll() is None
    assert submit.returncode == 1, submit.stderr
    assert "dead-lettered by worker" in submit.stderr and "no scan 1 in this worker's database" in submit.stderr
    assert str(worker_dir / "gamma.db") in submit.stderr  # which database the worker writes, absolutely
    scan = scan_state(f"sqlite:///{submit_dir / 'gamma.db'}", 1)
    assert scan.status == "failed" and "dead-lettered" in (scan.detail or "")
    letters = dead_letters(redis_url, "dead.letter", 1)
    assert letters and all(entry["images"] == 2 for entry in letters)
    logs = "".join(path.read_text() for path in services_dir.glob("celery-*.log"))
    assert "requeued without inferring (delivery 2 of at most 3)" in logs
    engine = make_engine(f"sqlite:///{worker_dir / 'gamma.db'}")
    with session_factory(engine)() as session:  # nothing was inferred nor recorded in the worker's database
        assert session.scalar(select(func.count()).select_from(Result)) == 0
    engine.dispose()
