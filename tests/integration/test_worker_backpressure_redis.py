"""Backpressure against a real redis-server: the queue depth gamma-submit reads is Redis' own count of waiting
messages, and a listing with a slow consumer keeps the list at or under ``max_queued_chunks``."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest
import redis
from kombu import Connection

from worker import submit
from worker.app import TASK_NAME, create_app, decode_refs
from worker.settings import Settings
from worker.submit import QueueDepth, submit_scan

pytestmark = pytest.mark.integration


def test_queue_depth_is_the_length_of_the_redis_list(redis_url: str) -> None:
    app = create_app(Settings(broker_url=redis_url, queue="depth.redis"))
    depth = QueueDepth(app, "depth.redis")
    client = redis.Redis.from_url(redis_url)
    try:
        client.delete("depth.redis")
        assert depth() == 0  # Redis has no empty lists: "no such queue" is an empty one
        for _ in range(3):
            app.send_task(TASK_NAME, args=[None, "file:///x", []], queue="depth.redis")
        assert client.llen("depth.redis") == 3 and depth() == 3
        client.lpop("depth.redis")
        assert depth() == 2
    finally:
        client.delete("depth.redis")
        client.close()
        depth.close()


def test_a_listing_never_puts_more_than_the_bound_into_redis(
    redis_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = tmp_path / "images"
    folder.mkdir()
    for index in range(60):
        (folder / f"{index:02d}.jpg").write_bytes(b"x")
    settings = Settings(
        db_url=f"sqlite:///{tmp_path / 'gamma.db'}",
        broker_url=redis_url,
        queue="backpressure.redis",
        chunk_size=2,
        max_queued_chunks=4,
        model="gamma-nowhere",
    )
    monkeypatch.setattr(submit, "BACKPRESSURE_POLL_S", 0.005)
    client = redis.Redis.from_url(redis_url)
    client.delete(settings.queue)
    longest = [0]
    consumed: list[str] = []
    stop = threading.Event()

    def watch_and_consume() -> None:  # samples LLEN every millisecond; takes one message every 10 ms
        with Connection(redis_url) as connection:
            channel = connection.default_channel
            last_take = 0.0
            while not stop.is_set():
                longest[0] = max(longest[0], int(client.llen(settings.queue)))
                if time.monotonic() - last_take >= 0.01:
                    last_take = time.monotonic()
                    try:
                        message = channel.basic_get(settings.queue, no_ack=True)
                    except connection.channel_errors:  # not created yet / empty
                        message = None
                    if message is not None:
                        consumed.extend(ref.key for ref in decode_refs(message.decode()[0][2]))
                time.sleep(0.001)

    consumer = threading.Thread(target=watch_and_consume, daemon=True)
    consumer.start()
    try:
        submitted = submit_scan(settings, str(folder))
        deadline = time.monotonic() + 30
        while len(consumed) < 60 and time.monotonic() < deadline:
            time.sleep(0.01)
    finally:
        stop.set()
        consumer.join()
        client.delete(settings.queue)
        client.close()
    assert submitted.total == 60
    assert sorted(consumed) == [f"{i:02d}.jpg" for i in range(60)]  # 30 chunks, every key once
    assert 1 <= longest[0] <= 4
