"""The bad-input corpus through the production path: moto S3 -> gamma-submit -> Redis -> Celery prefork -> Triton.

The same generated files as tests/unit/test_worker_bad_inputs.py, as S3 objects, plus keys only S3 allows
(``../``, ``./``, spaces around slashes). The 80 MB object is refused on its listed size, never downloaded; two
objects are deleted after the listing queued them. Every key must get exactly one row; the worker survives.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from click.testing import CliRunner
from sqlalchemy import select

from deploy.triton_server import TritonServer
from tests.fixtures.bad_inputs import BIG_BYTES, VERDICT, Case, cases, encode
from tests.fixtures.bad_inputs import _photo as photo
from tests.fixtures.services import celery_worker
from worker.cli import submit
from worker.db import Result, Scan, ScanItem, make_engine, session_factory
from worker.outcome import unread_content_id
from worker.storage import s3_client

pytestmark = pytest.mark.integration
PREFIX = "corpus/"


def s3_cases() -> list[Case]:
    jpeg = encode(photo(72, 64, 9), "JPEG")
    return [
        *cases(),
        Case("odd/../escape.jpg", jpeg, VERDICT),
        Case("odd/./dot.jpg", encode(photo(73, 64, 10), "JPEG"), VERDICT),
        Case("odd/ spaced / name .jpg", encode(photo(74, 64, 11), "JPEG"), VERDICT),
        Case("odd/%20percent%2Fencoded.png", encode(photo(75, 64, 12), "PNG"), VERDICT),
    ]


def test_the_corpus_through_celery_and_s3(
    redis_url: str, s3_endpoint: str, triton_server: TritonServer, services_dir: Path, tmp_path: Path
) -> None:
    corpus = s3_cases()
    env = {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
        "GAMMA_DB_URL": f"sqlite:///{tmp_path / 'gamma.db'}",
        "GAMMA_BROKER_URL": redis_url,
        "GAMMA_QUEUE": "corpus.scan",
        "GAMMA_S3_ENDPOINT_URL": s3_endpoint,
        "GAMMA_MASKS_URL": "s3://corpus-masks/gamma",
        "GAMMA_TRITON_URL": triton_server.grpc_url,
        "GAMMA_MODEL": "gamma-test",
        "GAMMA_CHUNK_SIZE": "8",
        "GAMMA_PREPROCESS_WORKERS": "1",
    }
    with pytest.MonkeyPatch.context() as patch:
        for name, value in env.items():
            patch.setenv(name, value)
        s3 = s3_client(s3_endpoint)
        s3.create_bucket(Bucket="corpus")
        s3.create_bucket(Bucket="corpus-masks")
        for case in corpus:
            body = bytes(case.sparse_size) if case.sparse_size else case.data
            s3.put_object(Bucket="corpus", Key=PREFIX + case.key, Body=body)
        submitted = CliRunner().invoke(submit, ["s3://corpus/" + PREFIX])  # no worker yet: chunks wait in Redis
        assert submitted.exit_code == 0, submitted.output
        scan_id = int(submitted.stdout.strip())
        for case in corpus:
            if case.delete_before_fetch:
                s3.delete_object(Bucket="corpus", Key=PREFIX + case.key)
        engine = make_engine(env["GAMMA_DB_URL"])
        with celery_worker(env, services_dir, concurrency=2, queue="corpus.scan") as worker:
            deadline = time.monotonic() + 180
            while time.monotonic() < deadline:
                with session_factory(engine)() as session:
                    scan = session.get(Scan, scan_id)
                    if scan is not None and scan.status == "done":
                        break
                time.sleep(0.5)
            assert worker.poll() is None  # no worker died
        with session_factory(engine)() as session:
            scan = session.get(Scan, scan_id)
            rows = session.execute(
                select(ScanItem.key, Result)
                .join(Result, Result.id == ScanItem.result_id, isouter=True)
                .where(ScanItem.scan_id == scan_id)
            ).all()
        engine.dispose()
    assert scan is not None and scan.status == "done", (scan.status if scan else None, scan.processed if scan else 0)
    by_key = {key.removeprefix(PREFIX): row for key, row in rows}
    assert len(rows) == len(by_key) == len(corpus)
    for case in corpus:
        row = by_key[case.key]
        assert row is not None, case.key
        if case.expected == VERDICT:
            assert row.verdict != "error", (case.key, row.error_reason, row.error_detail)
        else:
            assert (row.verdict, row.error_reason) == ("error", case.expected), (case.key, row.error_detail)
    huge = by_key["bad/huge-80MB.jpg"]
    assert huge.sha256 == unread_content_id(f"s3://corpus/{PREFIX}bad/huge-80MB.jpg", "too-many-bytes")
    assert BIG_BYTES > 50 * 2**20
