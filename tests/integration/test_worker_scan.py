"""A whole scan through real servers: moto S3 -> gamma-submit -> Redis -> Celery workers -> Triton -> PostgreSQL.

Inference runs on the real Triton server of tests/fixtures/triton.py (the tiny checkpoint exported with the
python backend); the workers hold a ``TritonBackend``. The reference verdicts come from the in-process PyTorch
``Detector`` on the same bytes. The first scan is submitted before any worker runs, and one object is deleted
while its task waits in Redis: that is the "deleted between list and fetch" case, for real.

A few hundred images: :func:`test_a_few_hundred_images_through_redis_and_celery` sends 300 good images and 4 bad
ones through the same path with the workers holding a micro GAMMA (the full architecture, 8-16 channels, ~70 ms
per 512x512 image on one core) in-process. The tiny gamma-b0 costs ~1.1 s per image on these 2 shared cores, so
300 of them through Triton plus the reference would take ~11 minutes; the Triton path keeps its 24 + 4 above.
"""

from __future__ import annotations

import io
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image
from sqlalchemy import Engine, create_engine, func, select, text

from deploy.triton_server import TritonServer
from gamma.inference import Detector, TorchBackend
from gamma.model import GammaModel
from gamma.verdict import VerdictThresholds
from gamma.weights import Checkpoint, load_checkpoint, save_checkpoint
from tests.fixtures.models import MICRO_CONFIG
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
    height, width = 64 + 7 * index, 64 + 5 * (index % 5)
    base = rng.integers(0, 255, (1, 1, 3)) + np.linspace(0, 60, width)[None, :, None]
    pixels = np.clip(base + rng.normal(0, 12, (height, width, 3)), 0, 255).astype(np.uint8)
    fmt, suffix = [("JPEG", "jpg"), ("PNG", "png"), ("WEBP", "webp")][index % 3]
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format=fmt)
    return f"photos/{index:02d}.{suffix}", buffer.getvalue()


def _mask_shape(data: bytes) -> tuple[int, int]:
    """(rows, columns) of an image's full-image masks: ceil(H/4) x ceil(W/4)."""
    with Image.open(io.BytesIO(data)) as image:
        width, height = image.size
    return (height + 3) // 4, (width + 3) // 4


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


def _rows(engine: Engine, scan_id: int, prefix: str = PREFIX) -> dict[str, Result]:
    with session_factory(engine)() as session:
        rows = session.execute(
            select(ScanItem.key, Result)
            .join(Result, Result.id == ScanItem.result_id)
            .where(ScanItem.scan_id == scan_id)
        ).all()
    return {key.removeprefix(prefix): result for key, result in rows}


def _count(engine: Engine, table: type) -> int:
    with session_factory(engine)() as session:
        return int(session.scalar(select(func.count()).select_from(table)) or 0)


def test_submit_scan_resubmit(stack: Stack, tiny_checkpoint: Checkpoint) -> None:
    runner = CliRunner()
    first = runner.invoke(submit, [f"s3://uploads/{PREFIX}"])  # no worker yet: the chunks wait in Redis
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
    for key, result in judged.items():
        for url in (result.ai_mask_url, result.manipulation_mask_url):
            assert url is not None
            parsed = urlparse(url)
            body = stack.s3.get_object(Bucket=parsed.netloc, Key=parsed.path.lstrip("/"))["Body"].read()
            assert decode_png(body).shape == _mask_shape(stack.objects[key])

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


MANY = 300
MANY_PREFIX = "many/"
MANY_BAD = {"bad/truncated.jpg": "truncated", "bad/zero.jpg": "empty", "bad/readme.jpg": "undecodable",
            "bad/gone.png": "missing"}  # fmt: skip
MICRO = MICRO_CONFIG


def _small_image(index: int) -> tuple[str, bytes]:
    """A small photo-like image (64-119 x 64-127 px: one tile at its own resolution), JPEG, PNG or WebP."""
    rng = np.random.default_rng(1000 + index)
    height, width = 64 + (index * 7) % 56, 64 + (index * 11) % 64
    base = rng.integers(0, 255, (1, 1, 3)) + np.linspace(0, 80, width)[None, :, None]
    pixels = np.clip(base + rng.normal(0, 10 + index % 30, (height, width, 3)), 0, 255).astype(np.uint8)
    fmt, suffix = [("JPEG", "jpg"), ("PNG", "png"), ("WEBP", "webp")][index % 3]
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format=fmt)
    return f"photos/{index:03d}.{suffix}", buffer.getvalue()


@pytest.fixture(scope="module")
def micro_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Checkpoint:
    """A random micro GAMMA whose thresholds are set from a pilot of 24 images so that the verdicts spread over
    real / ai-generated / manipulated / needs-review (random weights put every probability near 0.47)."""
    torch.manual_seed(0)
    model = GammaModel(MICRO).eval()
    pilot = Detector(TorchBackend(model, MICRO, "gamma-micro", 1)).classify_bytes([_small_image(i) for i in range(24)])
    probabilities = np.array([r.judgement.probability for r in pilot if r.judgement is not None])
    low, median, high = np.percentile(probabilities, [25, 50, 75])
    thresholds = VerdictThresholds(
        ai_probability=float(median), review_band=float(high - low) / 4, mask_pixel=0.5, manipulated_area=0.5
    )
    tuned = GammaModel(MICRO.replace(thresholds=thresholds)).eval()
    tuned.load_state_dict(model.state_dict())
    directory = tmp_path_factory.mktemp("models") / "gamma-micro"
    save_checkpoint(tuned, directory, {"name": "gamma-micro", "version": 1})
    return load_checkpoint(directory)


