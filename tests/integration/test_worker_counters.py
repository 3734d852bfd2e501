"""A scan's progress counters move by what each chunk changes (O(chunk)), count each key once, and always equal a
recount — on SQLite and on a real PostgreSQL server, including chunks racing each other (a redelivery)."""

from __future__ import annotations

import hashlib
import random

import pytest
from sqlalchemy import Engine, event, select
from sqlalchemy.orm import sessionmaker

from tests.fixtures.concurrency import run_at_once
from worker.db import Image, Result, Scan, session_factory
from worker.outcome import Outcome
from worker.records import (
    add_scan_items,
    claim_scan,
    create_scan,
    finish_listing,
    link_known,
    record_outcomes,
    refresh_scan,
)


@pytest.fixture
def engine(migrated_engine: Engine) -> Engine:
    """SQLite and PostgreSQL (tests/fixtures/services.py)."""
    return migrated_engine


def _outcome(key: str, verdict: str) -> Outcome:
    sha = hashlib.sha256(key.encode()).hexdigest()
    if verdict == "error":
        return Outcome(key=key, sha256=sha, verdict="error", error_reason="truncated", error_detail="x", size=1)
    return Outcome(key=key, sha256=sha, verdict=verdict, size=10, probability=0.5)


def _record(sessions: sessionmaker, scan_id: int, chunk: dict[str, str], version: int = 1) -> None:
    with sessions.begin() as session:
        record_outcomes(session, scan_id, "b", "gamma-test", version, [_outcome(k, v) for k, v in chunk.items()])


def _state(sessions: sessionmaker, scan_id: int) -> tuple[str, int, int]:
    with sessions() as session:
        scan = session.get(Scan, scan_id)
        assert scan is not None
        return scan.status, scan.processed, scan.errors


def _recounted(sessions: sessionmaker, scan_id: int) -> tuple[str, int, int]:
    """The O(scan) recount's answer, in a transaction that is rolled back (the counters stay as they were)."""
    with sessions() as session:
        refresh_scan(session, scan_id)
        scan = session.execute(select(Scan.status, Scan.processed, Scan.errors).where(Scan.id == scan_id)).one()
        session.rollback()
    return tuple(scan)  # type: ignore[return-value]


def test_counters_follow_each_change_and_a_redelivery_adds_nothing(engine: Engine) -> None:
    sessions = session_factory(engine)
    # An earlier scan judged k4 (real) and k5 (error): a rescan links them at listing.
    with sessions.begin() as session:
        earlier = create_scan(session, "s3://b/p", "gamma-test")
        add_scan_items(session, earlier, ["k4", "k5"])
        finish_listing(session, earlier, 2)
    _record(sessions, earlier, {"k4": "real", "k5": "error"})
    keys = [f"k{i}" for i in range(6)]
    with sessions.begin() as session:
        scan_id = create_scan(session, "s3://b/p", "gamma-test")
        add_scan_items(session, scan_id, keys)
        images = dict(session.execute(select(Image.key, Image.id)).all())
        results = {r.sha256: r for r in session.scalars(select(Result))}
        known = {k: (images[k], results[hashlib.sha256(k.encode()).hexdigest()]) for k in ("k4", "k5")}
        link_known(session, scan_id, known)
        link_known(session, scan_id, known)  # a re-listing: no change
    assert _state(sessions, scan_id) == ("listing", 2, 1)
    with sessions.begin() as session:
        finish_listing(session, scan_id, len(keys))
    chunk = {"k0": "real", "k1": "ai-generated", "k2": "error"}
    _record(sessions, scan_id, chunk)
    assert _state(sessions, scan_id) == ("running", 5, 2)
    _record(sessions, scan_id, chunk)  # redelivered: the same rows, nothing counted twice
    assert _state(sessions, scan_id) == ("running", 5, 2)
    # a retry that judged differently: k2 error -> verdict; k1's verdict is kept (an error never replaces one)
    _record(sessions, scan_id, {"k2": "real", "k1": "error"})
    assert _state(sessions, scan_id) == ("running", 5, 1)
    _record(sessions, scan_id, {"k1": "manipulated"})  # verdict -> verdict
    assert _state(sessions, scan_id) == ("running", 5, 1)
    _record(sessions, scan_id, {"k3": "error"})  # the last key closes the scan
    assert _state(sessions, scan_id) == ("done", 6, 2)
    assert _recounted(sessions, scan_id) == ("done", 6, 2)
    assert _state(sessions, earlier) == _recounted(sessions, earlier) == ("done", 2, 1)


