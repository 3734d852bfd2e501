"""One S3 client per process per (endpoint, region, credentials), shared by every source, and none across a fork."""

from __future__ import annotations

import io
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from botocore.response import StreamingBody
from botocore.stub import Stubber
from moto import mock_aws

from worker import storage
from worker.runtime import Runtime
from worker.settings import Settings
from worker.storage import ObjectRef, ObjectUnreadable, S3Source, parse_source, s3_client


@pytest.fixture(autouse=True)
def fresh_clients() -> Iterator[None]:
    storage._forget_clients()
    yield
    storage._forget_clients()


def test_one_client_per_endpoint_region_and_profile() -> None:
    client = s3_client("http://127.0.0.1:9000", "eu-west-1")
    assert s3_client("http://127.0.0.1:9000", "eu-west-1") is client
    assert s3_client("http://127.0.0.1:9001", "eu-west-1") is not client
    assert s3_client("http://127.0.0.1:9000", "us-east-1") is not client
    assert client.meta.config.max_pool_connections == storage.S3_POOL_CONNECTIONS


def test_every_prefix_and_the_mask_store_share_the_client(tmp_path: Path) -> None:
    first, second = parse_source("s3://photos/2024/06"), parse_source("s3://photos/2024/07")
    assert isinstance(first, S3Source) and isinstance(second, S3Source)
    assert first.client is second.client is parse_source("s3://other-bucket").client
    settings = Settings(db_url=f"sqlite:///{tmp_path / 'gamma.db'}", masks_url="s3://masks/gamma")
    runtime = Runtime.create(settings, backend=object())  # type: ignore[arg-type]  (never used: no chunk runs)
    sources = [runtime.source(f"s3://photos/{month}") for month in ("01", "02", "03")]
    assert len({id(source.client) for source in sources}) == 1
    assert sources[0].client is first.client
    assert runtime.masks.sink.client is first.client  # type: ignore[attr-defined]
    runtime.close()


def test_a_profile_or_other_credentials_get_their_own_client(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = tmp_path / "config"
    config.write_text("[profile scanner]\nregion = us-east-1\n")
    credentials = tmp_path / "credentials"
    credentials.write_text("[scanner]\naws_access_key_id = AKIDSCANNER\naws_secret_access_key = s\n")
    monkeypatch.setenv("AWS_CONFIG_FILE", str(config))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(credentials))
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIDDEFAULT")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "s")
    default = s3_client()
    named = s3_client(profile="scanner")
    assert named is not default and s3_client(profile="scanner") is named
    monkeypatch.setenv("AWS_PROFILE", "scanner")
    assert s3_client() is named  # AWS_PROFILE is the profile when none is given
    monkeypatch.delenv("AWS_PROFILE")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIDROTATED")
    assert s3_client() is not default  # other keys in the environment: a client that uses them


def test_a_forked_child_builds_its_own_client() -> None:
    parent = s3_client()
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: answer through the pipe, then leave without running any test machinery
        try:
            child = s3_client()
            answer = b"fresh" if child is not parent and s3_client() is child else b"inherited"
        except BaseException:
            answer = b"error"
        os.write(write, answer)
        os._exit(0)
    os.close(write)
    with os.fdopen(read, "rb") as pipe:
        answer = pipe.read()
    os.waitpid(pid, 0)
    assert answer == b"fresh"
    assert s3_client() is parent  # the parent keeps its own


def test_sources_read_through_the_shared_client_with_moto(monkeypatch: pytest.MonkeyPatch) -> None:
    with mock_aws():
        client = s3_client()
        client.create_bucket(Bucket="photos")
        client.put_object(Bucket="photos", Key="a/1.jpg", Body=b"one")
        client.put_object(Bucket="photos", Key="b/2.jpg", Body=b"two")
        a, b = parse_source("s3://photos/a/"), parse_source("s3://photos/b/")
        assert a.client is b.client is client
        assert [a.get(ref, 10) for ref in a.list()] == [b"one"]
        assert [b.get(ref, 10) for ref in b.list()] == [b"two"]


class _CountingBytes(io.BytesIO):
    delivered = 0

    def read(self, size: int | None = -1) -> bytes:
        data = super().read(size)
        self.delivered += len(data)
        return data


def test_an_s3_read_is_capped_even_without_a_content_length() -> None:
    client = s3_client()
    body = _CountingBytes(b"x" * 5000)
    with Stubber(client) as stub:
        stub.add_response("get_object", {"Body": StreamingBody(body, 5000)}, {"Bucket": "photos", "Key": "big.jpg"})
        with pytest.raises(ObjectUnreadable) as large:
            S3Source("photos", "", client).get(ObjectRef("big.jpg"), max_bytes=100)
    assert large.value.reason == "too-many-bytes"
    assert body.delivered <= 101  # never more than the limit (+1 to know it is over) was read


def test_a_local_read_is_capped_when_the_file_grew_after_its_stat(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "big.jpg").write_bytes(b"x" * 5000)
    real_fstat = os.fstat

    def small_fstat(fd: int) -> Any:  # the file as it was when stat'ed: small
        result = real_fstat(fd)
        return os.stat_result((result.st_mode, *result[1:6], 10, *result[7:]))

    monkeypatch.setattr(storage.os, "fstat", small_fstat)
    with pytest.raises(ObjectUnreadable) as large:
        storage.LocalSource(tmp_path).get(ObjectRef("big.jpg"), max_bytes=100)
    assert large.value.reason == "too-many-bytes"
