"""scans, images, results, scan_items

Revision ID: 0001
Revises:
Create Date: 2026-11-24
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0001"
down_revision: str | Sequence[str] | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

Id = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "images",
        sa.Column("id", Id, nullable=False),
        sa.Column("bucket", sa.String(length=1024), nullable=False),
        sa.Column("key", sa.String(length=1024), nullable=False),
        sa.Column("sha256", sa.String(length=64), nullable=False),
        sa.Column("etag", sa.String(length=128), nullable=False),
        sa.Column("size", sa.BigInteger(), nullable=False),
        sa.Column("seen_at", sa.DateTime(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_images")),
        sa.UniqueConstraint("bucket", "key", "sha256", name=op.f("uq_images_bucket_key_sha256")),
    )
    op.create_table(
        "scans",
        sa.Column("id", Id, nullable=False),
        sa.Column("source_uri", sa.String(length=2048), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("model_name", sa.String(length=128), nullable=False),
        sa.Column("model_version", sa.Integer(), nullable=True),
        sa.Column("total", sa.Integer(), nullable=False),
        sa.Column("processed", sa.Integer(), nullable=False),
        sa.Column("errors", sa.Integer(), nullable=False),
        sa.Column("detail", sa.Text(), nullable=True),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("listed_at", sa.DateTime(), nullable=True),
        sa.Column("finished_at", sa.DateTime(), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_scans")),
    )
    op.create_table(
        "results",
        sa.Column("id", Id, nullable=False),
        sa.Column("sha256", sa.String(length=64), nullable=False),
        sa.Column("model_name", sa.String(length=128), nullable=False),
        sa.Column("model_version", sa.Integer(), nullable=False),
        sa.Column("image_id", Id, nullable=True),
        sa.Column("verdict", sa.String(length=16), nullable=False),
        sa.Column("probability", sa.Float(), nullable=True),
        sa.Column("ai_area", sa.Float(), nullable=True),
        sa.Column("manipulated_area", sa.Float(), nullable=True),
        sa.Column("ai_mask_url", sa.String(length=2048), nullable=True),
        sa.Column("manipulation_mask_url", sa.String(length=2048), nullable=True),
        sa.Column("error_reason", sa.String(length=64), nullable=True),
        sa.Column("error_detail", sa.Text(), nullable=True),
        sa.Column("fetch_ms", sa.Float(), nullable=True),
        sa.Column("preprocess_ms", sa.Float(), nullable=True),
        sa.Column("infer_ms", sa.Float(), nullable=True),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("updated_at", sa.DateTime(), nullable=False),
        sa.ForeignKeyConstraint(["image_id"], ["images.id"], name=op.f("fk_results_image_id_images")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_results")),
        sa.UniqueConstraint(
            "sha256", "model_name", "model_version", name=op.f("uq_results_sha256_model_name_model_version")
        ),
    )
    op.create_table(
        "scan_items",
        sa.Column("id", Id, nullable=False),
        sa.Column("scan_id", Id, nullable=False),
        sa.Column("key", sa.String(length=1024), nullable=False),
        sa.Column("image_id", Id, nullable=True),
        sa.Column("result_id", Id, nullable=True),
        sa.Column("updated_at", sa.DateTime(), nullable=False),
        sa.ForeignKeyConstraint(["image_id"], ["images.id"], name=op.f("fk_scan_items_image_id_images")),
        sa.ForeignKeyConstraint(["result_id"], ["results.id"], name=op.f("fk_scan_items_result_id_results")),
        sa.ForeignKeyConstraint(
            ["scan_id"], ["scans.id"], name=op.f("fk_scan_items_scan_id_scans"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_scan_items")),
        sa.UniqueConstraint("scan_id", "key", name=op.f("uq_scan_items_scan_id_key")),
    )
    op.create_index(op.f("ix_scan_items_scan_id_result_id"), "scan_items", ["scan_id", "result_id"], unique=False)


def downgrade() -> None:
    op.drop_index(op.f("ix_scan_items_scan_id_result_id"), table_name="scan_items")
    op.drop_table("scan_items")
    op.drop_table("results")
    op.drop_table("scans")
    op.drop_table("images")