def test_a_failed_inference_never_replaces_a_verdict_of_the_same_bytes(engine: Engine) -> None:
    """Results are shared by content: scan A judged X; scan B read the same bytes under another key, but its
    backend was down. B's error must not overwrite A's verdict (A would lose it, and A's counters would no longer
    match its items); B's key takes the stored verdict, and a later error-over-error still refreshes the reason."""
    sessions = session_factory(engine)
    sha = hashlib.sha256(b"same bytes").hexdigest()
    good = Outcome(key="a/x.jpg", sha256=sha, verdict="ai-generated", size=10, probability=0.97)
    down = Outcome(key="b/x-copy.jpg", sha256=sha, verdict="error", error_reason="backend-error",
                   error_detail="triton unreachable", size=10)  # fmt: skip
    scans = []
    for key in ("a/x.jpg", "b/x-copy.jpg"):
        with sessions.begin() as session:
            scans.append(create_scan(session, "s3://b/p", "gamma-test"))
            add_scan_items(session, scans[-1], [key])
            finish_listing(session, scans[-1], 1)
    with sessions.begin() as session:
        record_outcomes(session, scans[0], "b", "gamma-test", 1, [good])
    with sessions.begin() as session:
        ids = record_outcomes(session, scans[1], "b", "gamma-test", 1, [down])
    with sessions() as session:
        stored = session.scalars(select(Result).where(Result.sha256 == sha)).one()
        assert (stored.verdict, stored.probability, stored.error_reason) == ("ai-generated", 0.97, None)
        assert ids == {"b/x-copy.jpg": stored.id}
    assert (down.verdict, down.probability, down.result_id) == ("ai-generated", 0.97, stored.id)  # what B reports
    assert _state(sessions, scans[0]) == _recounted(sessions, scans[0]) == ("done", 1, 0)
    assert _state(sessions, scans[1]) == _recounted(sessions, scans[1]) == ("done", 1, 0)
    # two keys with the same new bytes in one chunk, one judged and one failed (in either order): the verdict wins
    for order, twin in enumerate((b"twin 0", b"twin 1")):
        twin_sha = hashlib.sha256(twin).hexdigest()
        pair = [Outcome(key=f"t{order}/judged.jpg", sha256=twin_sha, verdict="real", size=3, probability=0.1),
                Outcome(key=f"t{order}/failed.jpg", sha256=twin_sha, verdict="error", error_reason="time-limit",
                        error_detail="soft limit", size=3)]  # fmt: skip
        with sessions.begin() as session:
            scan_id = create_scan(session, "s3://b/t", "gamma-test")
            add_scan_items(session, scan_id, [o.key for o in pair])
            finish_listing(session, scan_id, 2)
            record_outcomes(session, scan_id, "b", "gamma-test", 1, pair if order == 0 else pair[::-1])
        assert [o.verdict for o in pair] == ["real", "real"]
        assert _state(sessions, scan_id) == _recounted(sessions, scan_id) == ("done", 2, 0)
    # without a verdict to keep, errors still update each other (the latest reason is the one shown)
    other = hashlib.sha256(b"other bytes").hexdigest()
    for reason in ("backend-error", "time-limit"):
        with sessions.begin() as session:
            record_outcomes(session, None, "b", "gamma-test", 1, [
                Outcome(key="c/y.jpg", sha256=other, verdict="error", error_reason=reason, error_detail=reason, size=5)
            ])  # fmt: skip
    with sessions() as session:
        assert session.scalars(select(Result.error_reason).where(Result.sha256 == other)).one() == "time-limit"


def test_recording_a_chunk_costs_the_same_in_a_small_and_a_large_scan(engine: Engine) -> None:
    """No statement aggregates over the scan: the chunk's statements are the same whatever the scan's size."""
    sessions = session_factory(engine)
    statements: list[str] = []

    def seen(_conn, _cursor, statement: str, *_args: object) -> None:  # type: ignore[no-untyped-def]
        statements.append(statement)

    per_size = {}
    for size in (10, 5000):
        keys = [f"{size}/k{i:05d}" for i in range(size)]
        with sessions.begin() as session:
            scan_id = create_scan(session, "s3://b/p", "gamma-test")
            add_scan_items(session, scan_id, keys)
            finish_listing(session, scan_id, size)
        for start in range(0, size - 8, 500):
            _record(sessions, scan_id, {k: "real" for k in keys[start : min(start + 500, size - 8)]})
        event.listen(engine, "before_cursor_execute", seen)
        try:
            _record(sessions, scan_id, {k: "error" if i % 2 else "real" for i, k in enumerate(keys[size - 8 :])})
        finally:
            event.remove(engine, "before_cursor_execute", seen)
        per_size[size] = list(statements)
        statements.clear()
        assert _state(sessions, scan_id) == _recounted(sessions, scan_id) == ("done", size, 4)
    assert per_size[10] == per_size[5000]
    assert not any("count(" in s.lower() for s in per_size[5000])


def test_racing_chunks_with_differing_verdicts_leave_counters_equal_to_a_recount(engine: Engine) -> None:
    """Overlapping chunks commit at once (redeliveries racing the original, retries that judged differently)."""
    sessions = session_factory(engine)
    keys = [f"k{i:02d}" for i in range(40)]
    with sessions.begin() as session:
        scan_id = create_scan(session, "s3://b/p", "gamma-test")
        add_scan_items(session, scan_id, keys)
        finish_listing(session, scan_id, len(keys))
    rng = random.Random(6)
    chunks = [
        {k: rng.choice(["real", "error", "ai-generated"]) for k in keys[start : start + 25]}
        for start in (0, 15, 0, 15, 5, 10)
    ]
    run_at_once(lambda chunk: _record(sessions, scan_id, chunk), [(chunk,) for chunk in chunks])
    status, processed, error_count = _state(sessions, scan_id)
    assert (status, processed) == ("done", 40)
    assert (status, processed, error_count) == _recounted(sessions, scan_id)


def test_deliveries_claiming_one_submit_key_at_once_get_one_scan(engine: Engine) -> None:
    """Two deliveries of one beat message (or two beats) claim its scan at the same moment: one row, one id."""
    sessions = session_factory(engine)

    def claim() -> tuple[int, str | None]:
        with sessions.begin() as session:
            return claim_scan(session, "s3://b/p", "gamma-test", "nightly@2026-12-01T02:00Z")

    claimed = run_at_once(claim, [()] * 4)
    assert len({scan_id for scan_id, _ in claimed}) == 1
    assert sorted(status or "" for _, status in claimed) == ["", "listing", "listing", "listing"]  # one created it
    with sessions() as session:
        assert session.scalars(select(Scan.submit_key)).all() == ["nightly@2026-12-01T02:00Z"]
