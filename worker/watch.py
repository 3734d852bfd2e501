"""``gamma-submit --wait`` must not wait silently for a scan nobody can finish: :class:`StallWatch` says why.

Each poll of the scan hands it the scan's ``processed`` count. While that moves, nothing is asked. It asks:
- every ``dead_every_s``: the broker's dead-letter list (:mod:`worker.deadletter`) for chunks of this scan, which
  a worker refused because the scan is not in *its* database (a relative ``sqlite:///gamma.db`` resolved in
  another directory, a worker on another server). One is enough: the scan cannot complete.
- after ``grace_s`` without progress: whether any worker consumes the queue (Celery's
  ``inspect().active_queues()``). None: "no worker is consuming queue X".
Workers that consume but make no progress (a long chunk, a slow model load, an outage being retried) are only
reported, never a reason to stop.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

log = logging.getLogger(__name__)


class StallWatch:
    """``watch(processed) -> ""`` (keep waiting) or why the scan will not complete (stop waiting, exit non-zero)."""

    def __init__(
        self,
        queue: str,
        grace_s: float,
        consumers: Callable[[], int | None],
        dead: Callable[[], list[dict[str, Any]]],
        clock: Callable[[], float] = time.monotonic,
        dead_every_s: float = 5.0,
        on_note: Callable[[str], None] | None = None,
    ) -> None:
        self.queue = queue
        self.grace_s = grace_s
        self.consumers = consumers
        self.dead = dead
        self.clock = clock
        self.dead_every_s = dead_every_s
        self.on_note = on_note or log.warning
        self._last: int | None = None
        self._since = clock()
        self._dead_at = float("-inf")
        self.dead_letters: list[dict[str, Any]] = []

    def __call__(self, processed: int) -> str:
        now = self.clock()
        if processed != self._last:
            self._last, self._since = processed, now
        if now - self._dead_at >= self.dead_every_s:
            self._dead_at = now
            self.dead_letters = self.dead()
            if self.dead_letters:
                first = self.dead_letters[-1]  # the oldest: the list is newest first
                return (f"{len(self.dead_letters)} chunk(s) of this scan were dead-lettered by worker "
                        f"{first.get('worker', '?')}: {first.get('reason', '?')}")  # fmt: skip
        if self.grace_s <= 0 or now - self._since < self.grace_s:
            return ""
        count = self.consumers()
        stalled = now - self._since
        self._since = now  # ask again only after another grace period
        if count == 0:
            return (f"no worker is consuming queue {self.queue} (no progress for {stalled:.0f} s); its chunks stay "
                    "queued for a worker started later")  # fmt: skip
        who = "workers" if count is None else f"{count} worker(s)"
        self.on_note(f"no progress for {stalled:.0f} s; {who} consume queue {self.queue}: still waiting")
        return ""


def queue_consumers(app: Any, queue: str, timeout_s: float = 2.0) -> int | None:
    """How many workers answer ``inspect().active_queues()`` with ``queue``; None if the broker cannot be asked."""
    try:
        replies = app.control.inspect(timeout=timeout_s).active_queues() or {}
    except Exception as error:
        log.warning("could not ask the workers which queues they consume (%s)", type(error).__name__)
        return None
    return sum(1 for queues in replies.values() if any(q.get("name") == queue for q in queues or ()))
