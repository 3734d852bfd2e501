"""The database: tables (SQLAlchemy 2 models), engines and sessions, and schema migrations.

Four tables:
- ``scans``: one submitted bucket prefix or folder, its status and counts.
- ``images``: where bytes were seen: (bucket, key, sha256) with the listed etag and size.
- ``results``: one judgement per (content sha256, model name, model version, coverage). Keyed by content, not
  by location, so redelivered tasks and repeated scans upsert the same row instead of adding one; and by the
  coverage mode (which tiles the model saw, :mod:`gamma.tiling`), so a ``full`` scan never takes or overwrites
  what a ``centre`` scan saw of the same bytes.
- ``scan_items``: a scan's keys, unique per (scan, key), each pointing at its image and result once processed;
  a scan's summary is a join, and "processed" is simply ``result_id IS NOT NULL``.

The schema is owned by Alembic (``worker/migrations``); processes call :func:`migrate` on start, never
``create_all``, so a deployed database and a fresh one always go through the same revisions.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from sqlalchemy import (
    JSON,
    BigInteger,
    DateTime,
    Engine,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    UniqueConstraint,
    create_engine,
    event,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, sessionmaker

MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"

# SQLite only auto-increments a column declared exactly INTEGER PRIMARY KEY.
Id = BigInteger().with_variant(Integer(), "sqlite")
# Object keys can be 1024 bytes on S3; URLs add a bucket and a prefix.
KEY_LENGTH = 1024
URL_LENGTH = 2048
COVERAGE_LENGTH = 8
# What migration 0003 gives results recorded before contract v2 (a 512 crop of an upsized image): it matches no
# coverage mode, so such a result is never reused by a v2 scan, which would otherwise inherit a different view.
LEGACY_COVERAGE = "v1"


def utcnow() -> datetime:
    """Timestamps are naive UTC everywhere: SQLite has no time zones, and mixing aware and naive breaks sums."""
    return datetime.now(UTC).replace(tzinfo=None)


class Base(DeclarativeBase):
    metadata = MetaData(
        naming_convention={
            "ix": "ix_%(table_name)s_%(column_0_N_name)s",
            "uq": "uq_%(table_name)s_%(column_0_N_name)s",
            "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
            "pk": "pk_%(table_name)s",
        }
    )


class Scan(Base):
    """A submitted source. ``status``: listing -> running -> done (or failed if the listing itself failed)."""

    __tablename__ = "scans"
    __table_args__ = (Index(None, "submit_key", unique=True),)

    id: Mapped[int] = mapped_column(Id, primary_key=True)
    source_uri: Mapped[str] = mapped_column(String(URL_LENGTH))
    status: Mapped[str] = mapped_column(String(16), default="listing")
    model_name: Mapped[str] = mapped_column(String(128))
    model_version: Mapped[int | None] = mapped_column(Integer)
    total: Mapped[int] = mapped_column(Integer, default=0)
    processed: Mapped[int] = mapped_column(Integer, default=0)
    errors: Mapped[int] = mapped_column(Integer, default=0)
    detail: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    listed_at: Mapped[datetime | None] = mapped_column(DateTime)
    finished_at: Mapped[datetime | None] = mapped_column(DateTime)
    # Scheduled scans: "<beat entry>@<fire time>", unique, so a second delivery of the same beat message (a
    # redelivery after a crash, a second beat) finds this scan instead of creating another. NULL otherwise.
    submit_key: Mapped[str | None] = mapped_column(String(512))
    # The scan's coverage mode (gamma-scan/gamma-submit --coverage, else GAMMA_COVERAGE when it was submitted):
    # what --resume goes on with. NULL for scans recorded before contract v2.
    coverage: Mapped[str | None] = mapped_column(String(COVERAGE_LENGTH))


class Image(Base):
    """Bytes with ``sha256`` were seen at ``bucket``/``key`` (with the listed ``etag``/``size``)."""

    __tablename__ = "images"
    __table_args__ = (UniqueConstraint("bucket", "key", "sha256"),)

    id: Mapped[int] = mapped_column(Id, primary_key=True)
    bucket: Mapped[str] = mapped_column(String(KEY_LENGTH))
    key: Mapped[str] = mapped_column(String(KEY_LENGTH))
    sha256: Mapped[str] = mapped_column(String(64))
    etag: Mapped[str] = mapped_column(String(128), default="")
    size: Mapped[int] = mapped_column(BigInteger, default=-1)
    seen_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)


class Result(Base):
    """The judgement of one content by one model version under one coverage mode; ``verdict='error'`` rows carry
    ``error_reason``.

    ``tiles_seen`` of ``tiles_total`` tiles were looked at (``seen_fraction`` of the pixels), and ``top_tile`` is
    the most suspicious one's ``[left, top, right, bottom]`` in upright image pixels; all NULL on errors.

    ``sha256`` is the hash of the bytes. For an object whose bytes were never read (missing, too large to
    download, retries exhausted before fetching) it is the hash of ``gamma:unread:<reason>:<object URI>``
    instead, so the row still has a stable identity and a repeat upserts it.
    """

    __tablename__ = "results"
    __table_args__ = (UniqueConstraint("sha256", "model_name", "model_version", "coverage"),)

    id: Mapped[int] = mapped_column(Id, primary_key=True)
    sha256: Mapped[str] = mapped_column(String(64))
    model_name: Mapped[str] = mapped_column(String(128))
    model_version: Mapped[int] = mapped_column(Integer)
    coverage: Mapped[str] = mapped_column(String(COVERAGE_LENGTH))
    image_id: Mapped[int | None] = mapped_column(ForeignKey("images.id"))
    verdict: Mapped[str] = mapped_column(String(16))
    probability: Mapped[float | None] = mapped_column(Float)
    ai_area: Mapped[float | None] = mapped_column(Float)
    manipulated_area: Mapped[float | None] = mapped_column(Float)
    ai_mask_url: Mapped[str | None] = mapped_column(String(URL_LENGTH))
    manipulation_mask_url: Mapped[str | None] = mapped_column(String(URL_LENGTH))
    tiles_seen: Mapped[int | None] = mapped_column(Integer)
    tiles_total: Mapped[int | None] = mapped_column(Integer)
    seen_fraction: Mapped[float | None] = mapped_column(Float)
    top_tile: Mapped[list[int] | None] = mapped_column(JSON(none_as_null=True))  # NULL, not JSON null
    error_reason: Mapped[str | None] = mapped_column(String(64))
    error_detail: Mapped[str | None] = mapped_column(Text)
    fetch_ms: Mapped[float | None] = mapped_column(Float)
    preprocess_ms: Mapped[float | None] = mapped_column(Float)
    infer_ms: Mapped[float | None] = mapped_column(Float)
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)


class ScanItem(Base):
    """One key of a scan; ``result_id`` is set by the transaction that processed it."""

    __tablename__ = "scan_items"
    __table_args__ = (UniqueConstraint("scan_id", "key"), Index(None, "scan_id", "result_id"))

    id: Mapped[int] = mapped_column(Id, primary_key=True)
    scan_id: Mapped[int] = mapped_column(ForeignKey("scans.id", ondelete="CASCADE"))
    key: Mapped[str] = mapped_column(String(KEY_LENGTH))
    image_id: Mapped[int | None] = mapped_column(ForeignKey("images.id"))
    result_id: Mapped[int | None] = mapped_column(ForeignKey("results.id"))
    updated_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    """WAL lets ``gamma-submit --wait`` read while a worker writes; the busy timeout queues writers instead of
    failing them at once (what is left over surfaces as OperationalError, which the tasks retry)."""
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()


def make_engine(url: str) -> Engine:
    """An engine for ``url``; ``postgresql://`` is mapped to the psycopg 3 driver installed here."""
    if url.startswith(("postgresql://", "postgres://")):
        url = "postgresql+psycopg://" + url.split("://", 1)[1]
    if url.startswith("sqlite"):
        engine = create_engine(url, connect_args={"timeout": 30})
        event.listen(engine, "connect", _sqlite_pragmas)
        return engine
    return create_engine(url, pool_pre_ping=True, pool_size=4, max_overflow=4)


def session_factory(engine: Engine) -> sessionmaker:
    return sessionmaker(engine, expire_on_commit=False)


def alembic_config(engine: Engine | None = None) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    if engine is not None:
        config.set_main_option("sqlalchemy.url", engine.url.render_as_string(hide_password=False).replace("%", "%%"))
    return config


def migrate(engine: Engine, revision: str = "head") -> None:
    """``alembic upgrade head`` on ``engine``'s database (idempotent; serialised across processes on PostgreSQL)."""
    config = alembic_config(engine)
    with engine.begin() as connection:
        config.attributes["connection"] = connection
        command.upgrade(config, revision)
