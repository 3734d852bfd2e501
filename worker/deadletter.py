"""Chunks no worker can record: kept in the broker's Redis for people (and ``gamma-submit --wait``) to see.

A chunk whose scan is not in the worker's database (the submitter wrote the scan to another database: two
relative ``sqlite:///gamma.db`` URLs resolved in two directories, a worker pointed at the wrong server) can
never be recorded by that worker. It is requeued at most ``GAMMA_MAX_DELIVERIES`` times without being inferred
(another worker, with the right database, may take it), then dead-lettered here and acknowledged, instead of
going round forever.

Entries are JSON in a Redis list per queue (``gamma:dead-letter:<queue>``, newest first, at most
:data:`MAX_ENTRIES`, expiring after :data:`TTL_S`): the message's arguments, so it can be sent again, and why.
A broker that is not Redis keeps nothing here: the worker's log line is then the only record.
"""

from __future__ import annotations

import json
import logging
import os
import socket
from pathlib import Path
from typing import Any

from sqlalchemy.engine import make_url

log = logging.getLogger(__name__)

PREFIX = "gamma:dead-letter:"
MAX_ENTRIES = 1000
TTL_S = 7 * 24 * 3600


def database_identity(db_url: str) -> str:
    """``db_url`` as it can be shown: no password, and an SQLite file as the absolute path it opens."""
    try:
        url = make_url(absolute_sqlite_url(db_url))
    except Exception:  # not a URL SQLAlchemy reads: show only its scheme
        return db_url.split("://", 1)[0] + "://?"
    return url.render_as_string(hide_password=True)


def absolute_sqlite_url(db_url: str, cwd: str | Path | None = None) -> str:
    """``sqlite:///relative.db`` as ``sqlite:////abs/dir/relative.db`` (resolved against ``cwd``, by default this
    process's working directory); any other URL (absolute SQLite, ``:memory:``, PostgreSQL) unchanged."""
    scheme, sep, rest = db_url.partition(":///")
    if not sep or not scheme.startswith("sqlite") or not rest or rest.startswith(("/", ":memory:")) or "?" in rest:
        return db_url
    return f"{scheme}:///{(Path(cwd or os.getcwd()) / rest).resolve()}"


def is_relative_sqlite(db_url: str) -> bool:
    return absolute_sqlite_url(db_url, "/") != db_url


def _client(broker_url: str) -> Any:
    if not broker_url.startswith(("redis://", "rediss://", "unix://")):
        return None
    import redis

    return redis.Redis.from_url(broker_url, socket_timeout=5, socket_connect_timeout=5)


def dead_letter(broker_url: str, queue: str, entry: dict[str, Any]) -> bool:
    """Keep ``entry`` (JSON-able) in the queue's dead-letter list; False if it could not be kept (not Redis, or
    Redis unreachable: the caller's log line is then the only record)."""
    client = _client(broker_url)
    if client is None:
        return False
    entry = {"worker": socket.gethostname(), "pid": os.getpid(), **entry}
    try:
        pipe = client.pipeline()
        pipe.lpush(PREFIX + queue, json.dumps(entry, default=str))
        pipe.ltrim(PREFIX + queue, 0, MAX_ENTRIES - 1)
        pipe.expire(PREFIX + queue, TTL_S)
        pipe.execute()
        return True
    except Exception as exc:  # never raise from here (and never log the broker URL)
        log.warning("could not dead-letter a chunk in the broker (%s)", type(exc).__name__)
        return False
    finally:
        client.close()


def dead_letters(broker_url: str, queue: str, scan_id: int | None = None, source_uri: str | None = None) -> list[dict]:
    """The queue's dead-lettered chunks (newest first), only those of ``scan_id``/``source_uri`` when given;
    ``[]`` when none, when the broker is not Redis, or when it cannot be asked."""
    client = _client(broker_url)
    if client is None:
        return []
    try:
        raw = client.lrange(PREFIX + queue, 0, MAX_ENTRIES - 1)
    except Exception as exc:
        log.warning("could not read the dead-letter list (%s)", type(exc).__name__)
        return []
    finally:
        client.close()
    entries = []
    for item in raw:
        try:
            entry = json.loads(item)
        except ValueError:
            continue
        if scan_id is not None and entry.get("scan_id") != scan_id:
            continue
        if source_uri is not None and entry.get("source_uri") != source_uri:
            continue
        entries.append(entry)
    return entries
