"""Turning a source into a scan: list it (streamed), register its keys a page at a time, hand each chunk on.

``gamma-submit`` hands chunks to Celery; ``gamma-scan`` runs them right away. Keys are registered in the scan
before their chunk is handed on, and the total is written only when the listing is complete, so a scan is
``done`` exactly when every listed key has a result — never while the listing is still going.

Memory is O(1) in the size of the source: the listing is a stream (S3 pages, ``os.scandir``), and at most one
registration batch (:data:`REGISTER_BATCH` keys, one S3 page) plus one chunk is held at a time. Keys are
registered one batch per transaction, not one chunk per transaction: a million keys are a thousand commits,
not thirty thousand. Handing chunks to a queue is bounded too (:class:`Backpressure`): the listing waits while
the queue holds ``max_queued_chunks``, so the broker holds O(bound) messages, not O(source).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Iterator
from itertools import islice

from sqlalchemy.orm import sessionmaker

from worker.records import add_scan_items, create_scan, fail_scan, finish_listing, known_by_etag, link_known
from worker.storage import LocalSource, ObjectRef, S3Source

REGISTER_BATCH = 1000  # keys registered (and looked up for reuse) per transaction: one S3 listing page

log = logging.getLogger(__name__)


class Backpressure:
    """A dispatch that hands chunks to ``send`` only while the queue has room: ``depth()`` (messages waiting)
    below ``limit``; 0 means no bound.

    After asking ``depth()`` it may send ``limit - depth`` chunks without asking again (consumers only ever
    shorten the queue), so a listing with room costs one question per that many chunks, and one per ``poll_s``
    while the queue is full. The bound holds for one producer; concurrent submitters to the same queue can
    together overshoot it by what each saw as room at its last look.

    Two ways out of waiting, for a listing that runs inside a worker under a time limit (the beat task):
    ``lift_after_s`` (seconds since the start) and ``stall_s`` (a full queue that did not get shorter for that
    long: no one drains it, perhaps because the only worker process is the one listing). Either lifts the bound
    for the rest of the listing, once, calling ``on_lift`` with the reason: the queue then grows like an unbounded
    one, but the listing ends instead of being killed half-done.
    """

    def __init__(
        self,
        send: Callable[[list[ObjectRef]], None],
        depth: Callable[[], int],
        limit: int,
        poll_s: float = 1.0,
        name: str = "the queue",
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
        lift_after_s: float | None = None,
        stall_s: float | None = None,
        on_lift: Callable[[str], None] | None = None,
    ) -> None:
        self.send = send
        self.depth = depth
        self.limit = limit
        self.poll_s = poll_s
        self.name = name
        self.sleep = sleep
        self.clock = clock
        self.stall_s = stall_s
        self.on_lift = on_lift
        self.lifted = ""  # why the bound was lifted, if it was
        self.sent = 0
        self.looks = 0  # depth() calls
        self.waits = 0  # polls while full
        self._room = 0
        self._last_note = float("-inf")
        self._lift_at = clock() + lift_after_s if lift_after_s is not None else None
        self._shortest: tuple[int, float] | None = None  # while waiting: the shortest queue seen, and since when

    def __call__(self, chunk: list[ObjectRef]) -> None:
        while self.limit and self._room <= 0:
            queued = self.depth()
            self.looks += 1
            self._room = self.limit - queued
            if self._room > 0:
                self._shortest = None
                break
            now = self.clock()
            if self._shortest is None or queued < self._shortest[0]:
                self._shortest = (queued, now)
            if self._lift_at is not None and now >= self._lift_at:
                self._lift(f"the listing used its time budget with {queued} chunks queued")
            elif self.stall_s is not None and now - self._shortest[1] >= self.stall_s:
                self._lift(f"{queued} chunks queued and none taken for {now - self._shortest[1]:.0f} s")
            else:
                self.waits += 1
                if now - self._last_note >= 60:
                    self._last_note = now
                    log.info("%s holds %d chunks (bound %d): the listing waits for the workers", self.name,
                             queued, self.limit)  # fmt: skip
                self.sleep(self.poll_s)
        self.send(chunk)
        self._room -= 1
        self.sent += 1

    def _lift(self, reason: str) -> None:
        self.limit = 0
        self.lifted = f"bound of {self.name} lifted: {reason}; the rest of the listing is queued without waiting"
        log.warning(self.lifted)
        if self.on_lift is not None:
            self.on_lift(self.lifted)


def chunked(refs: Iterable[ObjectRef], size: int) -> Iterator[list[ObjectRef]]:
    iterator = iter(refs)
    while chunk := list(islice(iterator, size)):
        yield chunk


def open_scan(
    sessions: sessionmaker, source: S3Source | LocalSource, model_name: str, coverage: str | None = None
) -> int:
    with sessions.begin() as session:
        return create_scan(session, source.uri, model_name, coverage)


def list_into_scan(
    sessions: sessionmaker,
    scan_id: int,
    source: S3Source | LocalSource,
    chunk_size: int,
    dispatch: Callable[[list[ObjectRef]], None],
    skip_known: tuple[str, int, str] | None = None,
) -> int:
    """List ``source`` into scan ``scan_id`` and call ``dispatch`` per chunk; returns the number of keys.

    ``skip_known=(model name, version, coverage)`` makes the scan incremental at listing time: keys whose
    (bucket, key, ETag) already has a result of that model version under that coverage mode are linked to it
    right here and never dispatched; the rest are re-chunked so workers still get full chunks.

    If listing or dispatching fails (no such bucket, S3 or the broker down) the scan is marked ``failed`` with
    the reason and the error propagates; chunks already dispatched still complete.
    """
    total = 0
    pending: list[ObjectRef] = []
    try:
        for batch in chunked(source.list(), max(chunk_size, REGISTER_BATCH)):
            with sessions.begin() as session:
                add_scan_items(session, scan_id, [ref.key for ref in batch])
                known = known_by_etag(session, source.bucket, batch, *skip_known) if skip_known else {}
                link_known(session, scan_id, known)
            pending.extend(ref for ref in batch if ref.key not in known)
            total += len(batch)
            while len(pending) >= chunk_size:
                dispatch(pending[:chunk_size])
                del pending[:chunk_size]
        if pending:
            dispatch(pending)
    except Exception as error:
        with sessions.begin() as session:
            fail_scan(session, scan_id, f"listing {source.uri} failed after {total} keys: {error}")
        raise
    with sessions.begin() as session:
        finish_listing(session, scan_id, total)
    return total
