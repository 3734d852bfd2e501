"""Alembic environment for the worker database (run through :func:`worker.db.migrate`, or the alembic CLI).

On PostgreSQL the upgrade takes a transaction-scoped advisory lock first: every worker process migrates on
start, and without the lock two of them starting together would both try to create the same tables.
"""

from __future__ import annotations

from alembic import context
from sqlalchemy import Connection, text

from worker.db import Base, make_engine

MIGRATION_LOCK_ID = 0x6A3D_5CA1  # any constant; shared by every process migrating this database


def run(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=Base.metadata,
        render_as_batch=connection.dialect.name == "sqlite",  # SQLite alters tables by copying them
        compare_type=True,
    )
    with context.begin_transaction():
        if connection.dialect.name == "postgresql":
            connection.execute(text("SELECT pg_advisory_xact_lock(:id)"), {"id": MIGRATION_LOCK_ID})
        context.run_migrations()


def main() -> None:
    connection = context.config.attributes.get("connection")
    if connection is not None:
        run(connection)
        return
    engine = make_engine(context.config.get_main_option("sqlalchemy.url") or "sqlite:///gamma.db")
    with engine.begin() as connection:
        run(connection)
    engine.dispose()


main()
