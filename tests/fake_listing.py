"""A bucket of any number of keys for boto3's real ``list_objects_v2`` paginator, without a server.

:class:`FabricatedBucket` hooks botocore's ``before-call.s3.ListObjectsV2`` event: the client validates and
serialises each request as usual, then the hook answers it with a page it makes up from the request's
``continuation-token`` and ``max-keys`` (botocore skips the HTTP call when a ``before-call`` handler returns a
response). Pages are made one at a time, when asked, so a million-key listing holds one page, like S3 itself;
the test and the bench measure the listing code, not the fake. Used by tests/unit/test_worker_listing_memory.py
and bench/listing_memory.py.
"""

from __future__ import annotations

import gc
import json
import os
import sys
import time
import tracemalloc
from typing import Any
from urllib.parse import urlsplit

from botocore.awsrequest import AWSResponse

EVENT = "before-call.s3.ListObjectsV2"


class FabricatedBucket:
    """``count`` objects ``{prefix}{index:09d}.jpg`` (sorted like S3 lists them) in bucket ``name``."""

    def __init__(self, count: int, name: str = "photos", prefix: str = "uploads/") -> None:
        self.count = count
        self.name = name
        self.prefix = prefix
        self.pages = 0  # list_objects_v2 calls answered
        self.page_sizes: set[int] = set()

    def key(self, index: int) -> str:
        return f"{self.prefix}{index:09d}.jpg"

    def install(self, client: Any) -> Any:
        client.meta.events.register(EVENT, self._answer)
        return client

    def _answer(self, params: dict[str, Any], **_: Any) -> tuple[AWSResponse, dict[str, Any]]:
        query = params["query_string"]
        if query.get("prefix", "") != self.prefix or not urlsplit(params["url"]).path.startswith(f"/{self.name}"):
            raise AssertionError(f"unexpected listing request {params['url']} {query}")
        max_keys = int(query.get("max-keys", 1000))
        start = int(query.get("continuation-token") or 0)
        stop = min(start + max_keys, self.count)
        self.pages += 1
        self.page_sizes.add(max_keys)
        parsed: dict[str, Any] = {
            "ResponseMetadata": {"HTTPStatusCode": 200, "HTTPHeaders": {}, "RetryAttempts": 0},
            "IsTruncated": stop < self.count,
            "Contents": [
                {"Key": self.key(i), "ETag": f'"{i:032x}"', "Size": 1000 + i % 997, "StorageClass": "STANDARD"}
                for i in range(start, stop)
            ],
            "EncodingType": "url",  # what botocore asks for; its after-call handler decodes the keys
            "Name": self.name,
            "Prefix": self.prefix,
            "MaxKeys": max_keys,
            "KeyCount": stop - start,
        }
        if stop < self.count:
            parsed["NextContinuationToken"] = str(stop)
        return AWSResponse(params["url"], 200, {}, None), parsed


def _status_kib(field: str) -> int:
    """A memory figure of this process from /proc/self/status (Linux), in KiB: ``VmRSS`` (now), ``VmHWM`` (peak).

    ``VmHWM`` rather than ``getrusage().ru_maxrss``: Linux carries ``ru_maxrss`` over ``exec`` from the parent,
    so a child of a large process (pytest with torch loaded) would report its parent's peak.
    """
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise LookupError(field)


def measure_listing(
    count: int, db_path: str, chunk_size: int = 32, trace: bool = False, retain: bool = False
) -> dict[str, Any]:
    """List a fabricated bucket of ``count`` keys into a new scan through :func:`worker.scans.list_into_scan` —
    the real paginator, the real registration in SQLite at ``db_path`` — with a dispatch that only counts.

    Returns keys, chunks, pages, seconds, the peak resident memory above what the process held before the listing
    (``rss_growth_kib``: ``VmHWM`` minus the RSS just before; it counts C allocations too — SQLite, botocore)
    and, with ``trace``, tracemalloc's peak of Python allocations during the listing (about 4x slower).
    ``retain`` makes the dispatch keep every chunk — the O(n) mistake the measurement must be able to see.
    Meant to run in a fresh process per measurement (``python -m tests.fake_listing COUNT DB``): ``VmHWM`` is a
    high-water mark for the process's whole life.
    """
    os.environ.setdefault("AWS_ACCESS_KEY_ID", "fabricated")
    os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "fabricated")
    from worker.db import make_engine, migrate, session_factory
    from worker.scans import list_into_scan, open_scan
    from worker.storage import ObjectRef, S3Source, s3_client

    engine = make_engine(f"sqlite:///{db_path}")
    migrate(engine)
    sessions = session_factory(engine)
    bucket = FabricatedBucket(count)
    source = S3Source(bucket.name, bucket.prefix, bucket.install(s3_client()))
    scan_id = open_scan(sessions, source, "gamma-listing")
    counted = {"chunks": 0, "keys": 0, "largest": 0}
    retained: list[list[ObjectRef]] = []

    def dispatch(chunk: list[ObjectRef]) -> None:
        counted["chunks"] += 1
        counted["keys"] += len(chunk)
        counted["largest"] = max(counted["largest"], len(chunk))
        if retain:
            retained.append(chunk)

    gc.collect()
    rss_before = _status_kib("VmRSS")
    if trace:
        tracemalloc.start()
    start = time.perf_counter()
    total = list_into_scan(sessions, scan_id, source, chunk_size, dispatch)
    seconds = time.perf_counter() - start
    traced_peak = tracemalloc.get_traced_memory()[1] if trace else None
    if trace:
        tracemalloc.stop()
    max_rss = _status_kib("VmHWM")
    engine.dispose()
    return {
        "count": count,
        "total": total,
        **counted,
        "pages": bucket.pages,
        "page_sizes": sorted(bucket.page_sizes),
        "seconds": round(seconds, 3),
        "rss_before_kib": rss_before,
        "max_rss_kib": max_rss,
        "rss_growth_kib": max_rss - rss_before,
        "traced_peak_bytes": traced_peak,
    }


if __name__ == "__main__":
    arguments = sys.argv[1:]
    options = {"trace": "--trace" in arguments, "retain": "--retain" in arguments}
    print(json.dumps(measure_listing(int(arguments[0]), arguments[1], **options)))
