"""Writing outcomes and reading summaries: every statement the pipeline and the CLIs run against the database.

Writes are upserts (``INSERT .. ON CONFLICT DO UPDATE`` in the SQLite or PostgreSQL dialect) keyed by the
tables' natural keys, so running the same chunk twice — a redelivered task, a retry after a crash between
commit and ack, a second scan — converges on the same rows. Rows of one statement are de-duplicated (PostgreSQL
refuses to update a row twice in one statement) and sorted (concurrent upserts then lock rows in the same
order and cannot deadlock each other).

A scan's ``processed``/``errors`` counters move by what each transaction changes — O(chunk), never a recount of
the scan — under the scan row's lock, so a redelivered chunk (same keys, same results) moves them by zero.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import and_, case, func, literal, or_, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from gamma.verdict import Verdict
from worker.db import Image, Result, Scan, ScanItem, utcnow
from worker.outcome import Outcome
from worker.reasons import NOT_REUSABLE_REASONS

ERROR = Verdict.ERROR.value


def _insert(session: Session, table: Any) -> Any:
    dialect = session.get_bind().dialect.name
    if dialect == "postgresql":
        return postgresql.insert(table)
    if dialect == "sqlite":
        return sqlite.insert(table)
    raise NotImplementedError(f"upserts are written for sqlite and postgresql, not {dialect}")


def _unique(rows: Iterable[dict[str, Any]], key: Sequence[str]) -> list[dict[str, Any]]:
    """Last row per natural key, sorted by it."""
    by_key = {tuple(row[k] for k in key): row for row in rows}
    return [by_key[k] for k in sorted(by_key)]


def create_scan(session: Session, source_uri: str, model_name: str, coverage: str | None = None) -> int:
    scan = Scan(
        source_uri=source_uri,
        model_name=model_name,
        status="listing",
        total=0,
        processed=0,
        errors=0,
        coverage=coverage,
    )
    session.add(scan)
    session.flush()
    return scan.id


def claim_scan(
    session: Session, source_uri: str, model_name: str, submit_key: str, coverage: str | None = None
) -> tuple[int, str | None]:
    """The scan of ``submit_key`` (a scheduled scan's "entry@fire time"): ``(id, None)`` if created now, else
    ``(id, its status)``. Race-safe: ``INSERT .. ON CONFLICT DO NOTHING`` on the unique key, so two deliveries of
    one beat message, even at the same moment, get the same scan."""
    row = {
        "source_uri": source_uri,
        "model_name": model_name,
        "status": "listing",
        "total": 0,
        "processed": 0,
        "errors": 0,
        "created_at": utcnow(),
        "submit_key": submit_key,
        "coverage": coverage,
    }
    statement = _insert(session, Scan.__table__).values(row).on_conflict_do_nothing(index_elements=["submit_key"])
    created = session.execute(statement.returning(Scan.__table__.c.id)).scalar_one_or_none()
    if created is not None:
        return int(created), None
    scan_id, status = session.execute(select(Scan.id, Scan.status).where(Scan.submit_key == submit_key)).one()
    return int(scan_id), str(status)


def add_scan_items(session: Session, scan_id: int, keys: Iterable[str]) -> None:
    """Register listed keys (idempotent: a key already in the scan keeps its result).

    One "executemany" of a statement compiled once (the listing registers a page of keys per call), not a
    multi-row VALUES that SQLAlchemy would compile anew for every page.
    """
    now = utcnow()
    rows = _unique(({"scan_id": scan_id, "key": key, "updated_at": now} for key in keys), ("key",))
    if rows:
        statement = _insert(session, ScanItem.__table__).on_conflict_do_nothing(index_elements=["scan_id", "key"])
        session.execute(statement, rows)


def finish_listing(session: Session, scan_id: int, total: int) -> bool:
    """The listing is done: ``total`` keys, status ``running`` (or ``done`` at once if every key had a result).

    Only a scan still ``listing``, or one a lister *failed* (``failed`` and never listed), moves on: this lister
    dispatched every chunk, so the scan will complete. A second lister of the same scan (a beat delivered twice,
    ``--resume`` beside a running lister) that finishes after the first, or after the workers closed the scan,
    changes nothing (it would have turned ``done`` back into ``running``). Returns whether it changed the scan."""
    changed = session.execute(
        update(Scan)
        .where(Scan.id == scan_id)
        .where(or_(Scan.status == "listing", and_(Scan.status == "failed", Scan.listed_at.is_(None))))
        .values(total=total, status="running", listed_at=utcnow(), finished_at=None)
        .execution_options(synchronize_session=False)
    ).rowcount
    if changed:
        close_if_complete(session, scan_id)
    return bool(changed)


def fail_scan(session: Session, scan_id: int, detail: str) -> bool:
    """The listing failed: status ``failed`` and ``detail`` appended to the scan's notes (the workers' notes stay).
    Only while the scan is still ``listing``: another lister that finished it dispatched every chunk, and they
    complete it. Returns whether it changed the scan."""
    changed = session.execute(
        update(Scan)
        .where(Scan.id == scan_id, Scan.status == "listing")
        .values(status="failed", finished_at=utcnow())
        .execution_options(synchronize_session=False)
    ).rowcount
    if changed:
        note_scan(session, scan_id, detail)
    return bool(changed)


def end_scan(session: Session, scan_id: int, status: str, note: str) -> bool:
    """End a scan that is not ``done`` with ``status`` (``failed``, ``interrupted``) and a note on its detail;
    False (and nothing changed) if it is done or not there."""
    changed = session.execute(
        update(Scan)
        .where(Scan.id == scan_id, Scan.status != "done")
        .values(status=status, finished_at=utcnow())
        .execution_options(synchronize_session=False)
    ).rowcount
    if changed:
        note_scan(session, scan_id, note)
    return bool(changed)


def record_outcomes(
    session: Session, scan_id: int | None, bucket: str, model_name: str, model_version: int, outcomes: Sequence[Outcome]
) -> dict[str, int]:
    """Upsert images, results and scan items for one chunk; returns key -> result id. Caller owns the transaction.

    With a scan, its row is locked first and the chunk's items' previous results read before anything is
    written (a result upserted here may change its verdict), so the counters move by exactly what changed.

    Results are shared by content (every scan and key with the same bytes points at one row per model version and
    coverage), so an error never replaces a stored verdict: a chunk whose inference failed (a backend that was
    down, a time limit) while another chunk judged the same bytes keeps that verdict, for its own keys too, and
    such an error outcome is rewritten in place into the verdict its key now points at.
    """
    if not outcomes:
        return {}
    by_key = {o.key: o for o in outcomes}
    before = item_states(session, scan_id, list(by_key)) if scan_id is not None else {}
    now = utcnow()
    read = [o for o in outcomes if o.bytes_read]
    image_ids: dict[tuple[str, str], int] = {}
    if read:
        image_rows = _unique(
            (
                {"bucket": bucket, "key": o.key, "sha256": o.sha256, "etag": o.etag, "size": o.size, "seen_at": now}
                for o in read
            ),
            ("bucket", "key", "sha256"),
        )
        statement = _insert(session, Image).values(image_rows)
        statement = statement.on_conflict_do_update(
            index_elements=["bucket", "key", "sha256"],
            set_={"etag": statement.excluded.etag, "size": statement.excluded.size, "seen_at": now},
        ).returning(Image.id, Image.key, Image.sha256)
        image_ids = {(key, sha): id_ for id_, key, sha in session.execute(statement)}

    # Result ids by the rows' natural key within this model version: (sha256, coverage).
    fresh = [o for o in outcomes if o.result_id is None]
    result_ids = {(o.sha256, o.coverage): o.result_id for o in outcomes if o.result_id is not None}
    result_rows = _unique(
        (
            {
                "sha256": o.sha256,
                "model_name": model_name,
                "model_version": model_version,
                "coverage": o.coverage,
                "image_id": image_ids.get((o.key, o.sha256)),
                "verdict": o.verdict,
                "probability": o.probability,
                "ai_area": o.ai_area,
                "manipulated_area": o.manipulated_area,
                "ai_mask_url": o.ai_mask_url,
                "manipulation_mask_url": o.manipulation_mask_url,
                "tiles_seen": o.tiles_seen,
                "tiles_total": o.tiles_total,
                "seen_fraction": o.seen_fraction,
                "top_tile": o.top_tile,
                "error_reason": o.error_reason,
                "error_detail": o.error_detail,
                "fetch_ms": o.fetch_ms,
                "preprocess_ms": o.preprocess_ms,
                "infer_ms": o.infer_ms,
                "created_at": now,
                "updated_at": now,
            }
            # errors first: of two keys with the same bytes in one chunk, the last row (a verdict) is the one kept
            for o in sorted(fresh, key=lambda o: not o.is_error)
        ),
        ("sha256", "coverage"),
    )
    if result_rows:
        statement = _insert(session, Result).values(result_rows)
        updated = {
            column: getattr(statement.excluded, column)
            for column in result_rows[0]
            if column not in ("sha256", "model_name", "model_version", "coverage", "created_at")
        }
        statement = statement.on_conflict_do_update(
            index_elements=["sha256", "model_name", "model_version", "coverage"],
            set_=updated,
            where=or_(Result.verdict == ERROR, statement.excluded.verdict != ERROR),
        ).returning(Result.id, Result.sha256, Result.coverage)
        result_ids.update({(sha, coverage): id_ for id_, sha, coverage in session.execute(statement)})
        _take_kept_verdicts(session, [o for o in fresh if o.is_error], model_name, model_version, result_ids)

    if scan_id is not None:
        item_rows = _unique(
            (
                {
                    "scan_id": scan_id,
                    "key": key,
                    "image_id": image_ids.get((o.key, o.sha256)),
                    "result_id": result_ids[(o.sha256, o.coverage)],
                    "updated_at": now,
                }
                for key, o in by_key.items()
            ),
            ("key",),
        )
        set_items(session, scan_id, item_rows, {key: o.is_error for key, o in by_key.items()}, before)
        if model_version > 0:  # 0: a failure recorded before the backend was reached; the model is unknown
            session.execute(
                update(Scan)
                .where(Scan.id == scan_id, or_(Scan.model_version.is_(None), Scan.model_version == 0))
                .values(model_name=model_name, model_version=model_version)
                .execution_options(synchronize_session=False)
            )
        close_if_complete(session, scan_id)
    return {key: result_ids[(o.sha256, o.coverage)] for key, o in by_key.items()}


def _take_kept_verdicts(
    session: Session,
    errors: Sequence[Outcome],
    model_name: str,
    model_version: int,
    result_ids: dict[tuple[str, str], int],
) -> None:
    """After the results upsert: each error outcome whose bytes' row holds a verdict — kept by the upsert's WHERE
    (so not returned, its id added to ``result_ids`` here), or written by another key of this chunk — is rewritten in
    place into that verdict, what its key now points at, so the counters, the caller's metrics and the printed
    lines agree with the database. One SELECT, only for a chunk with errors."""
    if not errors:
        return
    verdicts = {
        (row.sha256, row.coverage): row
        for row in session.scalars(
            select(Result)
            .where(
                Result.sha256.in_(sorted({o.sha256 for o in errors})),
                Result.model_name == model_name,
                Result.model_version == model_version,
                Result.verdict != ERROR,
            )
            .execution_options(populate_existing=True)
        )
    }
    for outcome in errors:
        stored = verdicts.get((outcome.sha256, outcome.coverage))
        if stored is not None:
            result_ids[(stored.sha256, stored.coverage)] = stored.id
            vars(outcome).update(vars(Outcome.reused(outcome.key, outcome.etag, outcome.size, stored)))


def unprocessed_keys(session: Session, scan_id: int, keys: Sequence[str]) -> list[str]:
    """Those of ``keys`` that have no result in the scan yet (what a failed task still owes)."""
    done = set(
        session.scalars(
            select(ScanItem.key).where(
                ScanItem.scan_id == scan_id, ScanItem.key.in_(keys), ScanItem.result_id.is_not(None)
            )
        )
    )
    return [key for key in keys if key not in done]


def lock_scan(session: Session, scan_id: int) -> None:
    """Take the scan row's write lock until the transaction ends (a no-op UPDATE: a row lock on PostgreSQL, the
    database's write lock on SQLite, where a SELECT first would risk ``SQLITE_BUSY_SNAPSHOT`` on upgrading)."""
    locked = session.execute(
        update(Scan)
        .where(Scan.id == scan_id)
        .values(processed=Scan.processed)
        .execution_options(synchronize_session=False)
    )
    if locked.rowcount != 1:
        raise LookupError(f"no scan {scan_id}")


