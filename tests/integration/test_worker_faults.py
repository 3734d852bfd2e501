"""Faults during a scan, with real servers on 127.0.0.1: a worker child killed with SIGKILL mid-chunk, Redis
restarted (AOF on) mid-scan, Triton stopped and restarted mid-scan, PostgreSQL refusing connections mid-scan.
Each scan must still end with exactly one row per image, none of them an error, and say on the scan row what
happened. Every wait is bounded.

Tests that need a child to be reliably mid-chunk use the workers' test hooks (``tests.fixtures.worker_hooks``:
a deterministic backend that can be slow, marks the process busy while it infers, and dies on poison images)."""

from __future__ import annotations

import importlib.util
import os
import signal
import subprocess
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from sqlalchemy import func, select
from sqlalchemy.exc import OperationalError

from gamma.weights import Checkpoint
from tests.fixtures.fault_markers import BUG_RGB, POISON_RGB, read_marker
from tests.fixtures.services import (
    HOST,
    _popen,
    _redis_ping,
    celery_worker,
    free_port,
    on_termination,
    postgres_cluster,
    stop_process,
    wait_until,
)
from worker.db import Image as ImageRow
from worker.db import Result, Scan, ScanItem, make_engine, session_factory
from worker.settings import Settings
from worker.submit import submit_scan

pytestmark = pytest.mark.integration

HOOKS = ("tests.fixtures.worker_hooks",)


