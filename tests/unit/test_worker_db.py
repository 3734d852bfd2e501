"""The schema comes from the Alembic revisions, matches the models, and migrating is idempotent."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import Engine, inspect

from worker.db import Base, alembic_config, make_engine, migrate


def test_migrations_build_exactly_the_models_schema_and_rerun_as_no_ops(migrated_engine: Engine) -> None:
    """On SQLite and on PostgreSQL (whose types, server defaults and constraints autogenerate compares strictly)."""
    engine = migrated_engine
    migrate(engine)  # a second time: a no-op
    with engine.connect() as connection:
        assert compare_metadata(MigrationContext.configure(connection), Base.metadata) == []
        version = MigrationContext.configure(connection).get_current_revision()
    assert version == "0002"
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
