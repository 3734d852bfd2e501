"""The servers the fixtures start die with the test run: a pytest session that holds a Redis fixture is SIGTERMed
(the handler of tests.fixtures.services stops it) or SIGKILLed (PR_SET_PDEATHSIG takes it down), and the
redis-server PID is gone afterwards instead of running on as an orphan."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

INNER = """
import os, time
from pathlib import Path
import redis

def test_hold(redis_url):
    pid = redis.Redis.from_url(redis_url).info()["process_id"]
    Path(os.environ["PID_FILE"]).write_text(str(pid))
    time.sleep(300)
"""


def _gone(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return True
    return "\nState:\tZ" in state  # exited, waiting for whoever adopted it to reap it


def _poll(check, timeout: float) -> bool:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.1)
    return check()


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL], ids=["sigterm", "sigkill"])
def test_a_terminated_run_leaves_no_server_behind(tmp_path: Path, sig: int) -> None:
    (tmp_path / "test_inner.py").write_text(INNER)
    pid_file = tmp_path / "redis.pid"
    repo = Path(__file__).resolve().parents[2]
    env = {**os.environ, "PID_FILE": str(pid_file), "PYTHONPATH": str(repo)}
    run = subprocess.Popen(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "tests.fixtures.services",
         "--rootdir", str(tmp_path), str(tmp_path / "test_inner.py")],
        cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True,
    )  # fmt: skip
    try:
        assert _poll(pid_file.exists, 120), "the inner session never started its Redis"
        time.sleep(0.2)  # the PID is written: the fixture holds the server
        server = int(pid_file.read_text())
        assert not _gone(server)
        run.send_signal(sig)
        run.wait(60)
        assert run.returncode == -sig
        assert _poll(lambda: _gone(server), 30), f"redis-server {server} outlived the test run"
    finally:
        if run.poll() is None:
            run.kill()
            run.wait()