def item_states(session: Session, scan_id: int, keys: Sequence[str]) -> dict[str, bool]:
    """Lock the scan row, then read which of ``keys`` have a result in it: key -> whether that result is an error.

    Locked first, the read comes after any concurrent transaction on the same scan has committed (PostgreSQL's
    READ COMMITTED takes a new snapshot per statement; SQLite has one writer), so what :func:`set_items` then
    adds to the counters cannot have been added by a transaction racing this one (a redelivered chunk).
    """
    lock_scan(session, scan_id)
    if not keys:
        return {}
    return {
        key: verdict == ERROR
        for key, verdict in session.execute(
            select(ScanItem.key, Result.verdict)
            .join(Result, Result.id == ScanItem.result_id)
            .where(ScanItem.scan_id == scan_id, ScanItem.key.in_(list(keys)))
        )
    }


def set_items(
    session: Session,
    scan_id: int,
    rows: Sequence[dict[str, Any]],
    is_error: dict[str, bool],
    before: dict[str, bool],
) -> None:
    """Upsert scan items (``key`` -> ``image_id``, ``result_id``) and move the scan's counters by what changed.

    O(rows), whatever the size of the scan. ``before`` is :func:`item_states` of the same keys, read in this
    transaction before any of its writes; ``is_error``: key -> whether its new result is an error. A key that
    already had a result adds nothing to ``processed`` (a redelivered chunk, a re-listing), and ``errors``
    follows a result that changed from or to ``verdict=error``.
    """
    if not rows:
        return
    statement = _insert(session, ScanItem).values(list(rows))
    statement = statement.on_conflict_do_update(
        index_elements=["scan_id", "key"],
        set_={
            "image_id": statement.excluded.image_id,
            "result_id": statement.excluded.result_id,
            "updated_at": statement.excluded.updated_at,
        },
    )
    session.execute(statement)
    keys = [row["key"] for row in rows]
    processed = sum(1 for key in keys if key not in before)
    errors = sum(is_error[key] for key in keys) - sum(before.get(key, False) for key in keys)
    if processed or errors:
        session.execute(
            update(Scan)
            .where(Scan.id == scan_id)
            .values(processed=Scan.processed + processed, errors=Scan.errors + errors)
            .execution_options(synchronize_session=False)
        )


