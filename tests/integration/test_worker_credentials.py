"""Credentials never appear in logs, rows or reports (issue 6), through the real servers and the real commands.

Sentinels: the AWS secret key (moto accepts any), the PostgreSQL password (the test cluster trusts 127.0.0.1, so
any password in the URL connects), and the Redis password (a redis-server with ``requirepass``, started here).
The path: moto S3 -> ``gamma-submit`` -> Redis -> a Celery prefork worker (in-process tiny model) -> PostgreSQL;
then an incremental ``gamma-submit --wait``, ``gamma-scan --json`` with presigned mask URLs, ``gamma-report
--html``, and two failing submits (a wrong broker password; a database that refuses connections), whose errors
are the kind of text that ends up in logs and rows. Every command's stdout/stderr, the worker's log, every
column of every table and the page are searched for each sentinel.
"""

from __future__ import annotations

import io
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import redis
from PIL import Image
from sqlalchemy import Engine, MetaData, create_engine, select, text

from gamma.weights import Checkpoint
from tests.fixtures.services import HOST, celery_worker, free_port, stop_process, wait_until
from worker.db import Scan, make_engine, session_factory
from worker.storage import s3_client

pytestmark = pytest.mark.integration

AWS_SECRET = "SENTINEL-aws-secret-3c9f1e77"
DB_PASSWORD = "SENTINEL-db-pw-81d2a6"
REDIS_PASSWORD = "SENTINEL-redis-pw-5be04c"
WRONG_REDIS_PASSWORD = "SENTINEL-wrong-redis-pw-0a7d"
SENTINELS = (AWS_SECRET, DB_PASSWORD, REDIS_PASSWORD, WRONG_REDIS_PASSWORD)
BUCKET, MASKS, PREFIX = "creds-uploads", "creds-masks", "daily/"
VENV_BIN = Path(sys.executable).parent


@pytest.fixture
def redis_with_password(tmp_path: Path) -> Iterator[int]:
    """A redis-server that requires ``REDIS_PASSWORD``; yields its port."""
    port, log = free_port(), tmp_path / "redis-auth.log"
    with log.open("ab") as out:
        process = subprocess.Popen(
            ["redis-server", "--bind", HOST, "--port", str(port), "--dir", str(tmp_path), "--save", "",
             "--appendonly", "no", "--requirepass", REDIS_PASSWORD],
            stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
        )  # fmt: skip

    def ping() -> bool:
        try:
            return bool(redis.Redis(host=HOST, port=port, password=REDIS_PASSWORD, socket_connect_timeout=0.5).ping())
        except redis.RedisError:
            return False

    try:
        wait_until(ping, 10, process, log)
        yield port
    finally:
        stop_process(process)


def _photo(index: int) -> bytes:
    rng = np.random.default_rng(index)
    pixels = np.clip(rng.normal(120, 40, (64 + index, 72, 3)), 0, 255).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def _run(command: str, *args: str, env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(VENV_BIN / command), *args], env=env, cwd=cwd, capture_output=True, text=True, timeout=300, check=False
    )


def _every_value(engine: Engine) -> list[str]:
    """Every non-null value of every column of every table (alembic's included), as text."""
    metadata = MetaData()
    metadata.reflect(engine)
    values = []
    with engine.connect() as connection:
        for table in metadata.sorted_tables:
            for row in connection.execute(select(table)):
                values.extend(str(value) for value in row if value is not None)
    return values


def _wait_done(engine: Engine, scan_id: int, timeout: float) -> Scan:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with session_factory(engine)() as session:
            scan = session.get(Scan, scan_id)
            if scan is not None and scan.status == "done":
                return scan
        time.sleep(0.3)
    raise AssertionError(f"scan {scan_id} not done after {timeout} s")