def test_a_few_hundred_images_through_redis_and_celery(
    redis_url: str,
    postgres_url: str,
    s3_endpoint: str,
    micro_checkpoint: Checkpoint,
    services_dir: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """300 good + 4 bad objects: moto S3 -> gamma-submit -> Redis -> 2 prefork children -> PostgreSQL."""
    admin = create_engine(postgres_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(text("CREATE DATABASE e2e_many"))
    admin.dispose()
    db_url = postgres_url.rsplit("/", 1)[0] + "/e2e_many"
    assert micro_checkpoint.path is not None
    env = {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
        "GAMMA_DB_URL": db_url,
        "GAMMA_BROKER_URL": redis_url,
        "GAMMA_QUEUE": "many.scan",
        "GAMMA_S3_ENDPOINT_URL": s3_endpoint,
        "GAMMA_MASKS_URL": "s3://many-masks/gamma",
        "GAMMA_TRITON_URL": "",  # the workers hold the micro model in-process
        "GAMMA_MODEL": str(micro_checkpoint.path),
        "GAMMA_TORCH_THREADS": "1",
        "GAMMA_CHUNK_SIZE": "16",
        "GAMMA_PREPROCESS_WORKERS": "1",
    }
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    s3 = s3_client(s3_endpoint)
    s3.create_bucket(Bucket="many")
    s3.create_bucket(Bucket="many-masks")
    good = dict(_small_image(i) for i in range(MANY))
    whole = good["photos/000.jpg"]
    objects = {
        **good,
        "bad/truncated.jpg": whole[: len(whole) // 2],
        "bad/zero.jpg": b"",
        "bad/readme.jpg": b"# not a photo\n",
        "bad/gone.png": _small_image(MANY + 1)[1],
    }
    clock = [time.monotonic()]
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda item: s3.put_object(Bucket="many", Key=MANY_PREFIX + item[0], Body=item[1]),
                      objects.items()))  # fmt: skip

    started = time.monotonic()
    clock.append(started)
    submitted = CliRunner().invoke(submit, [f"s3://many/{MANY_PREFIX}"])  # no worker yet: chunks wait in Redis
    assert submitted.exit_code == 0, submitted.output
    scan_id = int(submitted.stdout.strip())
    s3.delete_object(Bucket="many", Key=MANY_PREFIX + "bad/gone.png")
    engine = make_engine(db_url)
    with celery_worker(env, services_dir, concurrency=2, queue="many.scan"):
        _wait_done(engine, scan_id, timeout=420)
    scan_seconds = time.monotonic() - started

    with session_factory(engine)() as session:
        items = session.execute(select(ScanItem.key, ScanItem.result_id).where(ScanItem.scan_id == scan_id)).all()
        scan = session.get(Scan, scan_id)
    assert scan is not None and (scan.total, scan.processed) == (len(objects), len(objects))
    keys = [key.removeprefix(MANY_PREFIX) for key, _ in items]
    assert len(keys) == len(set(keys)) == len(objects) and set(keys) == set(objects)  # exactly one row each
    assert all(result_id is not None for _, result_id in items)
    assert _count(engine, Result) == len(objects)  # one result per distinct content, none twice
    assert _count(engine, ImageRow) == len(objects) - 1  # the deleted object was never read
    rows = _rows(engine, scan_id, MANY_PREFIX)
    assert {key: r.error_reason for key, r in rows.items() if r.verdict == "error"} == MANY_BAD

    clock.append(time.monotonic())
    c = micro_checkpoint
    reference = {
        r.source: r
        for r in Detector(TorchBackend(c.model, c.config, c.name, c.version)).classify_bytes(sorted(good.items()))
    }
    verdicts = {key: rows[key].verdict for key in good}
    assert verdicts == {key: r.judgement.verdict.value for key, r in reference.items() if r.judgement is not None}
    for key in good:
        assert rows[key].probability == pytest.approx(reference[key].judgement.probability, abs=1e-4), key
    assert len(set(verdicts.values())) >= 3, set(verdicts.values())  # the thresholds spread them

    def mask_difference(key: str) -> int:
        worst = 0
        for url, expected in ((rows[key].ai_mask_url, reference[key].ai_mask),
                              (rows[key].manipulation_mask_url, reference[key].manipulation_mask)):  # fmt: skip
            assert url is not None and expected is not None
            parsed = urlparse(url)
            body = s3.get_object(Bucket=parsed.netloc, Key=parsed.path.lstrip("/"))["Body"].read()
            stored = decode_png(body).astype(int)
            assert stored.shape == expected.shape == _mask_shape(good[key])  # the whole image at stride 4
            worst = max(worst, int(np.abs(stored - expected.astype(int)).max()))
        return worst

    clock.append(time.monotonic())
    with ThreadPoolExecutor(8) as pool:
        differences = list(pool.map(mask_difference, sorted(good)))
    clock.append(time.monotonic())
    assert max(differences) <= 1  # the PNG at each URL is the reference mask (+-1 grey level of float noise)
    spans = ", ".join(
        f"{name} {b - a:.1f} s" for name, a, b in zip(("upload", "scan", "reference", "masks"), clock, clock[1:])
    )
    print(f"{len(objects)} objects, scan {len(objects) / scan_seconds:.1f} images/s; {spans}")
