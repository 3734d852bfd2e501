"""Sources list and read S3 prefixes and folders; per-object problems and service problems are told apart."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from botocore.exceptions import ClientError, EndpointConnectionError
from botocore.stub import Stubber
from moto import mock_aws

from worker import storage
from worker.masks import MaskStore, decode_png, mask_key
from worker.storage import (
    LocalSource,
    ObjectRef,
    ObjectUnreadable,
    S3Source,
    StorageUnavailable,
    open_target,
    parse_source,
    s3_client,
)


@pytest.fixture
def s3() -> Iterator[Any]:
    with mock_aws():
        client = s3_client()
        client.create_bucket(Bucket="photos")
        yield client


def _calls(client: Any, operation: str) -> list[str]:
    seen: list[str] = []
    client.meta.events.register(f"before-call.s3.{operation}", lambda **_: seen.append(operation))
    return seen


def test_local_source_lists_files_recursively(tmp_path: Path) -> None:
    (tmp_path / "b" / "deeper").mkdir(parents=True)
    (tmp_path / "b" / "2.png").write_bytes(b"22")
    (tmp_path / "b" / "deeper" / "4.gif").write_bytes(b"4444")
    (tmp_path / "a.jpg").write_bytes(b"1")
    (tmp_path / "c.txt").write_bytes(b"333")
    (tmp_path / "link").symlink_to(tmp_path / "b", target_is_directory=True)  # not followed: no key twice
    refs = list(LocalSource(tmp_path).list())
    # Directory order, not sorted (the walk streams); every file exactly once, the link to a folder recorded once.
    files = sorted((r.key, r.size) for r in refs if not r.reason)
    assert files == [("a.jpg", 1), ("b/2.png", 2), ("b/deeper/4.gif", 4), ("c.txt", 3)]
    assert [(r.key, r.reason) for r in refs if r.reason] == [("link/", "linked-folder")]
    by_key = {r.key: r for r in refs}
    assert LocalSource(tmp_path).get(by_key["b/2.png"], max_bytes=0) == b"22"
    assert all(r.etag.endswith(f"-{r.size:x}") for r in refs)  # mtime-size


def test_local_source_streams_a_directory_instead_of_reading_it_whole(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The first key comes out after one directory entry is read, not after the whole folder (or a sort)."""
    for index in range(500):
        (tmp_path / f"{index}.jpg").write_bytes(b"x")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "z.jpg").write_bytes(b"z")
    read = 0
    real_scandir = os.scandir

    class CountingScandir:
        def __init__(self, path: str) -> None:
            self.entries = real_scandir(path)

        def __enter__(self) -> Iterator[os.DirEntry[str]]:
            return self

        def __exit__(self, *exc: object) -> None:
            self.entries.close()

        def __iter__(self) -> Iterator[os.DirEntry[str]]:
            return self

        def __next__(self) -> os.DirEntry[str]:
            nonlocal read
            entry = next(self.entries)
            read += 1
            return entry

    monkeypatch.setattr(storage.os, "scandir", CountingScandir)
    listing = LocalSource(tmp_path).list()
    next(listing)
    assert read <= 2  # at most the subfolder's entry before the first file's
    assert len(list(listing)) == 500  # the rest: 501 files in all
    assert read == 502  # 501 files + 1 folder entry, each read once


def test_a_file_deleted_while_its_folder_is_listed_is_listed_without_etag(tmp_path: Path) -> None:
    """The directory read saw it, its stat did not: it is listed (like an S3 key deleted after the listing) with
    no ETag, so nothing is reused for it, and its fetch records ``missing``."""
    for name in ("1.jpg", "2.jpg", "3.jpg"):
        (tmp_path / name).write_bytes(b"x")
    listing = LocalSource(tmp_path).list()
    first = next(listing)  # the directory's entries are read (one getdents call for a small folder)
    for name in {"1.jpg", "2.jpg", "3.jpg"} - {first.key}:
        (tmp_path / name).unlink()
    rest = list(listing)
    assert first.etag and first.size == 1
    assert sorted(r.key for r in rest) == sorted({"1.jpg", "2.jpg", "3.jpg"} - {first.key})
    assert all((r.etag, r.size) == ("", -1) for r in rest)
    with pytest.raises(ObjectUnreadable) as missing:
        LocalSource(tmp_path).get(rest[0], max_bytes=0)
    assert missing.value.reason == "missing"


def test_local_source_errors_are_per_object(tmp_path: Path) -> None:
    (tmp_path / "big.jpg").write_bytes(b"x" * 100)
    source = LocalSource(tmp_path)
    with pytest.raises(ObjectUnreadable) as missing:
        source.get(ObjectRef("gone.jpg"), max_bytes=0)
    with pytest.raises(ObjectUnreadable) as large:
        source.get(ObjectRef("big.jpg"), max_bytes=10)
    with pytest.raises(ObjectUnreadable) as escape:
        source.get(ObjectRef("../outside.jpg"), max_bytes=0)
    assert (missing.value.reason, large.value.reason, escape.value.reason) == (
        "missing",
        "too-many-bytes",
        "outside-root",
    )


