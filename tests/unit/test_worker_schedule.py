"""Beat schedule from configuration, and the beat task submitting a scan like gamma-submit (in-memory broker)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from celery.schedules import crontab
from PIL import Image

from worker import tasks
from worker.app import create_app
from worker.db import Scan, ScanItem, make_engine, session_factory
from worker.schedule import SUBMIT_TASK_NAME, ScheduleError, beat_schedule, load_schedule, parse_cron
from worker.settings import Settings


def test_json_schedule_parses_into_crontab_entries() -> None:
    value = (
        '[{"source": "s3://b/p", "cron": "0 2 * * *"}, {"source": "/data/x", "cron": "*/15 * * * 1-5", "full": true}]'
    )
    entries = load_schedule(value)
    schedule = beat_schedule(entries, "gamma.scan")
    first, second = schedule.values()
    assert first["task"] == SUBMIT_TASK_NAME and first["args"] == ["s3://b/p"] and first["kwargs"] == {"full": False}
    assert first["schedule"] == crontab(minute="0", hour="2")
    assert first["options"] == {"queue": "gamma.scan"}
    assert second["schedule"] == crontab(minute="*/15", day_of_week="1-5") and second["kwargs"] == {"full": True}
    assert second["schedule"].minute == set(range(0, 60, 15))


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
