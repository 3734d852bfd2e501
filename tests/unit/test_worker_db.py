"""The schema comes from the Alembic revisions, matches the models, and migrating is idempotent."""

from __future__ import annotations

import threading
from pathlib import Path

from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import Engine, inspect, text, update

from worker.db import LEGACY_COVERAGE, Base, Image, Result, Scan, alembic_config, make_engine, migrate, session_factory
from worker.records import (
    MAX_DETAIL,
    MAX_NOTE,
    NOTES_DROPPED,
    add_scan_items,
    create_scan,
    fail_scan,
    finish_listing,
    known_by_content,
    known_by_etag,
    note_scan,
)
from worker.storage import ObjectRef


def test_migrations_build_exactly_the_models_schema_and_rerun_as_no_ops(migrated_engine: Engine) -> None:
    """On SQLite and on PostgreSQL (whose types, server defaults and constraints autogenerate compares strictly)."""
    engine = migrated_engine
    migrate(engine)  # a second time: a no-op
    with engine.connect() as connection:
        assert compare_metadata(MigrationContext.configure(connection), Base.metadata) == []
        version = MigrationContext.configure(connection).get_current_revision()
    assert version == "0003"
    assert set(inspect(engine).get_table_names()) == {"alembic_version", "scans", "images", "results", "scan_items"}


def test_downgrade_to_base_removes_every_table(tmp_path: Path) -> None:
    engine = make_engine(f"sqlite:///{tmp_path / 'gamma.db'}")
    migrate(engine)
    config = alembic_config(engine)
    with engine.begin() as connection:
        config.attributes["connection"] = connection
        command.downgrade(config, "base")
    assert set(inspect(engine).get_table_names()) == {"alembic_version"}
    engine.dispose()


def test_results_from_before_contract_v2_are_kept_but_never_reused_by_a_v2_scan(tmp_path: Path) -> None:
    """Migration 0003 gives old results a coverage no mode has: they saw an upsized 512 crop, not tiles."""
    engine = make_engine(f"sqlite:///{tmp_path / 'gamma.db'}")
    migrate(engine, "0002")
    with engine.begin() as connection:
        connection.execute(text("INSERT INTO images (bucket, key, sha256, etag, size, seen_at) "
                                "VALUES ('b', 'k.jpg', 'ab', 'e1', 10, '2026-12-01')"))  # fmt: skip
        connection.execute(text("INSERT INTO results (sha256, model_name, model_version, verdict, probability, "
                                "created_at, updated_at) VALUES ('ab', 'm', 1, 'real', 0.1, '2026-12-01', "
                                "'2026-12-01')"))  # fmt: skip
    migrate(engine)
    with session_factory(engine)() as session:
        old = session.query(Result).one()
        assert (old.coverage, old.tiles_seen, old.top_tile) == (LEGACY_COVERAGE, None, None)
        assert session.query(Image).count() == 1
        for mode in ("centre", "five", "full"):
            assert known_by_content(session, ["ab"], "m", 1, mode) == {}
            assert known_by_etag(session, "b", [ObjectRef("k.jpg", "e1", 10)], "m", 1, mode) == {}
        assert known_by_content(session, ["ab"], "m", 1, LEGACY_COVERAGE) == {"ab": old}
    engine.dispose()


