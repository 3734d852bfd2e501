"""A whole scan through real servers: moto S3 -> gamma-submit -> Redis -> Celery workers -> Triton -> PostgreSQL.

Inference runs on the real Triton server of tests/fixtures/triton.py (the tiny checkpoint exported with the
python backend); the workers hold a ``TritonBackend``. The reference verdicts come from the in-process PyTorch
``Detector`` on the same bytes. The first scan is submitted before any worker runs, and one object is deleted
while its task waits in Redis: that is the "deleted between list and fetch" case, for real.
"""

from __future__ import annotations

import io
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image
from sqlalchemy import Engine, create_engine, func, select, text

from deploy.triton_server import TritonServer
from gamma.inference import Detector, TorchBackend
from gamma.weights import Checkpoint
from tests.fixtures.services import celery_worker
from worker.cli import submit
from worker.db import Image as ImageRow
from worker.db import Result, Scan, ScanItem, make_engine, session_factory
from worker.masks import decode_png
from worker.storage import s3_client

pytestmark = pytest.mark.integration

GOOD = 24
BAD = {"bad/truncated.jpg": "truncated", "bad/zero.jpg": "empty", "bad/readme.jpg": "undecodable"}
DELETED = "photos/deleted-after-listing.jpg"
PREFIX = "uploads/2024/"


def _image(index: int) -> tuple[str, bytes]:
    rng = np.random.default_rng(index)
    height, width = 48 + 7 * index, 64 + 5 * (index % 5)
    base = rng.integers(0, 255, (1, 1, 3)) + np.linspace(0, 60, width)[None, :, None]
    pixels = np.clip(base + rng.normal(0, 12, (height, width, 3)), 0, 255).astype(np.uint8)
    fmt, suffix = [("JPEG", "jpg"), ("PNG", "png"), ("WEBP", "webp")][index % 3]
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format=fmt)
    return f"photos/{index:02d}.{suffix}", buffer.getvalue()


