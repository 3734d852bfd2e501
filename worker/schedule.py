"""Nightly (or any cron) scans from configuration, for ``celery -A worker.app beat``.

``GAMMA_SCHEDULE`` is either inline JSON or the path of a TOML/JSON file:

    GAMMA_SCHEDULE='[{"source": "s3://uploads/daily/", "cron": "0 2 * * *"}]'
    GAMMA_SCHEDULE=/etc/gamma/schedule.toml

    # schedule.toml
    [[scan]]
    source = "s3://uploads/daily/"
    cron = "0 2 * * *"          # minute hour day-of-month month day-of-week, UTC
    full = false                 # optional: true re-infers everything (default: incremental)
    coverage = "full"            # optional: centre|five|full tiles per image (default: the worker's GAMMA_COVERAGE)
    name = "uploads-nightly"     # optional: the beat entry's name

Each entry becomes a beat entry that sends :data:`SUBMIT_TASK_NAME` with the source; a worker runs it and
submits the scan exactly as ``gamma-submit`` does (:func:`worker.submit.submit_scan`). Errors in the schedule
fail at start (worker, beat, or ``python -m worker.schedule`` to check a file), never at 2 am.

One scan per (entry, fire time): the message carries the entry's name, and the minute it was published — beat
publishes at the fire time, and cron's resolution is the minute — is stamped into it as ``fired_at`` when it is
published (:func:`stamp_fire_time`), so every delivery of that message (a redelivery after a worker died
mid-listing) carries the same :func:`submit_key`, and the scan is claimed under that unique key.
"""

from __future__ import annotations

import hashlib
import json
import sys
import tomllib
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from celery.schedules import crontab
from celery.signals import before_task_publish

from gamma.tiling import parse_coverage  # numpy only

SUBMIT_TASK_NAME = "gamma.submit_scan"


class ScheduleError(ValueError):
    """The schedule configuration is malformed."""


@dataclass(frozen=True)
class ScheduledScan:
    source: str
    cron: str
    full: bool = False
    name: str = ""
    coverage: str = ""  # "": the submitting worker's GAMMA_COVERAGE

    @property
    def entry_name(self) -> str:
        return self.name or f"scan {self.source} at {self.cron}"


def parse_cron(expression: str) -> crontab:
    """A five-field cron expression as a celery ``crontab`` (validated: celery parses each field)."""
    fields = expression.split()
    if len(fields) != 5:
        raise ScheduleError(f"cron {expression!r}: expected 5 fields (minute hour day-of-month month day-of-week)")
    minute, hour, day_of_month, month_of_year, day_of_week = fields
    try:
        schedule = crontab(
            minute=minute, hour=hour, day_of_month=day_of_month, month_of_year=month_of_year, day_of_week=day_of_week
        )
    except ValueError as error:
        raise ScheduleError(f"cron {expression!r}: {error}") from error
    return schedule


def _entries(raw: Any) -> list[ScheduledScan]:
    if isinstance(raw, dict):
        raw = raw.get("scan", raw.get("scans", []))
    if not isinstance(raw, list):
        raise ScheduleError("the schedule must be a list of {source, cron} tables")
    entries = []
    for index, item in enumerate(raw):
        if (
            not isinstance(item, dict)
            or not isinstance(item.get("source"), str)
            or not isinstance(item.get("cron"), str)
        ):
            raise ScheduleError(f"entry {index}: needs string 'source' and 'cron', got {item!r}")
        unknown = set(item) - {"source", "cron", "full", "name", "coverage"}
        if unknown:
            raise ScheduleError(f"entry {index}: unknown keys {sorted(unknown)}")
        coverage = item.get("coverage", "")
        try:
            coverage = parse_coverage(coverage).value if coverage else ""
        except ValueError as error:
            raise ScheduleError(f"entry {index}: {error}") from error
        entry = ScheduledScan(
            item["source"], item["cron"], bool(item.get("full", False)), str(item.get("name", "")), coverage
        )
        parse_cron(entry.cron)
        entries.append(entry)
    names = [e.entry_name for e in entries]
    if len(set(names)) != len(names):
        raise ScheduleError(f"duplicate schedule entries: {names}")
    return entries


