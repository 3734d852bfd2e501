"""THE scan pipeline: object refs -> bytes -> preprocess + infer + judge -> mask PNGs -> one DB transaction.

``gamma-scan`` calls :func:`run_chunk` in a loop; the Celery task calls it once per message. They differ only in
the :class:`~worker.runtime.Runtime` they hold (in-process PyTorch or a Triton client; masks in a folder or a
bucket), never in what happens to an image.

Two kinds of failure, two paths:
- about one object (missing, too large, undecodable, truncated, ...): an error :class:`Outcome` with a reason,
  stored like any verdict; the chunk goes on. Bad input never poisons a scan.
- about a service (S3 throttled, Triton down, database locked): the exception propagates and the task retries
  the whole chunk. That is safe because every write is idempotent: masks are content-addressed objects and the
  database rows are upserts, all committed in one transaction at the end.

Preprocessing and inference are delegated to :class:`gamma.inference.Detector` (parallel preprocessing, batches
of the backend's ``max_batch_size``, the checkpoint's thresholds), so a verdict here is by construction the
verdict ``gamma-classify`` gives for the same bytes.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

from gamma.inference import Detector, ImageResult
from gamma.tiling import parse_coverage
from worker import metrics
from worker.outcome import Outcome
from worker.records import known_by_content, known_by_etag, lock_scan, record_outcomes, unprocessed_keys
from worker.runtime import Runtime, TimedBackend
from worker.storage import ObjectRef, ObjectUnreadable, Source


def _fetch(source: Source, ref: ObjectRef, max_bytes: int) -> tuple[bytes | ObjectUnreadable, float]:
    if ref.reason:  # the listing found it unreadable (a FIFO, a refused link...): recorded, never fetched
        return ObjectUnreadable(ref.reason, ref.detail), 0.0
    start = time.perf_counter()
    try:
        data: bytes | ObjectUnreadable = source.get(ref, max_bytes)
    except ObjectUnreadable as unreadable:
        data = unreadable
    elapsed = time.perf_counter() - start
    metrics.FETCH_SECONDS.observe(elapsed)
    return data, elapsed * 1000


def _judged(
    ref: ObjectRef,
    sha256: str,
    size: int,
    result: ImageResult,
    runtime: Runtime,
    pool: ThreadPoolExecutor,
    name: str,
    version: int,
) -> Outcome:
    assert result.judgement is not None and result.ai_mask is not None and result.manipulation_mask is not None
    assert result.tiles is not None
    plan = result.tiles.plan
    coverage = plan.coverage.value
    put = runtime.masks.put
    ai_url = pool.submit(put, sha256, name, version, "ai", result.ai_mask, coverage)
    manipulation_url = pool.submit(put, sha256, name, version, "manipulation", result.manipulation_mask, coverage)
    judgement = result.judgement
    return Outcome(
        key=ref.key,
        sha256=sha256,
        verdict=judgement.verdict.value,
        etag=ref.etag,
        size=size,
        probability=judgement.probability,
        ai_area=judgement.ai_area,
        manipulated_area=judgement.manipulated_area,
        ai_mask_url=ai_url.result(),
        manipulation_mask_url=manipulation_url.result(),
        coverage=coverage,
        tiles_seen=plan.tiles_seen,
        tiles_total=plan.grid,
        seen_fraction=round(plan.seen_fraction(), 4),  # as gamma-classify prints it (TileOutputs.summary)
        top_tile=list(result.tiles.top_tile),
    )


def classify_chunk(
    runtime: Runtime,
    source: Source,
    refs: Sequence[ObjectRef],
    reuse: bool = True,
    detector: Detector | None = None,
) -> list[Outcome]:
    """Fetch, classify and store the masks of ``refs``; one :class:`Outcome` per distinct key, in order.

    ``detector`` (default: :meth:`Runtime.pinned_detector`) holds the backend to one model version for the whole
    chunk: reuse lookups, inference, mask keys and the recorded version are all that version's, even if a Triton
    server moves to another version meanwhile. Its ``coverage`` is the chunk's: every outcome records it, errors
    included.

    With ``reuse`` (incremental scans), a ref whose (bucket, key, ETag) already has a result of the loaded model
    version under the same coverage is not even fetched, and fetched bytes whose sha256 already has one (a copy
    under another key) are not inferred: both reuse the existing result row.

    Raises only for failures of a service (storage, backend); per-object problems become error outcomes.
    """
    refs = list({ref.key: ref for ref in refs}.values())
    detector = detector or runtime.pinned_detector()
    backend = detector.backend
    assert isinstance(backend, TimedBackend)
    max_bytes = detector.limits.max_bytes
    name, version, coverage = backend.model_name, backend.model_version, detector.coverage.value
    outcomes: list[Outcome | None] = [None] * len(refs)
    if reuse:
        with runtime.sessions() as session:
            known = known_by_etag(session, source.bucket, refs, name, version, coverage)
        for index, ref in enumerate(refs):
            if ref.key in known:
                outcomes[index] = Outcome.reused(ref.key, ref.etag, ref.size, known[ref.key][1])
    todo = [index for index, outcome in enumerate(outcomes) if outcome is None]
    with ThreadPoolExecutor(runtime.settings.fetch_workers) as pool:
        fetched = list(pool.map(lambda index: _fetch(source, refs[index], max_bytes), todo))
        readable: list[tuple[int, bytes, str, float]] = []
        for index, (data, fetch_ms) in zip(todo, fetched):
            ref = refs[index]
            if isinstance(data, ObjectUnreadable):
                outcomes[index] = Outcome.failed(
                    ref.key,
                    source.object_uri(ref.key),
                    data.reason,
                    data.detail,
                    etag=ref.etag,
                    size=ref.size,
                    fetch_ms=fetch_ms,
                    coverage=coverage,
                )
            else:
                readable.append((index, data, hashlib.sha256(data).hexdigest(), fetch_ms))
        if reuse and readable:
            with runtime.sessions() as session:
                same_bytes = known_by_content(session, (sha for _, _, sha, _ in readable), name, version, coverage)
            for index, data, sha256, fetch_ms in readable:
                if sha256 in same_bytes:
                    ref = refs[index]
                    reused = Outcome.reused(ref.key, ref.etag, len(data), same_bytes[sha256])
                    reused.fetch_ms = fetch_ms
                    outcomes[index] = reused
            readable = [item for item in readable if item[2] not in same_bytes]

        infer_before = backend.seconds
        start = time.perf_counter()
        results = detector.classify_bytes([(refs[i].key, data) for i, data, _, _ in readable]) if readable else []
        classify_ms = (time.perf_counter() - start) * 1000
        infer_ms = (backend.seconds - infer_before) * 1000
        judged = sum(1 for r in results if r.judgement is not None)
        per_preprocess = (classify_ms - infer_ms) / max(len(readable), 1)
        for _ in readable:
            metrics.PREPROCESS_SECONDS.observe(per_preprocess / 1000)
        per_infer = infer_ms / max(judged, 1)

        for (index, data, sha256, fetch_ms), result in zip(readable, results):
            ref = refs[index]
            if result.judgement is None:
                assert result.error is not None
                outcome = Outcome.failed(
                    ref.key,
                    source.object_uri(ref.key),
                    result.error.reason,
                    result.error.detail,
                    sha256=sha256,
                    etag=ref.etag,
                    size=len(data),
                    coverage=coverage,
                )
            else:
                outcome = _judged(ref, sha256, len(data), result, runtime, pool, name, version)
                outcome.infer_ms = per_infer
            outcome.fetch_ms = fetch_ms
            outcome.preprocess_ms = per_preprocess
            outcomes[index] = outcome
    return [o for o in outcomes if o is not None]


def run_chunk(
    runtime: Runtime,
    source_uri: str,
    refs: Sequence[ObjectRef],
    scan_id: int | None,
    reuse: bool = True,
    coverage: str | None = None,
) -> list[Outcome]:
    """Classify one chunk and record it (and the scan's new counts) in one transaction, under the one model
    version that judged it (:meth:`Runtime.pinned_detector`) and the scan's ``coverage`` (None: the process's
    ``GAMMA_COVERAGE``)."""
    source = runtime.source(source_uri)
    detector = runtime.pinned_detector(coverage)
    outcomes = classify_chunk(runtime, source, refs, reuse, detector)
    backend = detector.backend
    with runtime.sessions.begin() as session:
        record_outcomes(session, scan_id, source.bucket, backend.model_name, backend.model_version, outcomes)
    metrics.record(outcomes)
    return outcomes


def mark_failed(
    runtime: Runtime,
    source_uri: str,
    refs: Sequence[ObjectRef],
    scan_id: int | None,
    reason: str,
    detail: str,
    coverage: str | None = None,
) -> list[Outcome]:
    """Give each of ``refs`` still without a result in the scan an error result (``reason``), in one transaction.

    Called when a task gives up (retries exhausted, time limit, a bug): the scan then still completes, and the
    images it could not judge say why instead of staying pending forever. ``coverage``: the scan's (None: the
    process's ``GAMMA_COVERAGE``), recorded on the error rows as on any result of the scan.
    """
    source = runtime.source(source_uri)
    name, version = runtime.model_identity()
    coverage = parse_coverage(coverage or runtime.settings.coverage).value
    with runtime.sessions.begin() as session:
        keys = [ref.key for ref in refs]
        if scan_id is not None:
            # lock before reading which keys are pending: a chunk recording the same keys right now (a second
            # lister's copy of this chunk) commits first, and its verdicts are then not overwritten with errors
            lock_scan(session, scan_id)
        pending = set(unprocessed_keys(session, scan_id, keys) if scan_id is not None else keys)
        outcomes = [
            Outcome.failed(
                ref.key, source.object_uri(ref.key), reason, detail, etag=ref.etag, size=ref.size, coverage=coverage
            )
            for ref in refs
            if ref.key in pending
        ]
        record_outcomes(session, scan_id, source.bucket, name, version, outcomes)
    metrics.record(outcomes)
    return outcomes
