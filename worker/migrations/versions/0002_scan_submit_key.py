"""scans.submit_key: one scan per (beat entry, fire time)

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-01
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | Sequence[str] | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("scans", sa.Column("submit_key", sa.String(length=512), nullable=True))
    op.create_index(op.f("ix_scans_submit_key"), "scans", ["submit_key"], unique=True)


def downgrade() -> None:
    op.drop_index(op.f("ix_scans_submit_key"), table_name="scans")
    with op.batch_alter_table("scans") as batch:
        batch.drop_column("submit_key")