def close_if_complete(session: Session, scan_id: int) -> None:
    """Mark a running scan ``done`` once every listed key has a result (one conditional UPDATE of its row)."""
    session.execute(
        update(Scan)
        .where(Scan.id == scan_id, Scan.status == "running", Scan.processed >= Scan.total)
        .values(status="done", finished_at=func.coalesce(Scan.finished_at, utcnow()))
        .execution_options(synchronize_session=False)
    )


def refresh_scan(session: Session, scan_id: int) -> None:
    """Recount a scan from its items (O(scan): a repair or a check, never run per chunk) and close it if complete.

    The counters are kept by :func:`set_items`; this recomputes what they must equal.
    """
    lock_scan(session, scan_id)
    processed = session.scalar(select(func.count()).where(ScanItem.scan_id == scan_id, ScanItem.result_id.is_not(None)))
    errors = session.scalar(
        select(func.count())
        .select_from(ScanItem)
        .join(Result, Result.id == ScanItem.result_id)
        .where(ScanItem.scan_id == scan_id, Result.verdict == ERROR)
    )
    session.execute(
        update(Scan)
        .where(Scan.id == scan_id)
        .values(processed=int(processed or 0), errors=int(errors or 0))
        .execution_options(synchronize_session=False)
    )
    close_if_complete(session, scan_id)


