"""Submitting a scan: what ``gamma-submit`` and the beat task both do (list, record, skip what is known, queue).

The model version decides what a rescan may skip, so the submitter must know it without loading a model:
``GAMMA_MODEL_VERSION`` if set, else the version Triton serves (one metadata call), else the checkpoint's
``metadata.json``. If none can be found the listing skips nothing, and the workers, which know their version,
still skip unchanged objects before fetching them.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from celery import Celery
from kombu.exceptions import OperationalError as KombuOperationalError

from worker.app import TASK_NAME, create_app, encode_refs
from worker.db import Scan, make_engine, migrate, session_factory, utcnow
from worker.records import claim_scan, note_scan
from worker.scans import Backpressure, list_into_scan, open_scan
from worker.settings import Settings
from worker.storage import ObjectRef, open_target

log = logging.getLogger(__name__)

# Where gamma.weights looks for checkpoints by name (not imported from there: it loads torch).
REPO_MODELS_DIR = Path(__file__).resolve().parent.parent / "models"
BACKPRESSURE_POLL_S = 1.0  # how often a listing that waits for room in the queue looks again
STALL_S = 300.0  # in a worker: a full queue not drained for this long lifts the bound (Backpressure)


class QueueDepth:
    """How many messages wait in ``queue`` on the app's broker, asked through kombu on one connection kept for
    the listing: a passive declare, which on Redis is ``LLEN`` of the queue's lists (one per priority step),
    pipelined. Messages workers hold unacknowledged are not counted (at most one per worker process).

    Redis deletes an empty list, so "no such queue" means nothing waits; a broker that cannot be reached is a
    :class:`kombu.exceptions.OperationalError`, which fails the scan like a failed publish would.
    """

    def __init__(self, app: Celery, queue: str) -> None:
        self.queue = queue
        self.connection = app.connection_for_read()

    def __call__(self) -> int:
        try:
            channel = self.connection.default_channel
            return int(channel.queue_declare(queue=self.queue, passive=True).message_count)
        except self.connection.channel_errors:
            return 0
        except self.connection.connection_errors as error:
            raise KombuOperationalError(f"broker: {error}") from error

    def close(self) -> None:
        self.connection.release()


@dataclass(frozen=True)
class Submitted:
    scan_id: int
    source_uri: str
    total: int
    model_version: int
    existing: bool = False  # the scan of this submit key was there already (a second delivery of a beat message)


def checkpoint_identity(name_or_path: str) -> tuple[str, int]:
    """(name, version) a worker holding this checkpoint records, as ``gamma.weights.Checkpoint`` derives them:
    ``metadata.json``'s name (else the folder's) and version (else 1); ``(name_or_path, 0)`` if it is not here."""
    extra = [Path(p) for p in os.environ.get("GAMMA_MODEL_PATH", "").split(os.pathsep) if p]
    for folder in (Path(name_or_path), *(root / name_or_path for root in (*extra, REPO_MODELS_DIR))):
        if (folder / "model.safetensors").is_file():
            path = folder / "metadata.json"
            metadata = json.loads(path.read_text()) if path.is_file() else {}
            return str(metadata.get("name") or folder.name), int(metadata.get("version", 1))
    return name_or_path, 0


def checkpoint_version(name_or_path: str) -> int:
    return checkpoint_identity(name_or_path)[1]


def triton_version(url: str, model: str, timeout_s: float = 5.0) -> int:
    """The newest version of ``model`` Triton serves at ``url`` (gRPC), 0 if it cannot be asked."""
    import tritonclient.grpc as grpcclient

    try:
        client = grpcclient.InferenceServerClient(url)
        try:
            metadata = client.get_model_metadata(model, "", client_timeout=timeout_s)
        finally:
            client.close()
        return max((int(v) for v in metadata.versions), default=0)
    except Exception as error:  # the scan must not fail for this: the workers skip what they know anyway
        log.warning("could not ask Triton at %s for %r's version (%s); listing skips nothing", url, model, error)
        return 0


def resolve_model(settings: Settings) -> tuple[str, int]:
    """(model name, version) the workers will record; version 0 when it cannot be known here."""
    if settings.triton_url:  # Triton serves the model under the configured name
        return settings.model, settings.model_version or triton_version(settings.triton_url, settings.model)
    name, version = checkpoint_identity(settings.model)
    return name, settings.model_version or version


def submit_scan(
    settings: Settings,
    target: str,
    full: bool = False,
    submit_key: str | None = None,
    time_budget_s: float | None = None,
    on_open: Callable[[int], None] | None = None,
) -> Submitted:
    """List ``target`` into a new scan and queue its chunks; ``full`` re-infers everything (no reuse).

    The scan is judged under ``settings.coverage`` (``gamma-submit --coverage``, else ``GAMMA_COVERAGE``): it is
    recorded on the scan and sent with each chunk, and only results seen under that mode are reused.

    Queueing waits while the queue holds ``settings.max_queued_chunks`` chunks (:class:`Backpressure`), so on a
    large prefix this returns when the last chunk is queued, not long before the workers could take them.

    ``submit_key`` (the beat task's "entry@fire time") makes it idempotent: the scan is claimed under that key,
    and a second call with the same key creates nothing. If that scan is still ``listing`` (the first delivery's
    worker died mid-listing, so the message came back) it is listed again into the same scan — registering a
    key twice is a no-op and a chunk queued twice is recorded once — otherwise it is returned as it is.
    ``time_budget_s`` (a listing inside a worker, under a time limit): past it, or when a full queue is not
    drained for :data:`STALL_S`, the listing stops waiting for room (noted on the scan) so that it ends.

    ``on_open(scan_id)`` is called as soon as the scan row exists, before listing: with backpressure a large
    prefix lists for as long as the scan runs, and whoever submitted wants the id to watch it meanwhile.

    The target is checked first (:func:`worker.storage.open_target`: a folder that exists, a bucket that can be
    listed): a bad one raises ValueError / ObjectUnreadable / StorageUnavailable before the database is even
    opened, so it leaves no scan row behind. Past that, raises what listing or the broker raise (the scan is
    then marked failed).
    """
    source = open_target(target, settings.s3_endpoint_url, settings.s3_region)
    engine = make_engine(settings.db_url)
    try:
        migrate(engine)
        sessions = session_factory(engine)
        name, version = (settings.model, 0) if full else resolve_model(settings)
        coverage = settings.coverage
        if submit_key is None:
            scan_id, status = open_scan(sessions, source, settings.model, coverage), None
        else:
            with sessions.begin() as session:
                scan_id, status = claim_scan(session, source.uri, settings.model, submit_key, coverage)
            if status not in (None, "listing"):
                with sessions() as session:
                    total = session.get(Scan, scan_id).total  # type: ignore[union-attr]
                log.info("scan %d of %s is there already (%s): nothing to submit", scan_id, submit_key, status)
                return Submitted(scan_id, source.uri, total, version, existing=True)
            if status == "listing":
                log.warning("scan %d of %s was left listing: listing it again", scan_id, submit_key)
        with sessions() as session:  # sent with every chunk: a worker on another database cannot mistake it
            row = session.get(Scan, scan_id)
            assert row is not None
            created_at = row.created_at.isoformat()
            coverage = row.coverage or coverage  # a scan claimed by an earlier delivery keeps the mode it has

        if on_open is not None:
            on_open(scan_id)
        producer = create_app(settings)

        def send(chunk: list[ObjectRef]) -> None:
            producer.send_task(
                TASK_NAME,
                args=[scan_id, source.uri, encode_refs(chunk)],
                # The scan's coverage travels with every chunk: workers whose GAMMA_COVERAGE differs still
                # judge all of its images under the one mode the scan records.
                kwargs={"reuse": not full, "scan_created_at": created_at, "coverage": coverage},
                queue=settings.queue,
            )

        def note(text: str) -> None:
            with sessions.begin() as session:
                note_scan(session, scan_id, f"{utcnow():%Y-%m-%d %H:%M:%S} {text}")

        depth = QueueDepth(producer, settings.queue)
        dispatch = Backpressure(
            send,
            depth,
            settings.max_queued_chunks,
            BACKPRESSURE_POLL_S,
            f"queue {settings.queue}",
            lift_after_s=time_budget_s,
            stall_s=STALL_S if time_budget_s is not None else None,
            on_lift=note,
        )
        try:
            skip = (name, version, coverage) if version else None
            total = list_into_scan(sessions, scan_id, source, settings.chunk_size, dispatch, skip_known=skip)
        finally:
            depth.close()
            producer.close()
        return Submitted(scan_id, source.uri, total, version, existing=status is not None)
    finally:
        engine.dispose()
