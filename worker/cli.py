"""``gamma-submit`` (queue a bucket prefix for the Celery workers) and ``gamma-scan`` (the same pipeline in-process).

    gamma-submit my-bucket/uploads/2024-06 --wait
    gamma-scan ./photos --json > verdicts.jsonl

Both take ``s3://BUCKET/PREFIX`` or a local folder (for ``gamma-submit``, one the workers see at the same path);
a bucket always needs its ``s3://``, and a path that is not an existing folder is an error that says so. Both
record a scan in the database (``GAMMA_DB_URL``) and print its summary. ``gamma-scan`` needs no Redis and no
Triton: it holds the PyTorch model itself, writes masks to a local folder unless told otherwise, and runs each
chunk through the very function a Celery task runs.

A command that cannot start (a target that is not there, a model that cannot be loaded, a malformed option)
exits with one line and leaves nothing behind: the target is checked first, then the model is loaded, and
only then is the database opened and the scan recorded.
"""

from __future__ import annotations

import json
import signal
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import click
from kombu.exceptions import OperationalError as KombuOperationalError
from rich.console import Console
from sqlalchemy import func, select, update
from sqlalchemy.orm import sessionmaker

from gamma.tiling import DEFAULT_COVERAGE
from worker.db import Scan, make_engine, session_factory, utcnow
from worker.deadletter import absolute_sqlite_url, database_identity, dead_letters, is_relative_sqlite
from worker.records import end_scan, note_scan
from worker.report import ScanStuck, print_summary, progress_bar, wait_for_scan
from worker.scans import list_into_scan, open_scan
from worker.settings import Settings
from worker.storage import ObjectRef, ObjectUnreadable, StorageUnavailable, open_target
from worker.submit import submit_scan

HELP = {"help_option_names": ["-h", "--help"]}
RESUMABLE = ("listing", "running", "interrupted", "failed")  # what gamma-scan --resume takes up again


class Terminated(KeyboardInterrupt):
    """SIGTERM, handled like Ctrl-C: the scan is marked ``interrupted`` before the process exits."""


@contextmanager
def interrupts_as_keyboard_interrupt() -> Iterator[None]:
    """Within the block SIGTERM raises :class:`Terminated` (SIGINT already raises KeyboardInterrupt); the
    previous handler is restored after. A no-op outside the main thread (signals are delivered there)."""
    try:
        previous = signal.getsignal(signal.SIGTERM)

        def terminated(_signum: int, _frame: object) -> None:
            raise Terminated()

        signal.signal(signal.SIGTERM, terminated)
    except ValueError:  # not the main thread
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def mark_interrupted(sessions: sessionmaker, scan_id: int, interrupt: KeyboardInterrupt, what: str) -> int:
    """Record on the scan that it was interrupted (status ``interrupted``, a finish time, a note with ``what``
    to do next); returns the exit status of a process killed by that signal (130 SIGINT, 143 SIGTERM)."""
    name, code = ("SIGTERM", 143) if isinstance(interrupt, Terminated) else ("SIGINT", 130)
    with sessions.begin() as session:
        row = session.get(Scan, scan_id)
        processed = row.processed if row is not None else 0
        end_scan(session, scan_id, "interrupted", f"{utcnow():%Y-%m-%d %H:%M:%S} interrupted by {name} after "
                 f"{processed} images; {what}")  # fmt: skip
    return code


COVERAGE_HELP = (
    "Which tiles of each image the model sees: centre (one), five (centre + corners) or full (every tile) "
    f"[env GAMMA_COVERAGE; default {DEFAULT_COVERAGE.value}]. Results seen under another mode are never reused."
)


def settings_from(**overrides: Any) -> Settings:
    """:meth:`Settings.from_env` with the CLI's options; a bad value (``--coverage bogus``, ``GAMMA_COVERAGE``,
    a malformed number) is a one-line error before anything is opened."""
    try:
        return Settings.from_env(**overrides)
    except ValueError as error:
        raise click.ClickException(str(error)) from None