@dataclass
class ScanSummary:
    """What ``gamma-submit --wait`` and ``gamma-scan`` print at the end."""

    scan_id: int
    source_uri: str
    status: str
    model: str
    total: int
    processed: int
    verdicts: Counter[str] = field(default_factory=Counter)
    error_reasons: Counter[str] = field(default_factory=Counter)
    seconds: float = 0.0
    detail: str = ""  # what happened on the way: retries, redeliveries, why the listing failed
    coverage: str = ""  # the scan's coverage mode ("" for a scan recorded before contract v2)

    @property
    def images_per_second(self) -> float:
        return self.processed / self.seconds if self.seconds > 0 else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "scan_id": self.scan_id,
            "source": self.source_uri,
            "status": self.status,
            "model": self.model,
            "total": self.total,
            "processed": self.processed,
            "verdicts": dict(self.verdicts),
            "error_reasons": dict(self.error_reasons),
            "seconds": round(self.seconds, 3),
            "images_per_second": round(self.images_per_second, 3),
            "detail": self.detail,
            "coverage": self.coverage,
        }


def scan_summary(session: Session, scan_id: int) -> ScanSummary:
    scan = session.get(Scan, scan_id, populate_existing=True)
    if scan is None:
        raise LookupError(f"no scan {scan_id}")
    rows = session.execute(
        select(Result.verdict, Result.error_reason, func.count())
        .select_from(ScanItem)
        .join(Result, Result.id == ScanItem.result_id)
        .where(ScanItem.scan_id == scan_id)
        .group_by(Result.verdict, Result.error_reason)
    ).all()
    summary = ScanSummary(
        scan_id=scan.id,
        source_uri=scan.source_uri,
        status=scan.status,
        model=f"{scan.model_name} v{scan.model_version}" if scan.model_version is not None else scan.model_name,
        total=scan.total,
        processed=scan.processed,
        detail=scan.detail or "",
        coverage=scan.coverage or "",
    )
    for verdict, reason, count in rows:
        summary.verdicts[verdict] += count
        if verdict == ERROR:
            summary.error_reasons[reason or "unknown"] += count
    end = scan.finished_at or utcnow()
    summary.seconds = (end - scan.created_at).total_seconds()
    return summary


