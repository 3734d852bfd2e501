"""Upserts converge on one row per natural key, on SQLite and on a real PostgreSQL server.

The SQLite case runs everywhere; the PostgreSQL case starts a throwaway cluster (tests/fixtures/services.py).
"""

from __future__ import annotations

import hashlib

import pytest
from sqlalchemy import Engine, func, select
from sqlalchemy.orm import sessionmaker

from tests.fixtures.concurrency import run_at_once
from worker.db import Image, Result, Scan, ScanItem, session_factory
from worker.outcome import Outcome
from worker.records import add_scan_items, create_scan, finish_listing, record_outcomes, scan_summary


@pytest.fixture
def engine(migrated_engine: Engine) -> Engine:
    """SQLite and PostgreSQL (tests/fixtures/services.py)."""
    return migrated_engine


def _outcomes(keys: list[str], verdict: str = "real") -> list[Outcome]:
    """Outcomes as the pipeline makes them; each key has its own content."""
    return [
        Outcome(key=key, sha256=hashlib.sha256(key.encode()).hexdigest(), verdict=verdict, size=10, probability=0.1)
        for key in keys
    ]


def _counts(sessions: sessionmaker) -> tuple[int, int, int]:
    with sessions() as session:
        return tuple(session.scalar(select(func.count()).select_from(t)) for t in (Image, Result, ScanItem))  # type: ignore[return-value]


def test_recording_the_same_chunk_twice_leaves_one_row_each(engine: Engine) -> None:
    sessions = session_factory(engine)
    keys = [f"k{i}.jpg" for i in range(5)]
    with sessions.begin() as session:
        scan_id = create_scan(session, "s3://b/p", "gamma-test")
        add_scan_items(session, scan_id, keys)
        finish_listing(session, scan_id, len(keys))
    for verdict in ("real", "ai-generated"):  # a redelivery may even disagree (new weights): the last write wins
        with sessions.begin() as session:
            record_outcomes(session, scan_id, "b", "gamma-test", 1, _outcomes(keys, verdict))
    assert _counts(sessions) == (5, 5, 5)
    with sessions() as session:
        summary = scan_summary(session, scan_id)
        assert session.scalars(select(Result.verdict).distinct()).all() == ["ai-generated"]
    assert (summary.status, summary.processed, summary.total) == ("done", 5, 5)
    assert summary.verdicts == {"ai-generated": 5}


def test_a_second_scan_reuses_results_and_a_new_model_version_adds_them(engine: Engine) -> None:
    sessions = session_factory(engine)
    keys = ["a.jpg", "b.jpg"]
    for version in (1, 1, 2):
        with sessions.begin() as session:
            scan_id = create_scan(session, "s3://b/p", "gamma-test")
            add_scan_items(session, scan_id, keys)
            finish_listing(session, scan_id, 2)
            record_outcomes(session, scan_id, "b", "gamma-test", version, _outcomes(keys))
    images, results, items = _counts(sessions)
    assert (images, results, items) == (2, 4, 6)  # results per (content, model, version); items per (scan, key)
    with sessions() as session:
        assert session.scalar(select(func.count()).where(Scan.status == "done")) == 3


def test_duplicate_content_and_unread_objects_in_one_chunk(engine: Engine) -> None:
    sessions = session_factory(engine)
    same = "f" * 64
    outcomes = [
        Outcome(key="copy1.jpg", sha256=same, verdict="real", probability=0.2),
        Outcome(key="copy2.jpg", sha256=same, verdict="real", probability=0.2),
        Outcome.failed("gone.jpg", "s3://b/gone.jpg", "missing", "deleted after listing"),
    ]
    for _ in range(2):
        with sessions.begin() as session:
            scan_id = create_scan(session, "s3://b/", "gamma-test")
            finish_listing(session, scan_id, 3)
            record_outcomes(session, scan_id, "b", "gamma-test", 1, outcomes)
    images, results, items = _counts(sessions)
    assert (images, results, items) == (2, 2, 6)  # the missing object has a result but no image row
    with sessions() as session:
        summary = scan_summary(session, scan_id)
    assert summary.verdicts == {"real": 2, "error": 1}
    assert summary.error_reasons == {"missing": 1}


def test_concurrent_chunks_of_one_scan_neither_duplicate_nor_leave_it_open(engine: Engine) -> None:
    """Two workers commit overlapping chunks at the same time (a redelivery racing the original)."""
    sessions = session_factory(engine)
    keys = [f"k{i:02d}.jpg" for i in range(40)]
    with sessions.begin() as session:
        scan_id = create_scan(session, "s3://b/p", "gamma-test")
        add_scan_items(session, scan_id, keys)
        finish_listing(session, scan_id, len(keys))
    chunks = [keys[:25], keys[15:]] * 3

    def record(chunk: list[str]) -> None:
        with sessions.begin() as session:
            record_outcomes(session, scan_id, "b", "gamma-test", 1, _outcomes(chunk))

    run_at_once(record, [(chunk,) for chunk in chunks])
    with sessions() as session:
        summary = scan_summary(session, scan_id)
        per_key = session.execute(select(ScanItem.key, func.count()).group_by(ScanItem.key)).all()
    assert sorted(per_key) == [(key, 1) for key in keys]
    assert (summary.status, summary.processed) == ("done", 40)