# Failures of the listing or of the broker: the scan is marked failed and the CLI says why, without a traceback.
LISTING_ERRORS = (ObjectUnreadable, StorageUnavailable, KombuOperationalError)
# A target that is malformed or not there: refused before anything is recorded.
TARGET_ERRORS = (ValueError, ObjectUnreadable, StorageUnavailable)


@click.command(context_settings=HELP)
@click.argument("target")
@click.option("--db", "db_url", default=None, help="Database URL [env GAMMA_DB_URL; default sqlite:///gamma.db].")
@click.option("--broker", "broker_url", default=None, help="Celery broker URL [env GAMMA_BROKER_URL].")
@click.option("--model", default=None, help="Model name recorded on the scan [env GAMMA_MODEL].")
@click.option("--chunk-size", type=click.IntRange(1), default=None, help="Images per task [env GAMMA_CHUNK_SIZE].")
@click.option("--wait", is_flag=True, help="Show progress until the scan is done, then a summary.")
@click.option("--timeout", type=float, default=24 * 3600, show_default=True, help="Seconds --wait waits at most.")
@click.option("--full", is_flag=True, help="Re-infer every object (default: reuse results of this model version).")
@click.option("--coverage", default=None, help=COVERAGE_HELP)
@click.option(
    "--stall-timeout",
    type=float,
    default=60,
    show_default=True,
    help="With --wait: after this many seconds without progress, exit non-zero if no worker consumes the queue "
    "(0: never). Chunks dead-lettered by a worker on another database stop the wait at once.",
)
def submit(
    target: str,
    db_url: str | None,
    broker_url: str | None,
    model: str | None,
    chunk_size: int | None,
    wait: bool,
    timeout: float,
    full: bool,
    coverage: str | None,
    stall_timeout: float,
) -> None:
    """List TARGET (s3://BUCKET/PREFIX or a folder), record a scan, queue it; print the scan id.

    Incremental: objects whose (bucket, key, ETag) already have a result of the served model version are
    linked to it at listing time and never queued; a new model version (or another --coverage) rescans everything.
    """
    settings = settings_from(
        db_url=db_url, broker_url=broker_url, model=model, chunk_size=chunk_size, coverage=coverage
    )
    relative = is_relative_sqlite(settings.db_url)
    settings = settings.replace(db_url=absolute_sqlite_url(settings.db_url))
    opened: list[int] = []

    def on_open(scan_id: int) -> None:
        opened.append(scan_id)
        click.echo(scan_id)  # the id first, before a long (backpressured) listing: what `--wait` and people watch

    try:
        with interrupts_as_keyboard_interrupt():
            submitted = submit_scan(settings, target, full=full, on_open=on_open)
    except KeyboardInterrupt as interrupt:
        if not opened:
            raise SystemExit(143 if isinstance(interrupt, Terminated) else 130) from None
        engine = make_engine(settings.db_url)
        try:
            what = "the chunks queued so far still run; submit the target again to scan all of it"
            code = mark_interrupted(session_factory(engine), opened[0], interrupt, what)
        finally:
            engine.dispose()
        click.echo(f"scan {opened[0]} interrupted while listing: {what}", err=True)
        raise SystemExit(code) from None
    except LISTING_ERRORS as error:
        raise click.ClickException(f"scan failed: {error}") from error
    except ValueError as error:  # the target, before any scan was recorded
        raise click.ClickException(str(error)) from error
    scan_id = submitted.scan_id
    console = Console(stderr=True)
    console.print(
        f"scan {scan_id}: {submitted.total} objects under {submitted.source_uri} queued in chunks of "
        f"{settings.chunk_size}, coverage {settings.coverage}"
        + (f" (results of v{submitted.model_version} reused)" if submitted.model_version else "")
    )
    if relative:
        console.print(f"the database is a relative SQLite path: scan {scan_id} is in {settings.db_url}; workers "
                      "must write to that very file (an absolute GAMMA_DB_URL), or they refuse its chunks")  # fmt: skip
    if wait:
        _wait(settings, submitted.scan_id, submitted.source_uri, console, timeout, stall_timeout)