def test_s3_listing_goes_through_the_paginator_page_by_page(s3: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    for index in range(7):
        s3.put_object(Bucket="photos", Key=f"up/{index}.jpg", Body=b"x" * index)
    s3.put_object(Bucket="photos", Key="up/folder/", Body=b"")
    s3.put_object(Bucket="photos", Key="other/9.jpg", Body=b"x")
    monkeypatch.setattr(storage, "LIST_PAGE_SIZE", 3)
    calls = _calls(s3, "ListObjectsV2")
    refs = list(S3Source("photos", "up/", s3).list())
    assert [r.key for r in refs] == [f"up/{i}.jpg" for i in range(7)]
    assert [r.size for r in refs] == list(range(7))
    assert all(len(r.etag) == 32 for r in refs)  # quotes stripped
    assert len(calls) == 3  # 8 keys in pages of 3


def test_s3_missing_and_oversized_objects_are_unreadable_without_download(s3: Any) -> None:
    s3.put_object(Bucket="photos", Key="big.jpg", Body=b"x" * 100)
    source = S3Source("photos", "", s3)
    gets = _calls(s3, "GetObject")
    with pytest.raises(ObjectUnreadable) as large:
        source.get(ObjectRef("big.jpg", size=100), max_bytes=10)
    assert large.value.reason == "too-many-bytes" and gets == []
    with pytest.raises(ObjectUnreadable) as missing:
        source.get(ObjectRef("deleted.jpg", size=5), max_bytes=10)
    assert missing.value.reason == "missing"
    with pytest.raises(ObjectUnreadable) as grown:  # listed small, replaced by a large object before the fetch
        source.get(ObjectRef("big.jpg", size=5), max_bytes=10)
    assert grown.value.reason == "too-many-bytes"


def test_s3_throttling_is_a_storage_outage_not_a_bad_object() -> None:
    client = s3_client()
    with Stubber(client) as stub:
        stub.add_client_error("get_object", service_error_code="SlowDown", http_status_code=503)
        with pytest.raises(StorageUnavailable):
            S3Source("photos", "", client).get(ObjectRef("a.jpg"), max_bytes=0)


@pytest.mark.parametrize(
    ("error", "expected"),
    [
        (ClientError({"Error": {"Code": "NoSuchKey"}}, "GetObject"), "missing"),
        (ClientError({"Error": {"Code": "AccessDenied"}}, "GetObject"), "access-denied"),
        (ClientError({"Error": {"Code": "InternalError"}}, "GetObject"), StorageUnavailable),
        (ClientError({"Error": {"Code": "x"}, "ResponseMetadata": {"HTTPStatusCode": 502}}, "Get"), StorageUnavailable),
        (EndpointConnectionError(endpoint_url="http://127.0.0.1:1"), StorageUnavailable),
    ],
)
def test_botocore_errors_are_classified(error: Exception, expected: str | type) -> None:
    classified = storage._classify(error, "s3://photos/a.jpg")
    if isinstance(expected, str):
        assert isinstance(classified, ObjectUnreadable) and classified.reason == expected
    else:
        assert isinstance(classified, expected)


def test_parse_source_accepts_what_people_type(tmp_path: Path) -> None:
    s3 = parse_source("s3://photos/2024/06")
    assert isinstance(s3, S3Source) and (s3.bucket, s3.prefix, s3.uri) == ("photos", "2024/06", "s3://photos/2024/06")
    bare = parse_source("photos/2024")  # buckets need s3://: without it, a path (a relative folder)
    assert isinstance(bare, LocalSource) and bare.root == (Path.cwd() / "photos/2024").resolve()
    folder = parse_source(str(tmp_path))
    assert isinstance(folder, LocalSource) and folder.root == tmp_path.resolve()
    assert isinstance(parse_source(tmp_path.as_uri()), LocalSource)
    for bad in ("s3://", "s3:///prefix", "http://photos/x", ""):
        with pytest.raises(ValueError):
            parse_source(bad)


def test_open_target_checks_that_the_source_is_there(tmp_path: Path, s3: Any) -> None:
    (tmp_path / "x.jpg").write_bytes(b"x")
    assert isinstance(open_target(str(tmp_path)), LocalSource)
    with pytest.raises(ValueError, match="no such folder"):
        open_target(str(tmp_path / "nope_relative"))
    with pytest.raises(ValueError, match="is a file, not a folder"):
        open_target(str(tmp_path / "x.jpg"))
    assert isinstance(open_target("s3://photos/up/"), S3Source)
    with pytest.raises(ObjectUnreadable, match="no such bucket"):
        open_target("s3://no-such-bucket/x")


def test_masks_are_native_resolution_pngs_under_content_addressed_names(tmp_path: Path, s3: Any) -> None:
    mask = np.arange(150 * 113, dtype=np.uint32).reshape(150, 113).astype(np.uint8)  # a 450x600 image's, at stride 4
    sha = "ab" * 32
    url = MaskStore.from_url(str(tmp_path / "masks")).put(sha, "gamma-test", 3, "ai", mask, "five")
    assert url == (tmp_path / "masks" / mask_key(sha, "gamma-test", 3, "ai", "five")).as_uri()
    stored_file = tmp_path / "masks" / mask_key(sha, "gamma-test", 3, "ai", "five")
    assert np.array_equal(decode_png(stored_file.read_bytes()), mask)
    other = MaskStore.from_url(str(tmp_path / "masks")).put(sha, "gamma-test", 3, "ai", mask, "full")
    assert other != url  # another coverage mode's masks never overwrite these

    url = MaskStore.from_url("s3://photos/masks/").put(sha, "gamma-test", 3, "manipulation", mask, "full")
    key = f"masks/gamma-test/v3/full/ab/{sha}/manipulation.png"
    assert url == f"s3://photos/{key}"
    stored = s3.get_object(Bucket="photos", Key=key)
    assert stored["ContentType"] == "image/png"
    assert np.array_equal(decode_png(stored["Body"].read()), mask)