def test_concurrent_notes_are_all_kept(migrated_engine: Engine) -> None:
    """Workers append notes to one scan's detail at the same time (redeliveries, retries); none may be lost.

    ``note_scan`` was a read-then-write in Python guarded by ``SELECT ... FOR UPDATE``, which SQLite ignores: two
    writers read the same detail and the later commit overwrote the earlier note (seen as a missing "redelivered"
    note in the worker fault test). The append is now one UPDATE, atomic on every database."""
    sessions = session_factory(migrated_engine)
    with sessions.begin() as session:
        scan_id = create_scan(session, "file:///x", "m")
    writers, per_writer = 4, 12
    start = threading.Barrier(writers)
    failures: list[BaseException] = []

    def write(writer: int) -> None:
        try:
            start.wait()
            for i in range(per_writer):
                with sessions.begin() as session:
                    note_scan(session, scan_id, f"writer {writer} note {i}")
        except BaseException as exc:  # surfaced below: an assertion in a thread would be swallowed
            failures.append(exc)

    threads = [threading.Thread(target=write, args=(writer,)) for writer in range(writers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert failures == []
    with sessions() as session:
        detail = session.get(Scan, scan_id).detail
    lines = detail.splitlines()
    assert sorted(lines) == sorted(f"writer {w} note {i}" for w in range(writers) for i in range(per_writer))
    for writer in range(writers):  # one writer's notes stay in its order
        mine = [line for line in lines if line.startswith(f"writer {writer} ")]
        assert mine == [f"writer {writer} note {i}" for i in range(per_writer)]


def test_notes_beyond_the_bound_are_dropped_with_one_marker(migrated_engine: Engine) -> None:
    sessions = session_factory(migrated_engine)
    with sessions.begin() as session:
        scan_id = create_scan(session, "file:///x", "m")
    note = "n" * 999
    for _ in range(6):
        with sessions.begin() as session:
            note_scan(session, scan_id, note)
    with sessions.begin() as session:
        note_scan(session, scan_id, "short enough to fit, but after a dropped note: dropped too")
        note_scan(session, scan_id + 1, "a scan that does not exist: nothing happens")
    with sessions() as session:
        detail = session.get(Scan, scan_id).detail
    lines = detail.split("\n")
    assert len(detail) <= MAX_DETAIL and lines[-1] == NOTES_DROPPED
    assert lines[:-1] == [note] * (len(lines) - 1) and len(lines) - 1 == 3  # 3 notes of 999 fit; the marker too


def test_only_a_listing_scan_is_finished_or_failed_by_its_lister(migrated_engine: Engine) -> None:
    """Two listers of one scan (a beat delivered twice, --resume beside a running lister): whichever ends second
    never turns a finished or closed scan back; a listing that succeeds after another failed revives the scan (it
    dispatched every chunk, so the scan completes)."""
    sessions = session_factory(migrated_engine)
    with sessions.begin() as session:
        running = create_scan(session, "file:///x", "m")
        add_scan_items(session, running, ["a.jpg", "b.jpg"])
        failing = create_scan(session, "file:///y", "m")
        add_scan_items(session, failing, ["c.jpg"])
    with sessions.begin() as session:
        assert finish_listing(session, running, 2) is True
        assert finish_listing(session, running, 5) is False  # the second lister's end
        assert fail_scan(session, running, "listing failed: SlowDown") is False
        note_scan(session, failing, "a worker's note")
        assert fail_scan(session, failing, "listing failed: " + "x" * 5000) is True
    with sessions() as session:
        first, second = session.get(Scan, running), session.get(Scan, failing)
        assert (first.status, first.total, first.detail) == ("running", 2, None)
        assert second.status == "failed" and second.finished_at is not None and second.total == 0
        kept, failure = second.detail.split("\n")
        assert kept == "a worker's note"  # appended, not replaced
        assert failure.startswith("listing failed: xxx") and len(failure) == MAX_NOTE and failure.endswith("…")
    with sessions.begin() as session:
        assert finish_listing(session, failing, 1) is True  # the other lister got through
        assert fail_scan(session, failing, "too late") is False
    with sessions() as session:
        revived = session.get(Scan, failing)
        assert (revived.status, revived.total, revived.finished_at) == ("running", 1, None)
        assert revived.listed_at is not None and "too late" not in revived.detail
    with sessions.begin() as session:  # a scan that failed after its listing (dead letters) is not revived
        session.execute(update(Scan).where(Scan.id == running).values(status="failed"))
        assert finish_listing(session, running, 2) is False
