"""The schema comes from the Alembic revisions, matches the models, and migrating is idempotent."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import Engine, inspect, text

from worker.db import LEGACY_COVERAGE, Base, Image, Result, alembic_config, make_engine, migrate, session_factory
from worker.records import known_by_content, known_by_etag
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
