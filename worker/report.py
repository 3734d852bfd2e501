"""What people see: the progress of a scan and its summary table (rich, on stderr when stdout carries JSON)."""

from __future__ import annotations

import time
from collections.abc import Callable

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table
from sqlalchemy import case, func, select
from sqlalchemy.orm import sessionmaker

from gamma.verdict import Verdict
from worker.db import Result, Scan, ScanItem
from worker.records import ScanSummary, scan_summary

VERDICT_ORDER = tuple(verdict.value for verdict in Verdict)  # real, ai-generated, manipulated, needs-review, error
FINAL_STATUSES = ("done", "failed", "interrupted")  # a scan in one of these changes no more by itself
IMAGE_ROWS = 50  # a per-image table beyond this belongs in --json or gamma-report, not on a terminal


def progress_bar(console: Console) -> Progress:
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[rate]:.1f} img/s"),
        TimeElapsedColumn(),
        console=console,
        transient=False,
        refresh_per_second=2,  # the bar only moves when a chunk commits; redrawing faster burns CPU for nothing
    )


class ScanStuck(Exception):
    """``wait_for_scan``'s watch says the scan will not complete (no consumer, chunks dead-lettered)."""


def wait_for_scan(
    sessions: sessionmaker,
    scan_id: int,
    console: Console,
    timeout: float,
    poll: float = 1.0,
    watch: Callable[[int], str] | None = None,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> bool:
    """Poll the scan's row until it is done, failed or interrupted (True) or ``timeout`` seconds pass (False).

    ``watch(processed)`` (a :class:`worker.watch.StallWatch`) is asked each poll; a non-empty answer raises
    :class:`ScanStuck` with it."""
    deadline = clock() + timeout
    start = clock()
    with progress_bar(console) as progress:
        task = progress.add_task(f"scan {scan_id}", total=None, rate=0.0)
        while True:
            with sessions() as session:
                scan = session.get(Scan, scan_id)
                assert scan is not None
                status, total, processed = scan.status, scan.total, scan.processed
            elapsed = max(clock() - start, 1e-9)
            progress.update(
                task,
                total=total if status != "listing" else None,
                completed=processed,
                rate=processed / elapsed,
                description=f"scan {scan_id} ({status})",
            )
            if status in FINAL_STATUSES:
                return True
            if watch is not None and (why := watch(processed)):
                raise ScanStuck(why)
            if clock() > deadline:
                return False
            sleep(poll)


def summary_table(summary: ScanSummary) -> Table:
    coverage = f", coverage {summary.coverage}" if summary.coverage else ""
    table = Table(title=f"scan {summary.scan_id}: {summary.source_uri} ({summary.status}, {summary.model}{coverage})")
    table.add_column("verdict")
    table.add_column("images", justify="right")
    table.add_column("share", justify="right")
    processed = max(summary.processed, 1)
    for verdict in (*VERDICT_ORDER, *sorted(set(summary.verdicts) - set(VERDICT_ORDER))):
        count = summary.verdicts.get(verdict, 0)
        if count or verdict != Verdict.ERROR:
            table.add_row(verdict, str(count), f"{count / processed:.1%}")
    for reason, count in sorted(summary.error_reasons.items()):
        table.add_row(f"  error: {reason}", str(count), f"{count / processed:.1%}")
    table.add_section()
    table.add_row("processed / listed", f"{summary.processed} / {summary.total}", "")
    table.add_row("images/s", f"{summary.images_per_second:.2f}", f"{summary.seconds:.1f} s")
    if summary.detail:
        lines = summary.detail.splitlines()
        table.caption = "\n".join(lines[-5:]) + (f"\n(+{len(lines) - 5} earlier notes)" if len(lines) > 5 else "")
    return table


def image_table(sessions: sessionmaker, scan_id: int, limit: int = IMAGE_ROWS) -> Table | None:
    """One row per image of the scan (verdict, probability, mask areas, tiles seen of the image's tiles, or the
    error), flagged images first and at most ``limit`` rows; None for an empty scan."""
    flagged = (Verdict.AI_GENERATED.value, Verdict.MANIPULATED.value, Verdict.NEEDS_REVIEW.value)
    flagged_first = case((Result.verdict.in_(flagged), 0), else_=1)
    query = (
        select(ScanItem.key, Result.verdict, Result.probability, Result.ai_area, Result.manipulated_area,
               Result.error_reason, Result.tiles_seen, Result.tiles_total)
        .join(Result, Result.id == ScanItem.result_id)
        .where(ScanItem.scan_id == scan_id)
        .order_by(flagged_first, Result.probability.desc().nulls_last(), ScanItem.key)
        .limit(limit)
    )  # fmt: skip
    with sessions() as session:
        rows = session.execute(query).all()
        of_scan = (ScanItem.scan_id == scan_id, ScanItem.result_id.is_not(None))
        judged = session.scalar(select(func.count()).select_from(ScanItem).where(*of_scan)) or 0
    if not rows:
        return None
    table = Table(title=f"scan {scan_id}: images" + (f" (first {len(rows)} of {judged})" if judged > len(rows) else ""))
    for name, justify in (("key", "left"), ("verdict", "left"), ("p(AI)", "right"), ("AI area", "right"),
                          ("manipulated area", "right"), ("tiles", "right")):  # fmt: skip
        table.add_column(name, justify=justify)  # type: ignore[arg-type]
    for key, verdict, probability, ai_area, manipulated_area, reason, seen, tiles in rows:
        if reason:
            table.add_row(key, f"error: {reason}", "", "", "", "")
            continue
        shown = f"{seen}/{tiles}" if seen is not None else ""  # a result from before contract v2 has no tiles
        table.add_row(key, verdict, f"{probability:.3f}", f"{ai_area:.1%}", f"{manipulated_area:.1%}", shown)
    if judged > len(rows):
        table.caption = "all images: --json, or gamma-report SCAN_ID --html"
    return table


def print_summary(sessions: sessionmaker, scan_id: int, console: Console, images: bool = True) -> ScanSummary:
    """The per-image table (bounded, see :func:`image_table`) when ``images``, then the summary table."""
    if images and (table := image_table(sessions, scan_id)) is not None:
        console.print(table)
    with sessions() as session:
        summary = scan_summary(session, scan_id)
    console.print(summary_table(summary))
    return summary