def test_no_credential_in_logs_rows_outputs_or_the_report(
    postgres_url: str,
    s3_endpoint: str,
    redis_with_password: int,
    tiny_checkpoint: Checkpoint,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    admin = create_engine(postgres_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(text("CREATE DATABASE creds_scan"))
    admin.dispose()
    user, _, rest = postgres_url.partition("://")[2].partition("@")
    db_url = f"postgresql://{user}:{DB_PASSWORD}@{rest.rsplit('/', 1)[0]}/creds_scan"
    broker_url = f"redis://:{REDIS_PASSWORD}@{HOST}:{redis_with_password}/0"
    assert tiny_checkpoint.path is not None
    env = {
        "AWS_ACCESS_KEY_ID": "creds-test-key-id",
        "AWS_SECRET_ACCESS_KEY": AWS_SECRET,
        "AWS_DEFAULT_REGION": "us-east-1",
        "GAMMA_DB_URL": db_url,
        "GAMMA_BROKER_URL": broker_url,
        "GAMMA_QUEUE": "creds.scan",
        "GAMMA_S3_ENDPOINT_URL": s3_endpoint,
        "GAMMA_MASKS_URL": f"s3://{MASKS}/gamma",
        "GAMMA_MODEL": str(tiny_checkpoint.path),
        "GAMMA_TORCH_THREADS": "1",
        "GAMMA_PREPROCESS_WORKERS": "1",
        "GAMMA_CHUNK_SIZE": "3",
    }
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION"):
        monkeypatch.setenv(name, env[name])  # this process's boto3 (putting the objects) too
    full_env = {**os.environ, **env}
    full_env["PYTHONPATH"] = os.pathsep.join(p for p in (str(Path.cwd()), full_env.get("PYTHONPATH")) if p)
    s3 = s3_client(s3_endpoint)
    for bucket in (BUCKET, MASKS):
        s3.create_bucket(Bucket=bucket)
    keys = [f"{PREFIX}{i}.png" for i in range(4)]
    for index, key in enumerate(keys):
        s3.put_object(Bucket=BUCKET, Key=key, Body=_photo(index))
    s3.put_object(Bucket=BUCKET, Key=f"{PREFIX}bad.jpg", Body=b"text, not a jpeg")
    s3.put_object(Bucket=BUCKET, Key=f"{PREFIX}gone.png", Body=_photo(9))
    outputs: dict[str, subprocess.CompletedProcess[str]] = {}

    outputs["submit"] = _run("gamma-submit", f"s3://{BUCKET}/{PREFIX}", env=full_env, cwd=tmp_path)
    assert outputs["submit"].returncode == 0, outputs["submit"].stderr
    scan_id = int(outputs["submit"].stdout.strip())
    s3.delete_object(Bucket=BUCKET, Key=f"{PREFIX}gone.png")  # deleted while its chunk waits: "missing"
    engine = make_engine(db_url)
    worker_dir = tmp_path / "worker"
    worker_dir.mkdir()
    with celery_worker(env, worker_dir, concurrency=1, queue="creds.scan"):
        scan = _wait_done(engine, scan_id, timeout=180)
        outputs["submit --wait"] = _run(
            "gamma-submit", f"s3://{BUCKET}/{PREFIX}", "--wait", "--timeout", "120", env=full_env, cwd=tmp_path
        )
    assert (scan.processed, scan.errors) == (6, 2)
    assert outputs["submit --wait"].returncode == 0 and "processed / listed" in outputs["submit --wait"].stderr

    outputs["scan --json"] = _run(
        "gamma-scan", f"s3://{BUCKET}/{PREFIX}", "--json", "--full", "--masks", f"s3://{MASKS}/scan",
        "--presign", "600", env=full_env, cwd=tmp_path,
    )  # fmt: skip
    assert outputs["scan --json"].returncode == 0, outputs["scan --json"].stderr
    assert "X-Amz-Signature=" in outputs["scan --json"].stdout  # signed with the sentinel secret, not showing it
    report = tmp_path / "report.html"
    outputs["report"] = _run("gamma-report", str(scan_id), "--html", str(report), env=full_env, cwd=tmp_path)
    assert outputs["report"].returncode == 0, outputs["report"].stderr

    wrong_broker = {**full_env, "GAMMA_BROKER_URL": f"redis://:{WRONG_REDIS_PASSWORD}@{HOST}:{redis_with_password}/0"}
    outputs["submit, wrong broker password"] = _run(  # --full: every chunk is sent, so the broker is reached
        "gamma-submit", f"s3://{BUCKET}/{PREFIX}", "--full", env=wrong_broker, cwd=tmp_path
    )
    assert outputs["submit, wrong broker password"].returncode != 0
    assert "scan failed" in outputs["submit, wrong broker password"].stderr
    refused_db = {**full_env, "GAMMA_DB_URL": f"postgresql://app:{DB_PASSWORD}@{HOST}:{free_port()}/creds_scan"}
    outputs["submit, database refuses"] = _run("gamma-submit", f"s3://{BUCKET}/{PREFIX}", env=refused_db, cwd=tmp_path)
    assert outputs["submit, database refuses"].returncode != 0
    assert "Connection refused" in outputs["submit, database refuses"].stderr

    (worker_log,) = worker_dir.glob("celery-*.log")
    log_text = worker_log.read_text(errors="replace")
    assert "succeeded" in log_text and f"redis://:**@{HOST}:{redis_with_password}" in log_text  # Celery masks it
    values = _every_value(engine)
    engine.dispose()
    with session_factory(make_engine(db_url))() as session:
        failed = session.scalars(select(Scan).where(Scan.status == "failed")).all()
    assert len(failed) == 1 and "invalid username-password" in (failed[0].detail or "")  # the broker's error
    assert any("does not exist" in value for value in values)  # the error details of the missing object
    page = report.read_text()
    assert f"<h1>GAMMA scan {scan_id}</h1>" in page and "flagged image(s) shown" in page

    haystacks = {
        "worker log": log_text,
        "database": "\n".join(values),
        "report": page,
        **{
            f"{name} {stream}": getattr(done, stream)
            for name, done in outputs.items()
            for stream in ("stdout", "stderr")
        },
    }
    leaks = [(where, secret) for where, hay in haystacks.items() for secret in SENTINELS if secret in hay]
    assert leaks == []
