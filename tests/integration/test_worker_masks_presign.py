"""Masks in a private bucket are read through presigned URLs: ``gamma-scan --json`` with ``GAMMA_MASKS_PRESIGN``.

The masks go to the moto S3 server; the JSON lines carry presigned GET URLs on that endpoint, which plain
``urllib`` (no credentials, no boto3) fetches; the bytes are the PNGs the pipeline wrote. The database keeps the
``s3://`` URL (a stored row never holds a URL that expires).
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from pathlib import Path
from urllib.parse import parse_qs, urlparse

import pytest
from click.testing import CliRunner
from PIL import Image
from sqlalchemy import select

from gamma.weights import Checkpoint
from worker.cli import scan
from worker.db import Result, make_engine, session_factory
from worker.masks import decode_png
from worker.storage import s3_client

pytestmark = pytest.mark.integration
BUCKET = "presign-masks"


def test_gamma_scan_json_prints_presigned_mask_urls_that_plain_http_can_fetch(
    s3_endpoint: str, tiny_checkpoint: Checkpoint, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name, value in {
        "AWS_ACCESS_KEY_ID": "presign-test-key",
        "AWS_SECRET_ACCESS_KEY": "presign-test-secret",
        "AWS_DEFAULT_REGION": "us-east-1",
        "GAMMA_S3_ENDPOINT_URL": s3_endpoint,
        "GAMMA_MASKS_PRESIGN": "900",
    }.items():
        monkeypatch.setenv(name, value)
    s3 = s3_client(s3_endpoint)
    s3.create_bucket(Bucket=BUCKET)
    folder = tmp_path / "images"
    folder.mkdir()
    for index in range(3):
        Image.new("RGB", (70 + index, 64), (50 * index, 90, 200 - 40 * index)).save(folder / f"{index}.png")
    (folder / "broken.jpg").write_bytes(b"not a jpeg")
    db_url = f"sqlite:///{tmp_path / 'gamma.db'}"
    assert tiny_checkpoint.path is not None
    result = CliRunner().invoke(
        scan,
        [str(folder), "--json", "--db", db_url, "--model", str(tiny_checkpoint.path),
         "--masks", f"s3://{BUCKET}/scans"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    lines = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    assert sorted(line["key"] for line in lines) == ["0.png", "1.png", "2.png", "broken.jpg"]
    judged = [line for line in lines if line["verdict"] != "error"]
    assert len(judged) == 3

    fetched = 0
    for line in judged:
        for name in ("ai_mask_url", "manipulation_mask_url"):
            url = line[name]
            parsed = urlparse(url)
            assert f"{parsed.scheme}://{parsed.netloc}" == s3_endpoint  # the configured endpoint, path-style
            assert parsed.path.startswith(f"/{BUCKET}/scans/gamma-test/v1/five/")  # the default coverage
            query = parse_qs(parsed.query)
            assert query["X-Amz-Algorithm"] == ["AWS4-HMAC-SHA256"] and query["X-Amz-Expires"] == ["900"]
            assert "presign-test-secret" not in url
            with urllib.request.urlopen(url, timeout=10) as response:  # plain HTTP: no boto3, no credentials
                assert response.status == 200
                body = response.read()
            stored = s3.get_object(Bucket=BUCKET, Key=parsed.path.removeprefix(f"/{BUCKET}/"))["Body"].read()
            assert body == stored and body.startswith(b"\x89PNG")
            width = 70 + int(line["key"].removesuffix(".png"))
            assert decode_png(body).shape == (16, (width + 3) // 4)  # the whole 64 px high image at stride 4
            with pytest.raises(urllib.error.HTTPError) as unsigned:  # the bucket is private: unsigned is refused
                urllib.request.urlopen(f"{s3_endpoint}{parsed.path}", timeout=10)
            assert unsigned.value.code == 403
            fetched += 1
    assert fetched == 6

    engine = make_engine(db_url)
    with session_factory(engine)() as session:
        rows = session.scalars(select(Result)).all()
    stored_urls = {url for row in rows for url in (row.ai_mask_url, row.manipulation_mask_url) if url}
    engine.dispose()
    assert len(stored_urls) == 6 and all(url.startswith(f"s3://{BUCKET}/scans/") for url in stored_urls)


def test_presigning_is_off_by_default_and_leaves_other_urls_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    from worker.masks import MaskLinks
    from worker.settings import Settings

    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "k")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "s")
    assert MaskLinks.from_settings(Settings())("s3://b/k.png") == "s3://b/k.png"
    links = MaskLinks(60, "http://127.0.0.1:9")
    assert links("file:///tmp/m/ai.png") == "file:///tmp/m/ai.png" and links(None) is None
    signed = urlparse(links("s3://b/odd key?/ai.png") or "")
    assert signed.path == "/b/odd%20key%3F/ai.png"  # everything after the bucket is the key, quoted once
    with pytest.raises(ValueError):
        Settings(masks_presign=8 * 24 * 3600)  # SigV4 URLs live at most 7 days
