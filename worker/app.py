"""The Celery application: broker, serialisation and the delivery guarantees the scan pipeline relies on.

    celery -A worker.app worker --pool=prefork -c 2 -Q gamma.scan
    celery -A worker.app beat           # scans on the cron schedule of GAMMA_SCHEDULE (worker.schedule)

Why each delivery setting:
- ``task_acks_late`` + ``task_reject_on_worker_lost``: a message is acknowledged after its chunk is committed,
  and goes back to the queue if the worker process dies mid-chunk. A chunk may therefore run twice; the
  pipeline's writes are idempotent upserts, so twice is harmless and never is impossible.
- ``worker_prefetch_multiplier=1``: a worker holds one unacked chunk per process, so a slow worker does not
  sit on a backlog that idle workers could take, and a crash redelivers at most one chunk per process.
- ``visibility_timeout`` (Redis): an unacked message is redelivered after it; :class:`~worker.settings.Settings`
  enforces that it exceeds the hard time limit plus the longest retry backoff (a countdown waits unacked too).
- soft/hard time limits: the soft limit raises inside the task so it can record its images as failed; the
  hard limit kills a process that ignores it.
- JSON only: a message is data, never a pickle a producer could use to run code in the worker.
"""

from __future__ import annotations

from typing import Any

from celery import Celery

from worker.schedule import beat_schedule, load_schedule
from worker.settings import Settings
from worker.storage import ObjectRef

TASK_NAME = "gamma.scan_chunk"


def encode_refs(refs: list[ObjectRef]) -> list[list[Any]]:
    """Object refs as a message carries them: ``[key, etag, size]`` lists (JSON has no dataclasses), plus
    ``reason, detail`` for an entry the listing found unreadable (it is recorded, never fetched)."""
    return [
        [ref.key, ref.etag, ref.size, str(ref.reason), ref.detail] if ref.reason else [ref.key, ref.etag, ref.size]
        for ref in refs
    ]


def decode_refs(items: list[list[Any]]) -> list[ObjectRef]:
    """The inverse of :func:`encode_refs`; also reads the 3-item lists of messages queued before reasons."""
    refs = []
    for item in items:
        key, etag, size, *rest = item
        reason, detail = (str(rest[0]), str(rest[1])) if len(rest) >= 2 else ("", "")
        refs.append(ObjectRef(str(key), str(etag), int(size), reason, detail))
    return refs


def create_app(settings: Settings | None = None) -> Celery:
    settings = settings or Settings.from_env()
    app = Celery("gamma", broker=settings.broker_url, include=["worker.tasks"])
    app.conf.update(
        task_serializer="json",
        result_serializer="json",
        accept_content=["json"],
        event_serializer="json",
        task_ignore_result=True,  # progress and results live in the database, not in a result backend
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        task_soft_time_limit=settings.soft_time_limit_s,
        task_time_limit=settings.time_limit_s,
        broker_transport_options={"visibility_timeout": settings.visibility_timeout_s},
        task_default_queue=settings.queue,
        broker_connection_retry_on_startup=True,
        worker_cancel_long_running_tasks_on_connection_loss=True,
        worker_hijack_root_logger=False,
        timezone="UTC",
        enable_utc=True,
        beat_schedule=beat_schedule(load_schedule(settings.schedule), settings.queue),
    )
    return app


settings = Settings.from_env()
app = create_app(settings)
