"""Queueing a scan is bounded: the listing waits while the queue holds ``max_queued_chunks``, and still queues
every chunk once slow consumers make room — with a fake queue, and through ``submit_scan`` on kombu's in-memory
broker (the same passive declare that is ``LLEN`` on Redis)."""

from __future__ import annotations

import threading
import time
from collections import deque
from pathlib import Path
from typing import Any

import pytest
from celery.signals import after_task_publish
from kombu import Connection

from worker import submit
from worker.app import TASK_NAME, create_app, decode_refs
from worker.db import Scan, make_engine, session_factory
from worker.scans import Backpressure
from worker.settings import Settings
from worker.storage import ObjectRef
from worker.submit import QueueDepth, submit_scan


class SlowQueue:
    """A queue whose consumer takes one message every ``interval_s``; records the longest it ever was."""

    def __init__(self, interval_s: float) -> None:
        self.items: deque[list[ObjectRef]] = deque()
        self.taken: list[list[ObjectRef]] = []
        self.longest = 0
        self.lock = threading.Lock()
        self.interval_s = interval_s
        self.stop = threading.Event()
        self.consumer = threading.Thread(target=self._consume, daemon=True)

    def put(self, chunk: list[ObjectRef]) -> None:
        with self.lock:
            self.items.append(chunk)
            self.longest = max(self.longest, len(self.items))

    def depth(self) -> int:
        with self.lock:
            return len(self.items)

    def _consume(self) -> None:
        while not self.stop.is_set():
            with self.lock:
                if self.items:
                    self.taken.append(self.items.popleft())
            time.sleep(self.interval_s)


def test_the_queue_never_holds_more_than_the_bound_and_every_chunk_gets_through() -> None:
    queue = SlowQueue(interval_s=0.002)
    queue.consumer.start()
    chunks = [[ObjectRef(f"k{i}")] for i in range(300)]
    dispatch = Backpressure(queue.put, queue.depth, limit=7, poll_s=0.001)
    try:
        for chunk in chunks:
            dispatch(chunk)
        deadline = time.monotonic() + 30
        while queue.depth() and time.monotonic() < deadline:
            time.sleep(0.01)
    finally:
        queue.stop.set()
        queue.consumer.join()
    assert queue.longest == 7  # filled up to the bound, never past it
    assert queue.taken == chunks  # all of them, in order
    assert dispatch.sent == 300 and dispatch.waits > 0
    assert dispatch.looks - dispatch.waits <= 300 - 6  # a look that finds room for n serves n sends (7 at first)


def test_no_bound_never_asks_the_queue() -> None:
    sent: list[list[ObjectRef]] = []

    def depth() -> int:
        raise AssertionError("asked")

    dispatch = Backpressure(sent.append, depth, limit=0)
    for i in range(50):
        dispatch([ObjectRef(f"k{i}")])
    assert len(sent) == 50 and dispatch.looks == 0


def test_a_full_queue_is_polled_until_it_has_room() -> None:
    depths = iter([3, 3, 3, 1, 0])
    slept: list[float] = []
    sent: list[list[ObjectRef]] = []
    dispatch = Backpressure(sent.append, lambda: next(depths), limit=3, poll_s=0.5, sleep=slept.append)
    dispatch([ObjectRef("a")])  # 3, 3, 3 waiting; then 1 queued: room for 2
    dispatch([ObjectRef("b")])
    dispatch([ObjectRef("c")])  # room used up: looks again (0 queued)
    assert slept == [0.5, 0.5, 0.5] and len(sent) == 3 and dispatch.looks == 5


def test_queue_depth_reads_the_broker_and_an_absent_queue_is_empty() -> None:
    app = create_app(Settings(broker_url="memory://", queue="depth.test"))
    depth = QueueDepth(app, "depth.test.absent")
    try:
        assert depth() == 0
        depth.queue = "depth.test"
        with app.connection() as connection:
            channel = connection.default_channel
            channel.queue_declare("depth.test")
            channel.queue_purge("depth.test")
            for _ in range(4):
                app.send_task(TASK_NAME, args=[None, "file:///x", []], queue="depth.test")
            assert depth() == 4
            channel.basic_get("depth.test", no_ack=True)
            assert depth() == 3
            channel.queue_purge("depth.test")
    finally:
        depth.close()