def write_images(folder: Path, count: int) -> list[str]:
    folder.mkdir(parents=True)
    rng = np.random.default_rng(7)
    keys = []
    for index in range(count):
        pixels = rng.integers(0, 255, (64 + index, 80, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(folder / f"{index:02d}.png")
        keys.append(f"{index:02d}.png")
    return keys


def children(pid: int) -> list[int]:
    found: list[int] = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        text = (task / "children").read_text().split()
        found.extend(int(child) for child in text)
    return found


def scan_state(db_url: str, scan_id: int) -> Scan:
    engine = make_engine(db_url)
    try:
        with session_factory(engine)() as session:
            scan = session.get(Scan, scan_id)
            assert scan is not None
            return scan
    finally:
        engine.dispose()


def wait_for(check: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.2)
    raise AssertionError(f"{what}: not after {timeout} s")


def assert_complete(db_url: str, scan_id: int, keys: list[str]) -> Scan:
    engine = make_engine(db_url)
    with session_factory(engine)() as session:
        rows = session.execute(
            select(ScanItem.key, Result.verdict, Result.error_reason)
            .join(Result, Result.id == ScanItem.result_id, isouter=True)
            .where(ScanItem.scan_id == scan_id)
        ).all()
    engine.dispose()
    assert sorted(key for key, _, _ in rows) == sorted(keys)  # exactly one row per image
    assert [(k, v, r) for k, v, r in rows if v is None or v == "error"] == []
    scan = scan_state(db_url, scan_id)
    assert (scan.status, scan.processed, scan.total, scan.errors) == ("done", len(keys), len(keys), 0)
    return scan


def assert_no_duplicates(db_url: str, keys: list[str], unread: int = 0) -> None:
    """One scan item and one results row per image, one images row per image whose bytes were read (the
    database is the scan's own; the images have distinct contents)."""
    engine = make_engine(db_url)
    try:
        with session_factory(engine)() as session:
            counts = [session.scalar(select(func.count()).select_from(t)) for t in (ScanItem, ImageRow, Result)]
    finally:
        engine.dispose()
    assert counts == [len(keys), len(keys) - unread, len(keys)]


def worker_env(tmp_path: Path, redis_url: str, model: str, queue: str) -> dict[str, str]:
    return {
        "GAMMA_DB_URL": f"sqlite:///{tmp_path / 'gamma.db'}",
        "GAMMA_BROKER_URL": redis_url,
        "GAMMA_QUEUE": queue,
        "GAMMA_MASKS_URL": str(tmp_path / "masks"),
        "GAMMA_MODEL": model,
        "GAMMA_CHUNK_SIZE": "2",
        "GAMMA_TORCH_THREADS": "1",
        "GAMMA_PREPROCESS_WORKERS": "1",
        "GAMMA_RETRY_BACKOFF_MAX_S": "4",
        "GAMMA_MAX_RETRIES": "10",
    }


def busy_children(worker_pid: int, markers: Path) -> dict[int, list[str]]:
    """pid -> chunk keys of the worker's live pool children that are inferring right now (their marker exists)."""
    busy = {}
    for pid in children(worker_pid):
        keys = read_marker(markers / f"{pid}.busy")
        if keys:
            busy[pid] = keys
    return busy


def wait_for_busy_child(worker_pid: int, markers: Path, avoid: set[str], timeout: float) -> tuple[int, list[str]]:
    """A live pool child inferring a chunk with none of the keys in ``avoid``, and that chunk's keys."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for pid, chunk in busy_children(worker_pid, markers).items():
            if not avoid & set(chunk):
                return pid, chunk
        time.sleep(0.05)
    raise AssertionError(f"no child in the middle of a new chunk after {timeout} s")


def replaced(worker_pid: int, victim: int) -> bool:
    alive = children(worker_pid)
    return victim not in alive and len(alive) == 2


def progressed(db_url: str, scan_id: int, before: int) -> bool:
    return scan_state(db_url, scan_id).processed > before


def test_worker_children_killed_mid_chunk_three_times(redis_url: str, services_dir: Path, tmp_path: Path) -> None:
    """SIGKILL (by PID) of a pool child that is mid-chunk, three times in one scan, each time of a chunk not
    killed before, waiting for the scan to move on in between: every killed chunk is redelivered and completed."""
    keys = write_images(tmp_path / "images", 32)
    markers = tmp_path / "markers"
    markers.mkdir()
    env = worker_env(tmp_path, redis_url, "gamma-fake", "faults.kill")
    env.update({"GAMMA_TEST_INFER_DELAY_S": "1.0", "GAMMA_TEST_MARKERS": str(markers)})
    settings = Settings.from_env(env)
    killed: list[tuple[int, list[str]]] = []
    with celery_worker(env, services_dir, concurrency=2, queue="faults.kill", include=HOOKS) as worker:
        scan_id = submit_scan(settings, str(tmp_path / "images")).scan_id
        for _ in range(3):
            avoid = {key for _, chunk in killed for key in chunk}
            victim, chunk = wait_for_busy_child(worker.pid, markers, avoid, 60)
            before = scan_state(settings.db_url, scan_id).processed
            os.kill(victim, signal.SIGKILL)
            killed.append((victim, chunk))
            assert before < len(keys)
            # it died inside the backend call: its marker was never removed
            assert read_marker(markers / f"{victim}.busy") == chunk
            wait_for(partial(replaced, worker.pid, victim), 30, "a new child")
            wait_for(partial(progressed, settings.db_url, scan_id, before), 60, "progress after the kill")
        wait_for(lambda: scan_state(settings.db_url, scan_id).status == "done", 120, "scan done after the kills")
        assert worker.poll() is None  # the worker itself lived on, with new children
    assert len({pid for pid, _ in killed}) == 3 and len({k for _, chunk in killed for k in chunk}) == 6
    scan = assert_complete(settings.db_url, scan_id, keys)
    assert_no_duplicates(settings.db_url, keys)
    redelivered = [line for line in (scan.detail or "").splitlines() if "redelivered" in line]
    assert len(redelivered) == 3 and all("delivery 2 of at most 3" in line for line in redelivered), scan.detail


def test_a_chunk_that_kills_its_worker_every_time_is_marked_worker_lost(
    redis_url: str, services_dir: Path, tmp_path: Path
) -> None:
    """A poison chunk (its image kills the process that infers it, as a decoder segfault or the OOM killer
    would) runs max_deliveries = 3 times, killing three children; its fourth delivery marks its images
    ``worker-lost`` and acks. The rest of the scan completes normally."""
    keys = write_images(tmp_path / "images", 12)
    Image.new("RGB", (80, 64), POISON_RGB).save(tmp_path / "images" / "04.png")
    markers = tmp_path / "markers"
    markers.mkdir()
    env = worker_env(tmp_path, redis_url, "gamma-fake", "faults.poison")
    env.update({"GAMMA_TEST_MARKERS": str(markers), "GAMMA_MAX_DELIVERIES": "3"})
    settings = Settings.from_env(env)
    with celery_worker(env, services_dir, concurrency=2, queue="faults.poison", include=HOOKS) as worker:
        scan_id = submit_scan(settings, str(tmp_path / "images")).scan_id
        wait_for(lambda: scan_state(settings.db_url, scan_id).status == "done", 120, "scan done despite the poison")
        assert worker.poll() is None
    engine = make_engine(settings.db_url)
    with session_factory(engine)() as session:
        rows = session.execute(
            select(ScanItem.key, Result.verdict, Result.error_reason)
            .join(Result, Result.id == ScanItem.result_id)
            .where(ScanItem.scan_id == scan_id)
        ).all()
    engine.dispose()
    lost = sorted(key for key, verdict, reason in rows if (verdict, reason) == ("error", "worker-lost"))
    assert len(rows) == len(keys) and "04.png" in lost and len(lost) == 2  # the poison chunk: 04.png and its pair
    assert [key for key, verdict, _ in rows if verdict == "error" and key not in lost] == []
    # three children died inside the backend call on that chunk (their markers were never removed)
    assert sorted(sorted(read_marker(path) or []) for path in markers.glob("*.busy")) == [lost] * 3
    scan = scan_state(settings.db_url, scan_id)
    assert (scan.status, scan.processed, scan.total, scan.errors) == ("done", len(keys), len(keys), 2)
    assert_no_duplicates(settings.db_url, keys, unread=2)  # worker-lost images were never read to the end
    detail = scan.detail or ""
    assert detail.count("redelivered") == 2 and detail.count("worker-lost") == 1, detail


@pytest.mark.slow  # ~100 s: kombu restores the chunk that was unacked when Redis went away only periodically
def test_redis_restarted_mid_scan_with_aof(tiny_checkpoint: Checkpoint, services_dir: Path, tmp_path: Path) -> None:
    directory = tmp_path / "redis"
    directory.mkdir()
    port = free_port()
    command = ["redis-server", "--bind", HOST, "--port", str(port), "--dir", str(directory), "--save", "",
               "--appendonly", "yes", "--appendfsync", "always", "--daemonize", "no"]  # fmt: skip

    def start() -> subprocess.Popen[bytes]:
        process = _popen(command, directory / "redis.log")
        wait_until(lambda: _redis_ping(port), 10, process, directory / "redis.log")
        return process

    redis = start()
    keys = write_images(tmp_path / "images", 12)
    markers = tmp_path / "markers"
    markers.mkdir()
    assert tiny_checkpoint.path is not None
    env = worker_env(tmp_path, f"redis://{HOST}:{port}/0", str(tiny_checkpoint.path), "faults.redis")
    # A slow backend (the test hooks) with busy markers: Redis is stopped while a child is provably in the middle
    # of a chunk, whatever the machine's load, so that chunk is unacked when the broker goes away.
    env.update({"GAMMA_TEST_INFER_DELAY_S": "2.0", "GAMMA_TEST_MARKERS": str(markers)})
    # The chunk that was running when the broker went away stays in Redis' unacked set (it survives in the
    # AOF) and comes back after the visibility timeout: shortened here (limits shortened to stay below it).
    env.update({"GAMMA_SOFT_TIME_LIMIT_S": "6", "GAMMA_TIME_LIMIT_S": "8", "GAMMA_RETRY_BACKOFF_MAX_S": "2"})
    env.update({"GAMMA_SUBMIT_SOFT_TIME_LIMIT_S": "9", "GAMMA_SUBMIT_TIME_LIMIT_S": "10"})
    env["GAMMA_VISIBILITY_TIMEOUT_S"] = "12"
    settings = Settings.from_env(env)
    try:
        scan_id = submit_scan(settings, str(tmp_path / "images")).scan_id  # 6 chunks, persisted by the AOF
        stop_process(redis)  # SIGTERM: Redis flushes the AOF and exits
        redis = start()  # the queue is back from the AOF
        with celery_worker(env, services_dir, concurrency=1, queue="faults.redis", include=HOOKS) as worker:
            wait_for(lambda: scan_state(settings.db_url, scan_id).processed >= 2, 90, "first chunk")
            wait_for_busy_child(worker.pid, markers, set(), 60)
            stop_process(redis)  # mid-chunk: the worker loses its broker with that chunk unacked
            time.sleep(1.0)
            redis = start()
            wait_for(lambda: scan_state(settings.db_url, scan_id).status == "done", 120, "scan done after restart")
    finally:
        stop_process(redis)
    scan = assert_complete(settings.db_url, scan_id, keys)
    assert "redelivered" in (scan.detail or ""), scan.detail


def test_triton_stopped_and_restarted_mid_scan(
    redis_url: str, triton_repository: Path, services_dir: Path, tmp_path: Path
) -> None:
    from deploy.triton_server import TritonServer

    if importlib.util.find_spec("pytriton") is None:
        pytest.skip("nvidia-pytriton (the tritonserver binary) is not installed: make setup")
    server = TritonServer(
        triton_repository, http_port=free_port(), grpc_port=free_port(), log_file=tmp_path / "triton.log"
    )
    # 100 chunks: with 6 (12 images) a quiet machine finished the scan between the first-chunk poll and the server's
    # stop, so no chunk ever saw UNAVAILABLE; the stop now lands with ~98 chunks still to go
    keys = write_images(tmp_path / "images", 200)
    env = worker_env(tmp_path, redis_url, "gamma-test", "faults.triton")
    env.update({"GAMMA_TRITON_URL": server.grpc_url, "GAMMA_RETRY_BACKOFF_MAX_S": "2", "GAMMA_MAX_RETRIES": "30"})
    env["GAMMA_TRITON_TIMEOUT_S"] = "10"
    settings = Settings.from_env(env)
    with on_termination(server.stop), server, celery_worker(env, services_dir, 1, queue="faults.triton"):
        scan_id = submit_scan(settings, str(tmp_path / "images")).scan_id
        wait_for(lambda: scan_state(settings.db_url, scan_id).processed >= 2, 90, "first chunk")
        server.stop()  # mid-scan: the next chunks get UNAVAILABLE and retry with backoff
        time.sleep(2.0)
        server.start().wait_ready(60)
        wait_for(lambda: scan_state(settings.db_url, scan_id).status == "done", 300, "scan done after restart")
    scan = assert_complete(settings.db_url, scan_id, keys)
    assert "retry" in (scan.detail or "") and "TritonUnavailable" in (scan.detail or ""), scan.detail


def test_the_database_refuses_connections_mid_scan(redis_url: str, services_dir: Path, tmp_path: Path) -> None:
    """PostgreSQL stopped (``pg_ctl stop -m fast``) for ~15 s mid-scan, then started on the same port and data:
    the chunks that met the outage retry with backoff, and the notes they could not write then are written once
    the database is back."""
    keys = write_images(tmp_path / "images", 24)
    with postgres_cluster() as postgres:
        env = worker_env(tmp_path, redis_url, "gamma-fake", "faults.db")
        env.update({"GAMMA_DB_URL": postgres.url, "GAMMA_TEST_INFER_DELAY_S": "1.0"})
        env.update({"GAMMA_RETRY_BACKOFF_S": "1", "GAMMA_RETRY_BACKOFF_MAX_S": "4", "GAMMA_MAX_RETRIES": "20"})
        settings = Settings.from_env(env)  # retries ride out >= 35 s of outage; this one lasts ~15 s
        with celery_worker(env, services_dir, concurrency=2, queue="faults.db", include=HOOKS):
            scan_id = submit_scan(settings, str(tmp_path / "images")).scan_id
            wait_for(lambda: scan_state(settings.db_url, scan_id).processed >= 4, 60, "first chunks")
            assert scan_state(settings.db_url, scan_id).processed <= len(keys) - 8  # chunks are left for the outage
            postgres.stop("fast")
            with pytest.raises(OperationalError):  # refused, not merely slow
                scan_state(settings.db_url, scan_id)
            time.sleep(15.0)
            postgres.start()
            wait_for(lambda: scan_state(settings.db_url, scan_id).status == "done", 90, "scan done after the outage")
        scan = assert_complete(settings.db_url, scan_id, keys)
        assert_no_duplicates(settings.db_url, keys)
    retries = [line for line in (scan.detail or "").splitlines() if " retry " in line]
    assert retries and all("OperationalError" in line for line in retries), scan.detail


def test_a_bug_whose_failure_cannot_be_recorded_requeues_the_chunk_in_a_real_worker(
    redis_url: str, services_dir: Path, tmp_path: Path
) -> None:
    """Issue 11 C: in a real prefork worker, a chunk fails with a bug while PostgreSQL refuses connections, so
    its failure cannot be recorded: the message must come back (not be acked without rows). Once the database is
    back, the next delivery records the chunk ``internal-error`` and the scan completes."""
    keys = write_images(tmp_path / "images", 6)
    Image.new("RGB", (80, 64), BUG_RGB).save(tmp_path / "images" / "02.png")
    gate = tmp_path / "gate"
    gate.mkdir()
    with postgres_cluster() as postgres:
        env = worker_env(tmp_path, redis_url, "gamma-fake", "faults.record")
        env.update({"GAMMA_DB_URL": postgres.url, "GAMMA_TEST_BUG_GATE": str(gate), "GAMMA_MAX_DELIVERIES": "3"})
        settings = Settings.from_env(env)
        with celery_worker(env, services_dir, concurrency=1, queue="faults.record", include=HOOKS):
            scan_id = submit_scan(settings, str(tmp_path / "images")).scan_id
            wait_for((gate / "waiting").exists, 60, "the bug chunk inferring")
            postgres.stop("fast")  # the task is about to fail, and recording that will be refused
            (gate / "go").touch()
            logs = lambda: "".join(p.read_text() for p in services_dir.glob("celery-*.log"))  # noqa: E731
            wait_for(lambda: "could not record the failure of chunk" in logs(), 60, "the refused record")
            postgres.start()
            wait_for(lambda: scan_state(settings.db_url, scan_id).status == "done", 90, "scan done after the outage")
        engine = make_engine(settings.db_url)
        with session_factory(engine)() as session:
            rows = session.execute(
                select(ScanItem.key, Result.verdict, Result.error_reason)
                .join(Result, Result.id == ScanItem.result_id)
                .where(ScanItem.scan_id == scan_id)
            ).all()
        engine.dispose()
    failed = sorted(key for key, verdict, reason in rows if (verdict, reason) == ("error", "internal-error"))
    assert len(rows) == len(keys) and "02.png" in failed and len(failed) == 2  # its chunk, recorded on redelivery
    assert "raised outside body" not in logs() and "requeueing it" in logs()