def make_objects() -> dict[str, bytes]:
    objects = dict(_image(i) for i in range(GOOD))
    objects[DELETED] = _image(99)[1]
    whole = _image(21)[1]  # a JPEG: its header survives the cut, its scan data does not
    objects["bad/truncated.jpg"] = whole[: len(whole) // 2]
    objects["bad/zero.jpg"] = b""
    objects["bad/readme.jpg"] = b"# not a photo\njust text with a .jpg name\n"
    return objects


@dataclass
class Stack:
    env: dict[str, str]
    db: Engine
    s3: Any
    objects: dict[str, bytes]
    workdir: Path


@pytest.fixture(scope="module")
def stack(
    redis_url: str, postgres_url: str, s3_endpoint: str, triton_server: TritonServer, services_dir: Path
) -> Iterator[Stack]:
    admin = create_engine(postgres_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(text("CREATE DATABASE e2e_scan"))
    admin.dispose()
    db_url = postgres_url.rsplit("/", 1)[0] + "/e2e_scan"
    env = {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
        "GAMMA_DB_URL": db_url,
        "GAMMA_BROKER_URL": redis_url,
        "GAMMA_QUEUE": "e2e.scan",
        "GAMMA_S3_ENDPOINT_URL": s3_endpoint,
        "GAMMA_MASKS_URL": "s3://masks/gamma",
        "GAMMA_TRITON_URL": triton_server.grpc_url,
        "GAMMA_MODEL": "gamma-test",
        "GAMMA_CHUNK_SIZE": "6",
        "GAMMA_PREPROCESS_WORKERS": "1",
    }
    with pytest.MonkeyPatch.context() as patch:
        for name, value in env.items():
            patch.setenv(name, value)
        s3 = s3_client(s3_endpoint)
        s3.create_bucket(Bucket="uploads")
        s3.create_bucket(Bucket="masks")
        objects = make_objects()
        for key, data in objects.items():
            s3.put_object(Bucket="uploads", Key=PREFIX + key, Body=data)
        engine = make_engine(db_url)
        yield Stack(env, engine, s3, objects, services_dir)
        engine.dispose()


def _wait_done(engine: Engine, scan_id: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with session_factory(engine)() as session:
            scan = session.get(Scan, scan_id)
            if scan is not None and scan.status == "done":
                return
        time.sleep(0.3)
    raise AssertionError(f"scan {scan_id} not done after {timeout} s")


def _rows(engine: Engine, scan_id: int) -> dict[str, Result]:
    with session_factory(engine)() as session:
        rows = session.execute(
            select(ScanItem.key, Result)
            .join(Result, Result.id == ScanItem.result_id)
            .where(ScanItem.scan_id == scan_id)
        ).all()
    return {key.removeprefix(PREFIX): result for key, result in rows}


def _count(engine: Engine, table: type) -> int:
    with session_factory(engine)() as session:
        return int(session.scalar(select(func.count()).select_from(table)) or 0)


def test_submit_scan_resubmit(stack: Stack, tiny_checkpoint: Checkpoint) -> None:
    runner = CliRunner()
    first = runner.invoke(submit, [f"uploads/{PREFIX}"])  # no worker yet: the chunks wait in Redis
    assert first.exit_code == 0, first.output
    scan_id = int(first.stdout.strip())
    stack.s3.delete_object(Bucket="uploads", Key=PREFIX + DELETED)

    with celery_worker(stack.env, stack.workdir, concurrency=2, queue="e2e.scan"):
        _wait_done(stack.db, scan_id, timeout=120)
        results_after_first = _count(stack.db, Result)
        second = runner.invoke(submit, [f"s3://uploads/{PREFIX}", "--wait", "--timeout", "120"])
    assert second.exit_code == 0, second.output
    second_id = int(second.stdout.strip())
    assert "processed / listed" in second.stderr and "images/s" in second.stderr

    rows = _rows(stack.db, scan_id)
    assert sorted(rows) == sorted(stack.objects)  # every object exactly one result (rows are keyed by key)
    with session_factory(stack.db)() as session:
        assert session.scalar(select(func.count()).where(ScanItem.scan_id == scan_id)) == len(stack.objects)
        scans = {s.id: s for s in session.scalars(select(Scan))}
    reasons = {key: r.error_reason for key, r in rows.items() if r.verdict == "error"}
    assert reasons == {**BAD, DELETED: "missing"}
    assert scans[scan_id].errors == len(BAD) + 1 and scans[scan_id].model_version == 1

    judged = {key: r for key, r in rows.items() if r.verdict != "error"}
    assert len(judged) == GOOD
    for result in judged.values():
        for url in (result.ai_mask_url, result.manipulation_mask_url):
            assert url is not None
            parsed = urlparse(url)
            body = stack.s3.get_object(Bucket=parsed.netloc, Key=parsed.path.lstrip("/"))["Body"].read()
            assert decode_png(body).shape == (128, 128)

    c = tiny_checkpoint
    reference = Detector(TorchBackend(c.model, c.config, c.name, c.version)).classify_bytes(
        [(key, stack.objects[key]) for key in sorted(judged)]
    )
    for expected in reference:
        assert expected.judgement is not None
        actual = judged[expected.source]
        assert actual.verdict == expected.judgement.verdict.value, expected.source
        assert actual.probability == pytest.approx(expected.judgement.probability, abs=1e-4)

    # The second scan (the deleted object is no longer listed) upserted: no new results or images.
    listed_again = len(stack.objects) - 1
    assert (scans[second_id].status, scans[second_id].processed) == ("done", listed_again)
    assert _count(stack.db, Result) == results_after_first == len(stack.objects)
    assert _count(stack.db, ImageRow) == listed_again  # the deleted object was never read
    again = {key: result.id for key, result in _rows(stack.db, second_id).items()}
    assert again == {key: result.id for key, result in rows.items() if key != DELETED}