def load_schedule(value: str) -> list[ScheduledScan]:
    """``GAMMA_SCHEDULE``: inline JSON (starts with ``[`` or ``{``), or a ``.toml``/``.json`` file path; '' = none."""
    value = value.strip()
    if not value:
        return []
    if value[0] in "[{":
        try:
            return _entries(json.loads(value))
        except json.JSONDecodeError as error:
            raise ScheduleError(f"GAMMA_SCHEDULE is not valid JSON: {error}") from error
    path = Path(value)
    if not path.is_file():
        raise ScheduleError(f"GAMMA_SCHEDULE={value!r}: neither JSON nor an existing file")
    text = path.read_text()
    try:
        return _entries(tomllib.loads(text) if path.suffix != ".json" else json.loads(text))
    except (tomllib.TOMLDecodeError, json.JSONDecodeError) as error:
        raise ScheduleError(f"{path}: {error}") from error


def beat_schedule(entries: list[ScheduledScan], queue: str) -> dict[str, dict[str, Any]]:
    """Celery ``beat_schedule`` entries for ``entries``."""
    return {
        entry.entry_name: {
            "task": SUBMIT_TASK_NAME,
            "schedule": parse_cron(entry.cron),
            "args": [entry.source],
            "kwargs": _submit_kwargs(entry),
            "options": {"queue": queue},
        }
        for entry in entries
    }


def _submit_kwargs(entry: ScheduledScan) -> dict[str, Any]:
    kwargs: dict[str, Any] = {"full": entry.full, "entry": entry.entry_name}
    if entry.coverage:  # only when the entry sets it: entries without one keep the worker's GAMMA_COVERAGE
        kwargs["coverage"] = entry.coverage
    return kwargs


MAX_SUBMIT_KEY = 512  # scans.submit_key


def fire_minute(moment: datetime) -> str:
    """A fire time as messages carry it: UTC, to the minute (``2026-12-01T02:00Z``)."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%MZ")


def submit_key(entry: str, fired_at: str) -> str:
    """The unique key of the scan that beat entry ``entry`` fired at ``fired_at`` (hashed if it is too long)."""
    key = f"{entry}@{fired_at}"
    return key if len(key) <= MAX_SUBMIT_KEY else "sha256:" + hashlib.sha256(key.encode()).hexdigest()


@before_task_publish.connect
def stamp_fire_time(sender: str | None = None, body: Any = None, **_: Any) -> None:
    """Write the publishing minute into a submit message's kwargs as ``fired_at`` (unless it has one): beat
    publishes an entry at its fire time, so that minute names the firing, and a redelivery carries it unchanged.
    Runs in the publishing process (beat), before the message is serialised."""
    if sender != SUBMIT_TASK_NAME:
        return
    kwargs = body[1] if isinstance(body, tuple | list) and len(body) > 1 else None  # protocol 2: (args, kwargs, embed)
    if isinstance(body, dict):  # protocol 1
        kwargs = body.get("kwargs")
    if isinstance(kwargs, dict) and not kwargs.get("fired_at"):
        kwargs["fired_at"] = fire_minute(datetime.now(UTC))


def main(argv: list[str] | None = None) -> int:
    """``python -m worker.schedule [VALUE]``: check a schedule (default ``$GAMMA_SCHEDULE``) and print it."""
    from worker.settings import Settings

    argv = sys.argv[1:] if argv is None else argv
    value = argv[0] if argv else Settings.from_env().schedule
    for entry in load_schedule(value):
        print(f"{entry.cron:20s} {entry.source}{'  (full)' if entry.full else ''}  [{entry.entry_name}]")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