def _reusable(model_name: str, model_version: int, coverage: str) -> Any:
    """Results a scan may take as its own: this model version's, seen under the scan's coverage mode (a result
    of the centre tile says nothing about the corners a ``full`` scan asks about), and not about a failed run."""
    return (
        (Result.model_name == model_name)
        & (Result.model_version == model_version)
        & (Result.coverage == coverage)
        & or_(Result.verdict != ERROR, Result.error_reason.is_(None), Result.error_reason.not_in(NOT_REUSABLE_REASONS))
    )


def known_by_etag(
    session: Session, bucket: str, refs: Sequence[Any], model_name: str, model_version: int, coverage: str
) -> dict[str, tuple[int, Result]]:
    """key -> (image id, result) for those ``refs`` whose (bucket, key, ETag) already has a reusable result of
    this model version under ``coverage``: an unchanged object, nothing to fetch or infer. Refs without an ETag,
    or with a listing reason (a FIFO, a refused link: :attr:`worker.storage.ObjectRef.reason`), never match."""
    etags = {ref.key: ref.etag for ref in refs if ref.etag and not getattr(ref, "reason", "")}
    if not etags or model_version <= 0:
        return {}
    rows = session.execute(
        select(Image.id, Image.key, Image.etag, Result)
        .join(Result, Result.sha256 == Image.sha256)
        .where(Image.bucket == bucket, Image.key.in_(list(etags)), _reusable(model_name, model_version, coverage))
    ).all()
    return {key: (image_id, result) for image_id, key, etag, result in rows if etags.get(key) == etag}


def known_by_content(
    session: Session, sha256s: Iterable[str], model_name: str, model_version: int, coverage: str
) -> dict[str, Result]:
    """sha256 -> reusable result of this model version under ``coverage`` for content already judged (under any
    key)."""
    wanted = sorted(set(sha256s))
    if not wanted or model_version <= 0:
        return {}
    rows = session.scalars(
        select(Result).where(Result.sha256.in_(wanted), _reusable(model_name, model_version, coverage))
    )
    return {row.sha256: row for row in rows}


def link_known(session: Session, scan_id: int, known: dict[str, tuple[int, Result]]) -> None:
    """Point scan items at results that already exist (a rescan's unchanged objects), counting them as processed."""
    if not known:
        return
    now = utcnow()
    rows = _unique(
        (
            {"scan_id": scan_id, "key": key, "image_id": image_id, "result_id": result.id, "updated_at": now}
            for key, (image_id, result) in known.items()
        ),
        ("key",),
    )
    before = item_states(session, scan_id, [row["key"] for row in rows])
    set_items(session, scan_id, rows, {key: result.verdict == ERROR for key, (_, result) in known.items()}, before)


MAX_DETAIL = 4000
MAX_NOTE = 1000  # a longer note (a storage error's whole response) is cut, so it cannot crowd out all others
NOTES_DROPPED = "(further notes dropped)"


def note_scan(session: Session, scan_id: int, note: str) -> None:
    """Append a line to the scan's ``detail`` (what happened on the way: redeliveries, retries), bounded to
    ``MAX_DETAIL`` characters: a note that no longer fits is replaced by one ``NOTES_DROPPED`` line.

    One UPDATE computes the new detail from the stored one, so concurrent writers never overwrite each other's
    notes. (A Python read-then-write under ``SELECT ... FOR UPDATE`` did, on SQLite, which ignores FOR UPDATE.)"""
    if len(note) > MAX_NOTE:
        note = note[: MAX_NOTE - 1] + "…"
    current = func.coalesce(Scan.detail, "")
    room = MAX_DETAIL - len("\n" + NOTES_DROPPED)  # the marker always fits after the last kept note
    new_detail = case(
        # once a note was dropped, later ones are too (a shorter one would fit, but the story would have a hole)
        (current.endswith(NOTES_DROPPED, autoescape=True), current),
        (func.length(current) + (len(note) + 1) <= room, case(
            (current == "", literal(note)), else_=current + literal("\n" + note)
        )),
        (current == "", literal(NOTES_DROPPED)),
        else_=current + literal("\n" + NOTES_DROPPED),
    )  # fmt: skip
    session.execute(
        update(Scan).where(Scan.id == scan_id).values(detail=new_detail),
        execution_options={"synchronize_session": "fetch"},
    )
