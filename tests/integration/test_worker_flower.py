"""Flower works with the app: ``celery -A worker.app flower`` on the test Redis sees the worker and its tasks.

Flower and the worker are started as deploy/docker-compose.yml starts them (the broker from ``GAMMA_BROKER_URL``;
the worker with ``-E``, heartbeats on). Flower's JSON API is opened with ``FLOWER_UNAUTHENTICATED_API`` (Flower 2
refuses API calls without auth otherwise). The worker fixture of tests/fixtures/services.py is not used: it runs
``--without-gossip --without-heartbeat`` and no ``-E``, which leaves a worker with no event dispatcher at all (it
answers Flower's ``enable_events`` with "event dispatcher unavailable"), so Flower could list it but never its tasks.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from gamma.weights import Checkpoint
from tests.fixtures.services import HOST, free_port, stop_process, wait_until
from worker.app import TASK_NAME
from worker.db import Scan, make_engine, session_factory
from worker.settings import Settings
from worker.submit import submit_scan

pytestmark = pytest.mark.integration
VENV_BIN = Path(sys.executable).parent


def _get(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=10) as response:
        return json.loads(response.read())


def _start(command: list[str], log: Path, env: dict[str, str], cwd: str) -> subprocess.Popen[bytes]:
    with log.open("ab") as out:
        return subprocess.Popen(
            command, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env, cwd=cwd,
            start_new_session=True,
        )  # fmt: skip


def _healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/healthcheck", timeout=2) as response:
            return response.read().strip() == b"OK"
    except (urllib.error.URLError, OSError):
        return False


def test_flower_shows_the_worker_and_its_scan_chunk_tasks(
    redis_url: str, tiny_checkpoint: Checkpoint, tmp_path: Path
) -> None:
    if importlib.util.find_spec("flower") is None:
        pytest.skip("flower is not installed (it is in the dev extras: make setup)")
    assert tiny_checkpoint.path is not None
    env = {
        "GAMMA_DB_URL": f"sqlite:///{tmp_path / 'gamma.db'}",
        "GAMMA_BROKER_URL": redis_url,
        "GAMMA_QUEUE": "flower.scan",
        "GAMMA_TRITON_URL": "",
        "GAMMA_MASKS_URL": str(tmp_path / "masks"),
        "GAMMA_MODEL": str(tiny_checkpoint.path),
        "GAMMA_TORCH_THREADS": "1",
        "GAMMA_PREPROCESS_WORKERS": "1",
    }
    repo = str(Path(__file__).resolve().parents[2])
    port, log, worker_log = free_port(), tmp_path / "flower.log", tmp_path / "worker.log"
    full_env = {**os.environ, **env, "FLOWER_UNAUTHENTICATED_API": "true"}
    full_env["PYTHONPATH"] = os.pathsep.join(p for p in (repo, full_env.get("PYTHONPATH")) if p)
    celery = str(VENV_BIN / "celery")
    flower = _start([celery, "-A", "worker.app", "flower", f"--port={port}", f"--address={HOST}"], log, full_env, repo)
    url = f"http://{HOST}:{port}"
    settings = Settings.from_env(env)
    engine = make_engine(settings.db_url)
    worker: subprocess.Popen[bytes] | None = None
    name = f"gamma-flower-{os.getpid()}@{HOST}"
    try:
        wait_until(lambda: _healthy(url), 60, flower, log)
        worker = _start(
            [celery, "-A", "worker.app", "worker", "--pool=prefork", "-c", "1", "-Q", "flower.scan", "-E",
             "--without-gossip", "--without-mingle", "-l", "INFO", "-n", name],
            worker_log, full_env, repo,
        )  # fmt: skip
        wait_until(lambda: " ready." in worker_log.read_text(errors="replace"), 60, worker, worker_log)
        deadline = time.monotonic() + 60
        workers: dict[str, Any] = {}
        while time.monotonic() < deadline and not workers:
            workers = {n: info for n, info in _get(f"{url}/api/workers?refresh=1").items() if info}
            time.sleep(0.5)
        assert name in workers, sorted(workers)
        assert "flower.scan" in {queue["name"] for queue in workers[name].get("active_queues", [])}

        folder = tmp_path / "images"
        folder.mkdir()
        Image.new("RGB", (80, 64), (30, 90, 160)).save(folder / "one.png")
        scan_id = submit_scan(settings, str(folder)).scan_id
        deadline = time.monotonic() + 60
        tasks: dict[str, Any] = {}
        while time.monotonic() < deadline and not tasks:
            time.sleep(0.5)
            with session_factory(engine)() as session:
                scan = session.get(Scan, scan_id)
            if scan is None or scan.status != "done":
                continue
            listed = _get(f"{url}/api/tasks?taskname={TASK_NAME}&state=SUCCESS")  # events come through Redis
            tasks = {uuid: task for uuid, task in listed.items() if task.get("worker") == name}
    finally:
        if worker is not None:
            stop_process(worker, timeout=30)
        stop_process(flower)
        engine.dispose()
    assert tasks, f"no {TASK_NAME} task in Flower:\n{log.read_text(errors='replace')[-2000:]}"
    task = next(iter(tasks.values()))
    assert task["name"] == TASK_NAME and task["state"] == "SUCCESS"
    assert json.loads(task["result"].replace("'", '"'))["images"] == 1