def test_submit_scan_waits_for_slow_workers_and_queues_every_chunk(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """gamma-submit's path: 120 keys in chunks of 2 = 60 messages, at most 5 waiting at any publish."""
    folder = tmp_path / "images"
    folder.mkdir()
    for index in range(120):
        (folder / f"{index:03d}.jpg").write_bytes(b"x")
    settings = Settings(
        db_url=f"sqlite:///{tmp_path / 'gamma.db'}",
        broker_url="memory://",
        queue="backpressure.test",
        chunk_size=2,
        max_queued_chunks=5,
        model="gamma-nowhere",
    )
    monkeypatch.setattr(submit, "BACKPRESSURE_POLL_S", 0.002)
    observer = Connection("memory://")
    channel = observer.default_channel
    channel.queue_declare(settings.queue)
    channel.queue_purge(settings.queue)
    after_publish: list[int] = []
    lock = threading.Lock()

    def measure(sender: str | None = None, **_: Any) -> None:
        if sender == TASK_NAME:
            with lock:
                after_publish.append(channel.queue_declare(settings.queue, passive=True).message_count)

    consumed: list[str] = []
    stop = threading.Event()

    def worker() -> None:  # a slow consumer with its own connection: one message every 3 ms
        with Connection("memory://") as connection:
            own = connection.default_channel
            while not stop.is_set():
                with lock:
                    message = own.basic_get(settings.queue, no_ack=True)
                if message is not None:
                    consumed.extend(ref.key for ref in decode_refs(message.decode()[0][2]))
                time.sleep(0.003)

    consumer = threading.Thread(target=worker, daemon=True)
    after_task_publish.connect(measure)
    consumer.start()
    try:
        submitted = submit_scan(settings, str(folder))
        deadline = time.monotonic() + 30
        while len(consumed) < 120 and time.monotonic() < deadline:
            time.sleep(0.01)
    finally:
        stop.set()
        consumer.join()
        after_task_publish.disconnect(measure)
        observer.release()
    assert submitted.total == 120
    assert len(after_publish) == 60
    assert max(after_publish) == 5  # the bound was reached and never passed
    assert sorted(consumed) == sorted(f"{i:03d}.jpg" for i in range(120))  # every key, once
    engine = make_engine(settings.db_url)
    with session_factory(engine)() as session:
        scan = session.get(Scan, submitted.scan_id)
        assert scan is not None and (scan.status, scan.total) == ("running", 120)
    engine.dispose()


def test_the_bound_comes_from_the_environment_and_must_not_be_negative() -> None:
    assert Settings().max_queued_chunks == 1000
    assert Settings.from_env({"GAMMA_MAX_QUEUED_CHUNKS": "0"}).max_queued_chunks == 0
    with pytest.raises(ValueError, match="max_queued_chunks"):
        Settings(max_queued_chunks=-1)


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


def test_a_listing_past_its_time_budget_stops_waiting_and_says_so() -> None:
    """In the beat task: rather than be killed half-listed, queue the rest once the budget is spent."""
    clock = FakeClock()
    sent: list[list[ObjectRef]] = []
    notes: list[str] = []
    dispatch = Backpressure(
        sent.append,
        lambda: 10,
        limit=10,
        poll_s=1.0,
        sleep=clock.sleep,
        clock=clock,
        lift_after_s=30,
        on_lift=notes.append,
    )
    for i in range(25):
        dispatch([ObjectRef(f"k{i}")])
    assert len(sent) == 25 and clock.now == 30.0  # waited 30 polls, then sent everything
    assert len(notes) == 1 and "time budget" in notes[0] and dispatch.lifted == notes[0]


def test_a_full_queue_nobody_drains_lifts_the_bound_but_a_draining_one_does_not() -> None:
    clock = FakeClock()
    sent: list[list[ObjectRef]] = []
    stuck = Backpressure(sent.append, lambda: 4, limit=4, poll_s=1.0, sleep=clock.sleep, clock=clock, stall_s=60)
    stuck([ObjectRef("a")])
    assert len(sent) == 1 and clock.now == 60.0 and "none taken for 60 s" in stuck.lifted

    clock = FakeClock()
    slow_sent: list[list[ObjectRef]] = []

    def draining() -> int:  # 4 queued at first, one chunk taken every 50 s: slow workers, not absent ones
        return 4 + len(slow_sent) - int(clock.now // 50)

    slow = Backpressure(slow_sent.append, draining, limit=5, poll_s=1.0, sleep=clock.sleep, clock=clock, stall_s=60)
    for key in "bcde":  # room for one; then each waits for the next chunk taken (50 s < 60 s of stall)
        slow([ObjectRef(key)])
    assert slow.lifted == "" and clock.now == 150.0 and len(slow_sent) == 4