def _wait(settings: Settings, scan_id: int, source_uri: str, console: Console, timeout: float, stall: float) -> None:
    from worker.app import create_app
    from worker.watch import StallWatch, queue_consumers

    engine = make_engine(settings.db_url)
    sessions = session_factory(engine)
    app = create_app(settings)
    watch = StallWatch(
        settings.queue,
        stall,
        lambda: queue_consumers(app, settings.queue),
        lambda: dead_letters(settings.broker_url, settings.queue, scan_id, source_uri),
        on_note=lambda text: console.print(f"scan {scan_id}: {text}"),
    )
    try:
        if not wait_for_scan(sessions, scan_id, console, timeout, watch=watch):
            raise click.ClickException(f"scan {scan_id} not done after {timeout:.0f} s (it goes on in the workers)")
        print_summary(sessions, scan_id, console)
    except ScanStuck as stuck:
        if watch.dead_letters:  # the scan cannot complete: say so on it, where gamma-report shows it
            with sessions.begin() as session:
                end_scan(session, scan_id, "failed", f"{utcnow():%Y-%m-%d %H:%M:%S} {stuck}")
        raise click.ClickException(f"scan {scan_id}: {stuck}") from None
    finally:
        app.close()
        engine.dispose()


@click.command(context_settings=HELP)
@click.argument("target", required=False)
@click.option("--db", "db_url", default=None, help="Database URL [env GAMMA_DB_URL; default sqlite:///gamma.db].")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per image on stdout (progress on stderr).")
@click.option("--model", default=None, help="Checkpoint name or folder [env GAMMA_MODEL; default gamma-local-effl0].")
@click.option("--masks", "masks_url", default=None, help="Mask folder or s3://bucket/prefix [default ./masks].")
@click.option("--chunk-size", type=click.IntRange(1), default=None, help="Images per chunk [env GAMMA_CHUNK_SIZE].")
@click.option("--full", is_flag=True, help="Re-infer every object (default: reuse results of this model version).")
@click.option("--coverage", default=None, help=COVERAGE_HELP + " --resume goes on with the scan's own mode.")
@click.option(
    "--presign",
    "masks_presign",
    type=click.IntRange(0),
    default=None,
    help="With --json, print s3:// mask URLs as presigned GET URLs valid SECONDS [env GAMMA_MASKS_PRESIGN; 0: off].",
)
@click.option(
    "--resume",
    "resume_id",
    type=click.IntRange(1),
    default=None,
    help="Finish scan SCAN_ID (interrupted, or left listing by a killed process) instead of a new scan of TARGET: "
    "its source is listed again and only what has no result yet is run.",
)
def scan(
    target: str | None,
    db_url: str | None,
    as_json: bool,
    model: str | None,
    masks_url: str | None,
    chunk_size: int | None,
    full: bool,
    coverage: str | None,
    masks_presign: int | None,
    resume_id: int | None,
) -> None:
    """Scan TARGET (a folder or s3://BUCKET/PREFIX) in this process: no Redis, no Triton.

    Ctrl-C or SIGTERM marks the scan ``interrupted``; ``gamma-scan --resume SCAN_ID`` finishes it.
    """
    from gamma.preprocess import warn_if_no_heif
    from worker.masks import MaskLinks
    from worker.pipeline import run_chunk  # torch is imported only by the command that runs the model
    from worker.runtime import Runtime, make_backend

    settings = settings_from(
        db_url=db_url,
        model=model,
        masks_url=masks_url,
        chunk_size=chunk_size,
        triton_url="",
        masks_presign=masks_presign,
        coverage=coverage,
    )
    if (target is None) == (resume_id is None):
        raise click.UsageError("give TARGET, or --resume SCAN_ID (not both)")
    if resume_id is not None:
        target = _resumable_source(settings, resume_id)
    assert target is not None
    try:  # the target first: checking it takes milliseconds, loading the model seconds
        source = open_target(target, settings.s3_endpoint_url, settings.s3_region)
    except TARGET_ERRORS as error:
        raise click.ClickException(str(error)) from error
    links = MaskLinks.from_settings(settings)
    warn_if_no_heif(stderr=True)
    try:
        backend = make_backend(settings)  # gamma.weights.WeightsError (a ValueError) for a model not found
    except (ValueError, OSError) as error:
        raise click.ClickException(f"model {settings.model}: {error}") from error
    runtime = Runtime.create(settings, backend=backend)  # migrates: a scan row has its coverage from here on
    model_name = runtime.backend.model_name
    mode = settings.coverage
    skip = None
    if resume_id is None:
        scan_id = open_scan(runtime.sessions, source, model_name, mode)
    else:
        scan_id = resume_id
        conflict = ""
        with runtime.sessions.begin() as session:
            row = session.get(Scan, scan_id)
            assert row is not None
            # Half of a scan under one mode and half under another would be two scans in one: it goes on with its
            # own (a scan from before contract v2 has none and takes this run's).
            if row.coverage is not None and coverage is not None and row.coverage != mode:
                conflict = f"scan {scan_id} runs with coverage {row.coverage}: resume it without --coverage {mode}"
            else:
                mode = row.coverage or mode
                # one guarded UPDATE: the status read above is seconds old (the model loaded since), and workers
                # may have closed the scan meanwhile; a done scan is not reopened
                reopened = session.execute(
                    update(Scan)
                    .where(Scan.id == scan_id, Scan.status.in_(RESUMABLE))
                    .values(status="listing", finished_at=None, coverage=func.coalesce(Scan.coverage, mode))
                    .execution_options(synchronize_session=False)
                ).rowcount
                if reopened:
                    note_scan(session, scan_id, f"{utcnow():%Y-%m-%d %H:%M:%S} resumed by gamma-scan --resume")
                else:
                    session.refresh(row)
                    conflict = f"scan {scan_id} is {row.status}: nothing to resume"
        if conflict:
            runtime.close()
            raise click.ClickException(conflict)
        if not full:  # what this model version judged already (this scan's first part included) is linked, not run
            skip = (model_name, runtime.backend.model_version, mode)
    console = Console(stderr=True)
    try:
        with interrupts_as_keyboard_interrupt(), progress_bar(console) as progress:
            task = progress.add_task(f"scan {scan_id}", total=None, rate=0.0)

            def dispatch(chunk: list[ObjectRef]) -> None:
                outcomes = run_chunk(runtime, source.uri, chunk, scan_id, reuse=not full, coverage=mode)
                if as_json:
                    for outcome in outcomes:
                        sys.stdout.write(json.dumps({"scan_id": scan_id, **links.outcome(outcome.to_dict())}) + "\n")
                    sys.stdout.flush()
                progress.advance(task, len(outcomes))
                done = progress.tasks[0]
                progress.update(task, rate=done.completed / (done.elapsed or 1e-9))

            try:
                total = list_into_scan(runtime.sessions, scan_id, source, settings.chunk_size, dispatch, skip)
            except LISTING_ERRORS as error:
                raise click.ClickException(f"scan {scan_id} failed: {error}") from error
            progress.update(task, total=total)
    except KeyboardInterrupt as interrupt:
        code = mark_interrupted(runtime.sessions, scan_id, interrupt, f"gamma-scan --resume {scan_id} finishes it")
        console.print(f"scan {scan_id} interrupted: gamma-scan --resume {scan_id} finishes it")
        runtime.close()
        raise SystemExit(code) from None
    print_summary(runtime.sessions, scan_id, console, images=not as_json)  # --json has printed every image
    runtime.close()


def _resumable_source(settings: Settings, scan_id: int) -> str:
    """The source URI of scan ``scan_id`` if it can be resumed; a one-line error otherwise."""
    engine = make_engine(settings.db_url)
    try:
        with session_factory(engine)() as session:
            # Two columns, not the row: a database not yet migrated to this version (a scan interrupted before an
            # upgrade) lacks the newer ones until Runtime.create migrates it.
            row = session.execute(select(Scan.status, Scan.source_uri).where(Scan.id == scan_id)).one_or_none()
            status, uri = (row.status, row.source_uri) if row is not None else ("", "")
    except Exception as error:
        raise click.ClickException(f"cannot read scan {scan_id} from the database: {error}") from error
    finally:
        engine.dispose()
    if not status:
        raise click.ClickException(f"no scan {scan_id} in {database_identity(settings.db_url)}")
    if status not in RESUMABLE:
        raise click.ClickException(f"scan {scan_id} is {status}: nothing to resume")
    return uri
