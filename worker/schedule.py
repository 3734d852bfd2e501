"""Nightly (or any cron) scans from configuration, for ``celery -A worker.app beat``.

``GAMMA_SCHEDULE`` is either inline JSON or the path of a TOML/JSON file:

    GAMMA_SCHEDULE='[{"source": "s3://uploads/daily/", "cron": "0 2 * * *"}]'
    GAMMA_SCHEDULE=/etc/gamma/schedule.toml

    # schedule.toml
    [[scan]]
    source = "s3://uploads/daily/"
    cron = "0 2 * * *"          # minute hour day-of-month month day-of-week, UTC
    full = false                 # optional: true re-infers everything (default: incremental)
    name = "uploads-nightly"     # optional: the beat entry's name

Each entry becomes a beat entry that sends :data:`SUBMIT_TASK_NAME` with the source; a worker runs it and
submits the scan exactly as ``gamma-submit`` does (:func:`worker.submit.submit_scan`). Errors in the schedule
fail at start (worker, beat, or ``python -m worker.schedule`` to check a file), never at 2 am.
"""

from __future__ import annotations

import json
import sys
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from celery.schedules import crontab

SUBMIT_TASK_NAME = "gamma.submit_scan"


class ScheduleError(ValueError):
    """The schedule configuration is malformed."""


@dataclass(frozen=True)
class ScheduledScan:
    source: str
    cron: str
    full: bool = False
    name: str = ""

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
        unknown = set(item) - {"source", "cron", "full", "name"}
        if unknown:
            raise ScheduleError(f"entry {index}: unknown keys {sorted(unknown)}")
        entry = ScheduledScan(item["source"], item["cron"], bool(item.get("full", False)), str(item.get("name", "")))
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
            "kwargs": {"full": entry.full},
            "options": {"queue": queue},
        }
        for entry in entries
    }


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
