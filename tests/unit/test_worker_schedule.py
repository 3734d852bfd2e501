"""Beat schedule from configuration, and the beat task submitting a scan like gamma-submit (in-memory broker)."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from celery.schedules import crontab
from PIL import Image
from sqlalchemy import select

from worker import tasks
from worker.app import create_app
from worker.db import Scan, ScanItem, make_engine, migrate, session_factory
from worker.records import add_scan_items, claim_scan
from worker.schedule import SUBMIT_TASK_NAME, ScheduleError, beat_schedule, load_schedule, parse_cron, submit_key
from worker.settings import Settings
from worker.storage import LocalSource


def test_json_schedule_parses_into_crontab_entries() -> None:
    value = (
        '[{"source": "s3://b/p", "cron": "0 2 * * *"}, {"source": "/data/x", "cron": "*/15 * * * 1-5", "full": true}]'
    )
    entries = load_schedule(value)
    schedule = beat_schedule(entries, "gamma.scan")
    first, second = schedule.values()
    assert first["task"] == SUBMIT_TASK_NAME and first["args"] == ["s3://b/p"]
    assert first["kwargs"] == {"full": False, "entry": "scan s3://b/p at 0 2 * * *"}
    assert first["schedule"] == crontab(minute="0", hour="2")
    assert first["options"] == {"queue": "gamma.scan"}
    assert second["schedule"] == crontab(minute="*/15", day_of_week="1-5")
    assert second["kwargs"] == {"full": True, "entry": "scan /data/x at */15 * * * 1-5"}
    assert second["schedule"].minute == set(range(0, 60, 15))


def test_an_entry_may_name_its_coverage() -> None:
    value = json.dumps([
        {"source": "s3://b/p", "cron": "0 2 * * *", "coverage": " FULL"},
        {"source": "s3://b/q", "cron": "0 3 * * *"},
    ])  # fmt: skip
    with_coverage, without = beat_schedule(load_schedule(value), "gamma.scan").values()
    assert with_coverage["kwargs"] == {"full": False, "entry": "scan s3://b/p at 0 2 * * *", "coverage": "full"}
    assert "coverage" not in without["kwargs"]  # the submitting worker's GAMMA_COVERAGE


def test_toml_file_schedule_and_the_app_carries_it(tmp_path: Path) -> None:
    path = tmp_path / "schedule.toml"
    path.write_text('[[scan]]\nsource = "s3://uploads/daily/"\ncron = "30 3 * * 0"\nname = "uploads-nightly"\n')
    app = create_app(Settings(broker_url="memory://", schedule=str(path)))
    entry = app.conf.beat_schedule["uploads-nightly"]
    assert entry["schedule"] == crontab(minute="30", hour="3", day_of_week="0")
    assert entry["args"] == ["s3://uploads/daily/"]
    assert app.conf.timezone == "UTC"
    assert create_app(Settings(broker_url="memory://")).conf.beat_schedule == {}


@pytest.mark.parametrize(
    "value",
    [
        '[{"source": "s3://b/p", "cron": "0 2 * *"}]',
        '[{"source": "s3://b/p", "cron": "61 2 * * *"}]',
        '[{"cron": "0 2 * * *"}]',
        '[{"source": "s3://b/p", "cron": "0 2 * * *", "when": "now"}]',
        '[{"source": "s3://b/p", "cron": "0 2 * * *", "coverage": "everything"}]',
        "{not json",
        "/no/such/schedule.toml",
    ],
)
def test_bad_schedules_fail_at_start(value: str) -> None:
    with pytest.raises(ScheduleError):
        load_schedule(value)
    with pytest.raises(ScheduleError):
        parse_cron("0 2 * *")


@pytest.fixture
def eager_tasks(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Settings]:
    settings = Settings(
        db_url=f"sqlite:///{tmp_path / 'gamma.db'}",
        broker_url="memory://",
        queue="beat.test",
        chunk_size=2,
        model="gamma-nowhere",  # no checkpoint here: version unknown, nothing skipped at listing
    )
    monkeypatch.setattr(tasks, "settings", settings)
    tasks.app.conf.task_always_eager = True
    yield settings
    tasks.app.conf.task_always_eager = False


def test_the_beat_task_creates_a_scan_and_enqueues_its_chunks(tmp_path: Path, eager_tasks: Settings) -> None:
    folder = tmp_path / "images"
    folder.mkdir()
    for index in range(5):
        Image.new("RGB", (20, 20), (index, 0, 0)).save(folder / f"{index}.png")
    app = create_app(eager_tasks)
    with app.connection() as connection:
        channel = connection.default_channel
        channel.queue_declare(eager_tasks.queue)
        channel.queue_purge(eager_tasks.queue)
        result = tasks.submit_scheduled.apply(args=[str(folder)])
        assert result.successful(), result.traceback
        scan_id = result.get()["scan_id"]
        assert result.get()["total"] == 5
        messages = []
        while (message := channel.basic_get(eager_tasks.queue)) is not None:
            messages.append(message)
    assert len(messages) == 3  # 5 keys in chunks of 2
    bodies = [m.decode() for m in messages]
    assert {m.headers["task"] for m in messages} == {"gamma.scan_chunk"}
    keys = sorted(item[0] for args, kwargs, _ in bodies for item in args[2])
    assert keys == [f"{i}.png" for i in range(5)] and all(args[0] == scan_id for args, _, _ in bodies)
    engine = make_engine(eager_tasks.db_url)
    with session_factory(engine)() as session:
        scan = session.get(Scan, scan_id)
        assert scan is not None and (scan.status, scan.total) == ("running", 5)
        assert session.query(ScanItem).filter_by(scan_id=scan_id).count() == 5
    engine.dispose()


def test_the_beat_task_scans_under_the_entry_coverage(tmp_path: Path, eager_tasks: Settings) -> None:
    """An entry's coverage overrides the worker's (here the default, five) for that scan and all its chunks."""
    assert eager_tasks.coverage == "five"
    folder = _images(tmp_path / "images")
    app = create_app(eager_tasks)
    with app.connection() as connection:
        channel = connection.default_channel
        channel.queue_declare(eager_tasks.queue)
        channel.queue_purge(eager_tasks.queue)
        result = tasks.submit_scheduled.apply(args=[str(folder)], kwargs={"coverage": "full"})
        assert result.successful(), result.traceback
        messages = _drain(channel, eager_tasks.queue)
    assert messages and {m.decode()[1]["coverage"] for m in messages} == {"full"}
    engine = make_engine(eager_tasks.db_url)
    with session_factory(engine)() as session:
        scan = session.get(Scan, result.get()["scan_id"])
        assert scan is not None and scan.coverage == "full"
    engine.dispose()


def _images(folder: Path, count: int = 5) -> Path:
    folder.mkdir()
    for index in range(count):
        Image.new("RGB", (20, 20), (index, 0, 0)).save(folder / f"{index}.png")
    return folder


def _drain(channel: Any, queue: str) -> list[Any]:
    messages = []
    while (message := channel.basic_get(queue, no_ack=True)) is not None:
        messages.append(message)
    return messages


def _scans(settings: Settings) -> list[tuple[int, str, int, str | None]]:
    engine = make_engine(settings.db_url)
    with session_factory(engine)() as session:
        rows = session.execute(select(Scan.id, Scan.status, Scan.total, Scan.submit_key).order_by(Scan.id)).all()
    engine.dispose()
    return [tuple(row) for row in rows]  # type: ignore[misc]


def test_two_deliveries_of_one_beat_message_make_one_scan(tmp_path: Path, eager_tasks: Settings) -> None:
    """Beat publishes the entry (the fire minute is stamped into the message); the worker runs that message twice
    (a redelivery): one scan, its chunks queued once, the second run reports the scan that is there."""
    folder = _images(tmp_path / "images")
    settings = eager_tasks.replace(schedule=json.dumps([{"source": str(folder), "cron": "0 2 * * *", "name": "n"}]))
    app = create_app(settings)
    entry = app.conf.beat_schedule["n"]
    with app.connection() as connection:
        channel = connection.default_channel
        channel.queue_declare(settings.queue)
        channel.queue_purge(settings.queue)
        app.send_task(entry["task"], args=entry["args"], kwargs=entry["kwargs"], **entry["options"])
        (beat_message,) = _drain(channel, settings.queue)
        args, kwargs, _ = beat_message.decode()
        assert kwargs["entry"] == "n" and re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\dZ", kwargs["fired_at"])
        first = tasks.submit_scheduled.apply(args=args, kwargs=kwargs)
        chunks = _drain(channel, settings.queue)
        second = tasks.submit_scheduled.apply(args=args, kwargs=kwargs)
        again = _drain(channel, settings.queue)
    assert first.successful() and second.successful(), (first.traceback, second.traceback)
    assert first.get()["scan_id"] == second.get()["scan_id"]
    assert (first.get()["existing"], second.get()["existing"], second.get()["total"]) == (0, 1, 5)
    assert len(chunks) == 3 and again == []  # 5 keys in chunks of 2, queued by the first delivery only
    assert _scans(settings) == [(first.get()["scan_id"], "running", 5, f"n@{kwargs['fired_at']}")]
    # The next firing is another scan.
    later = tasks.submit_scheduled.apply(args=args, kwargs={**kwargs, "fired_at": "2099-01-01T02:00Z"})
    assert later.get()["scan_id"] != first.get()["scan_id"] and len(_scans(settings)) == 2


def test_a_scan_left_listing_by_a_dead_worker_is_listed_again_into_the_same_scan(
    tmp_path: Path, eager_tasks: Settings
) -> None:
    folder = _images(tmp_path / "images")
    engine = make_engine(eager_tasks.db_url)
    migrate(engine)
    sessions = session_factory(engine)
    with sessions.begin() as session:  # what the first delivery got to before its worker died
        scan_id, status = claim_scan(session, LocalSource(folder).uri, "gamma-nowhere", "n@2026-12-01T02:00Z")
        add_scan_items(session, scan_id, ["0.png", "1.png"])
    engine.dispose()
    assert status is None
    result = tasks.submit_scheduled.apply(args=[str(folder)], kwargs={"entry": "n", "fired_at": "2026-12-01T02:00Z"})
    assert result.get() == {"scan_id": scan_id, "total": 5, "existing": 1}
    assert _scans(eager_tasks) == [(scan_id, "running", 5, "n@2026-12-01T02:00Z")]


def test_the_beat_task_has_a_listing_time_limit_under_the_visibility_timeout() -> None:
    task = tasks.submit_scheduled
    assert (task.soft_time_limit, task.time_limit) == (
        tasks.settings.submit_soft_time_limit_s,
        tasks.settings.submit_time_limit_s,
    )
    assert task.soft_time_limit > tasks.settings.soft_time_limit_s  # a listing, not a chunk
    assert task.acks_late and task.reject_on_worker_lost
    assert Settings().submit_time_limit_s < Settings().visibility_timeout_s
    with pytest.raises(ValueError, match="submit_time_limit_s"):
        Settings(submit_time_limit_s=Settings().visibility_timeout_s)
    assert submit_key("n", "2026-12-01T02:00Z") == "n@2026-12-01T02:00Z"
    assert len(submit_key("x" * 600, "2026-12-01T02:00Z")) <= 512
