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

from gamma.inference import ImageResult
from worker.outcome import Outcome
from worker.records import record_outcomes, unprocessed_keys
from worker.runtime import Runtime
from worker.storage import ObjectRef, ObjectUnreadable, Source


def _fetch(source: Source, ref: ObjectRef, max_bytes: int) -> tuple[bytes | ObjectUnreadable, float]:
    start = time.perf_counter()
    try:
        data: bytes | ObjectUnreadable = source.get(ref, max_bytes)
    except ObjectUnreadable as unreadable:
        data = unreadable
    return data, (time.perf_counter() - start) * 1000


def _judged(
    ref: ObjectRef, sha256: str, size: int, result: ImageResult, runtime: Runtime, pool: ThreadPoolExecutor
) -> Outcome:
    assert result.judgement is not None and result.ai_mask is not None and result.manipulation_mask is not None
    name, version = runtime.backend.model_name, runtime.backend.model_version
    ai_url = pool.submit(runtime.masks.put, sha256, name, version, "ai", result.ai_mask)
    manipulation_url = pool.submit(runtime.masks.put, sha256, name, version, "manipulation", result.manipulation_mask)
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
    )


def classify_chunk(runtime: Runtime, source: Source, refs: Sequence[ObjectRef]) -> list[Outcome]:
    """Fetch, classify and store the masks of ``refs``; one :class:`Outcome` per distinct key, in order.

    Raises only for failures of a service (storage, backend); per-object problems become error outcomes.
    """
    refs = list({ref.key: ref for ref in refs}.values())
    max_bytes = runtime.detector.limits.max_bytes
    with ThreadPoolExecutor(runtime.settings.fetch_workers) as pool:
        fetched = list(pool.map(lambda ref: _fetch(source, ref, max_bytes), refs))
        outcomes: list[Outcome | None] = [None] * len(refs)
        readable: list[tuple[int, bytes, str, float]] = []
        for index, (ref, (data, fetch_ms)) in enumerate(zip(refs, fetched)):
            if isinstance(data, ObjectUnreadable):
                outcomes[index] = Outcome.failed(
                    ref.key,
                    source.object_uri(ref.key),
                    data.reason,
                    data.detail,
                    etag=ref.etag,
                    size=ref.size,
                    fetch_ms=fetch_ms,
                )
            else:
                readable.append((index, data, hashlib.sha256(data).hexdigest(), fetch_ms))

        infer_before = runtime.backend.seconds
        start = time.perf_counter()
        results = runtime.detector.classify_bytes([(refs[i].key, data) for i, data, _, _ in readable])
        classify_ms = (time.perf_counter() - start) * 1000
        infer_ms = (runtime.backend.seconds - infer_before) * 1000
        judged = sum(1 for r in results if r.judgement is not None)
        per_preprocess = (classify_ms - infer_ms) / max(len(readable), 1)
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
                )
            else:
                outcome = _judged(ref, sha256, len(data), result, runtime, pool)
                outcome.infer_ms = per_infer
            outcome.fetch_ms = fetch_ms
            outcome.preprocess_ms = per_preprocess
            outcomes[index] = outcome
    return [o for o in outcomes if o is not None]


def run_chunk(runtime: Runtime, source_uri: str, refs: Sequence[ObjectRef], scan_id: int | None) -> list[Outcome]:
    """Classify one chunk and record it (and the scan's new counts) in one transaction."""
    source = runtime.source(source_uri)
    outcomes = classify_chunk(runtime, source, refs)
    backend = runtime.backend
    with runtime.sessions.begin() as session:
        record_outcomes(session, scan_id, source.bucket, backend.model_name, backend.model_version, outcomes)
    return outcomes


def mark_failed(
    runtime: Runtime, source_uri: str, refs: Sequence[ObjectRef], scan_id: int | None, reason: str, detail: str
) -> list[Outcome]:
    """Give each of ``refs`` still without a result in the scan an error result (``reason``), in one transaction.

    Called when a task gives up (retries exhausted, time limit, a bug): the scan then still completes, and the
    images it could not judge say why instead of staying pending forever.
    """
    source = runtime.source(source_uri)
    name, version = runtime.model_identity()
    with runtime.sessions.begin() as session:
        keys = [ref.key for ref in refs]
        pending = set(unprocessed_keys(session, scan_id, keys) if scan_id is not None else keys)
        outcomes = [
            Outcome.failed(ref.key, source.object_uri(ref.key), reason, detail, etag=ref.etag, size=ref.size)
            for ref in refs
            if ref.key in pending
        ]
        record_outcomes(session, scan_id, source.bucket, name, version, outcomes)
    return outcomes
