"""contract v2: results per coverage mode, with the tiles seen and the top tile; scans.coverage

Revision ID: 0003
Revises: 0002
Create Date: 2027-01-12
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | Sequence[str] | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Results recorded before contract v2 saw a 512 crop of an upsized image: they get a coverage that matches no
# mode (worker.db.LEGACY_COVERAGE), so no v2 scan reuses them. The server default exists only for that fill.
LEGACY_COVERAGE = "v1"


def upgrade() -> None:
    op.add_column("scans", sa.Column("coverage", sa.String(length=8), nullable=True))
    with op.batch_alter_table("results") as batch:
        batch.add_column(
            sa.Column("coverage", sa.String(length=8), nullable=False, server_default=sa.text(f"'{LEGACY_COVERAGE}'"))
        )
        batch.add_column(sa.Column("tiles_seen", sa.Integer(), nullable=True))
        batch.add_column(sa.Column("tiles_total", sa.Integer(), nullable=True))
        batch.add_column(sa.Column("seen_fraction", sa.Float(), nullable=True))
        batch.add_column(sa.Column("top_tile", sa.JSON(none_as_null=True), nullable=True))
        batch.drop_constraint("uq_results_sha256_model_name_model_version", type_="unique")
        batch.create_unique_constraint(
            "uq_results_sha256_model_name_model_version_coverage", ["sha256", "model_name", "model_version", "coverage"]
        )
    # A second batch: on SQLite the first one copies the table, and the copy needs the default to fill old rows.
    with op.batch_alter_table("results") as batch:
        batch.alter_column("coverage", existing_type=sa.String(length=8), existing_nullable=False, server_default=None)


def downgrade() -> None:
    # One row per (sha256, model, version) again: scan items follow the lowest id of their result's group, and the
    # other coverage modes' rows go (a downgrade forgets what only they knew).
    op.execute(
        "UPDATE scan_items SET result_id = (SELECT MIN(other.id) FROM results AS mine JOIN results AS other "
        "ON other.sha256 = mine.sha256 AND other.model_name = mine.model_name "
        "AND other.model_version = mine.model_version WHERE mine.id = scan_items.result_id) "
        "WHERE result_id IS NOT NULL"
    )
    op.execute(
        "DELETE FROM results WHERE id NOT IN (SELECT MIN(id) FROM results GROUP BY sha256, model_name, model_version)"
    )
    with op.batch_alter_table("results") as batch:
        batch.drop_constraint("uq_results_sha256_model_name_model_version_coverage", type_="unique")
        batch.create_unique_constraint(
            "uq_results_sha256_model_name_model_version", ["sha256", "model_name", "model_version"]
        )
        for column in ("top_tile", "seen_fraction", "tiles_total", "tiles_seen", "coverage"):
            batch.drop_column(column)
    with op.batch_alter_table("scans") as batch:
        batch.drop_column("coverage")
