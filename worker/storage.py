"""Where image bytes come from and where mask files go: S3 (any endpoint) or a local folder, behind one interface.

A source is named by a URI: ``s3://bucket/prefix`` or ``file:///abs/folder``; :func:`parse_source` also accepts
``bucket/prefix`` and plain folder paths, which is what people type. Listing is streamed (the boto3
``list_objects_v2`` paginator; ``os.scandir`` for folders) so a bucket of millions of keys never sits in memory.

Errors are sorted here, once, into two kinds the pipeline treats differently:
- :class:`ObjectUnreadable` (missing, access denied): about one object; it gets an error result, nothing retries.
- :class:`StorageUnavailable` (throttling, 5xx, connection trouble): about the service; the whole task retries.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import unquote, urlparse

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError
from botocore.exceptions import ConnectionError as BotoConnectionError

LIST_PAGE_SIZE = 1000

# S3 error codes that say "try again later" rather than "this request is wrong".
_TRANSIENT_CODES = {
    "SlowDown",
    "Throttling",
    "ThrottlingException",
    "RequestLimitExceeded",
    "RequestTimeout",
    "RequestTimeTooSkewed",
    "InternalError",
    "ServiceUnavailable",
    "503",
    "500",
}
_MISSING_CODES = {"NoSuchKey", "404", "NotFound"}
_DENIED_CODES = {"AccessDenied", "403", "InvalidObjectState"}


class StorageUnavailable(Exception):
    """The storage service failed in a way that may pass (throttled, 5xx, unreachable): retry the task."""


class ObjectUnreadable(Exception):
    """One object cannot be read (``reason``: ``missing`` or ``access-denied``); no retry will change that."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


class ObjectTooLarge(ObjectUnreadable):
    """The object is larger than the preprocessing byte limit; it is not downloaded."""

    def __init__(self, detail: str) -> None:
        super().__init__("too-many-bytes", detail)


@dataclass(frozen=True)
class ObjectRef:
    """One listed object. ``etag``/``size`` are as listed; the bytes fetched later are what gets hashed."""

    key: str
    etag: str = ""
    size: int = -1


class Source(Protocol):
    """A bucket prefix or a folder: list its objects, read one."""

    uri: str
    bucket: str

    def list(self) -> Iterator[ObjectRef]: ...

    def get(self, ref: ObjectRef, max_bytes: int) -> bytes: ...

    def object_uri(self, key: str) -> str: ...


def s3_client(endpoint_url: str = "", region: str = "us-east-1") -> Any:
    """A thread-safe S3 client; path-style addressing so any endpoint (moto, MinIO, Ceph) works.

    botocore's own standard retry mode absorbs short throttling bursts before the task-level retry has to.
    """
    config = Config(
        retries={"max_attempts": 4, "mode": "standard"},
        max_pool_connections=32,
        s3={"addressing_style": "path"},
        connect_timeout=5,
        read_timeout=30,
    )
    return boto3.session.Session().client("s3", endpoint_url=endpoint_url or None, region_name=region, config=config)


def _classify(error: Exception, what: str) -> Exception:
    """Map a botocore error to ObjectUnreadable or StorageUnavailable; unknown client errors stay as they are."""
    if isinstance(error, ClientError):
        code = str(error.response.get("Error", {}).get("Code", ""))
        status = str(error.response.get("ResponseMetadata", {}).get("HTTPStatusCode", ""))
        if code in _MISSING_CODES or status == "404":
            return ObjectUnreadable("missing", f"{what} does not exist")
        if code in _DENIED_CODES or status == "403":
            return ObjectUnreadable("access-denied", f"{what}: {code}")
        if code in _TRANSIENT_CODES or status.startswith("5"):
            return StorageUnavailable(f"{what}: {code or status}")
        return error
    if isinstance(error, BotoConnectionError | BotoCoreError):
        return StorageUnavailable(f"{what}: {error}")
    return error


class S3Source:
    """Objects under ``s3://bucket/prefix``."""

    def __init__(self, bucket: str, prefix: str, client: Any) -> None:
        self.bucket = bucket
        self.prefix = prefix
        self.client = client
        self.uri = f"s3://{bucket}/{prefix}"

    def list(self) -> Iterator[ObjectRef]:
        paginator = self.client.get_paginator("list_objects_v2")
        pages = paginator.paginate(
            Bucket=self.bucket, Prefix=self.prefix, PaginationConfig={"PageSize": LIST_PAGE_SIZE}
        )
        try:
            for page in pages:
                for item in page.get("Contents", []):
                    if not item["Key"].endswith("/"):  # "folder" placeholder objects
                        yield ObjectRef(item["Key"], item.get("ETag", "").strip('"'), int(item.get("Size", -1)))
        except (ClientError, BotoCoreError) as error:
            raise _classify(error, self.uri) from error

    def object_uri(self, key: str) -> str:
        return f"s3://{self.bucket}/{key}"

    def get(self, ref: ObjectRef, max_bytes: int) -> bytes:
        what = self.object_uri(ref.key)
        if max_bytes and ref.size > max_bytes:
            raise ObjectTooLarge(f"{what}: listed size {ref.size} > {max_bytes}")
        try:
            response = self.client.get_object(Bucket=self.bucket, Key=ref.key)
            length = int(response.get("ContentLength", -1))
            if max_bytes and length > max_bytes:  # replaced by a larger object since the listing
                response["Body"].close()
                raise ObjectTooLarge(f"{what}: size {length} > {max_bytes}")
            with response["Body"] as body:
                return body.read()
        except (ClientError, BotoCoreError) as error:
            raise _classify(error, what) from error

    def put(self, key: str, data: bytes, content_type: str) -> str:
        try:
            self.client.put_object(Bucket=self.bucket, Key=key, Body=data, ContentType=content_type)
        except (ClientError, BotoCoreError) as error:
            raise _classify(error, self.object_uri(key)) from error
        return self.object_uri(key)


class LocalSource:
    """Files under a folder; keys are POSIX paths relative to it, listed recursively in directory order.

    The walk streams: one ``os.scandir`` open at a time, a file is yielded as its entry is read, and only the
    paths of subfolders still to visit are held. Keys are therefore *not* sorted (the order is the
    filesystem's, stable for an unchanged folder on one filesystem but not across filesystems): sorting would
    hold every entry of a directory in memory, a million ``DirEntry`` objects for a flat folder of a million
    files. Nothing downstream relies on the order: scan items, results and summaries are keyed by key and
    content, never by position. (S3 listings do come sorted, by UTF-8 key bytes.)
    """

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root).resolve()
        self.bucket = str(self.root)
        self.uri = self.root.as_uri()

    def list(self) -> Iterator[ObjectRef]:
        if not self.root.is_dir():
            raise ObjectUnreadable("missing", f"{self.root} is not a folder")
        root = str(self.root)
        folders = [root]  # subfolders still to visit (depth first); each is listed once, streamed
        while folders:
            folder = folders.pop()
            subfolders = []
            with os.scandir(folder) as entries:
                for entry in entries:
                    if entry.is_dir(follow_symlinks=False):
                        subfolders.append(entry.path)
                    elif entry.is_file():
                        key = os.path.relpath(entry.path, root).replace(os.sep, "/")
                        try:
                            stat = entry.stat()
                        except FileNotFoundError:  # deleted since the directory was read: its fetch says so
                            yield ObjectRef(key)
                            continue
                        yield ObjectRef(key, f"{stat.st_mtime_ns:x}-{stat.st_size:x}", stat.st_size)
            folders.extend(reversed(subfolders))

    def _path(self, key: str) -> Path:
        path = (self.root / key).resolve()
        if not path.is_relative_to(self.root):
            raise ObjectUnreadable("access-denied", f"{key!r} leaves {self.root}")
        return path

    def object_uri(self, key: str) -> str:
        return (self.root / key).as_uri()

    def get(self, ref: ObjectRef, max_bytes: int) -> bytes:
        path = self._path(ref.key)
        try:
            size = path.stat().st_size
            if max_bytes and size > max_bytes:
                raise ObjectTooLarge(f"{path}: size {size} > {max_bytes}")
            return path.read_bytes()
        except FileNotFoundError as error:
            raise ObjectUnreadable("missing", f"{path} does not exist") from error
        except PermissionError as error:
            raise ObjectUnreadable("access-denied", str(error)) from error

    def put(self, key: str, data: bytes, content_type: str) -> str:
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        tmp.write_bytes(data)
        tmp.replace(path)  # atomic: a reader never sees half a PNG, two writers never interleave
        return path.as_uri()


def parse_source(target: str, endpoint_url: str = "", region: str = "us-east-1") -> S3Source | LocalSource:
    """``s3://bucket/prefix``, ``file:///folder``, an existing folder path, or ``bucket/prefix`` (S3)."""
    if target.startswith("s3://"):
        parsed = urlparse(target)
        if not parsed.netloc:
            raise ValueError(f"{target!r}: no bucket")
        return S3Source(parsed.netloc, parsed.path.lstrip("/"), s3_client(endpoint_url, region))
    if target.startswith("file://"):
        return LocalSource(unquote(urlparse(target).path))
    if Path(target).is_dir() or target.startswith((".", "/", "~")):
        return LocalSource(Path(target).expanduser())
    bucket, _, prefix = target.partition("/")
    if not bucket:
        raise ValueError(f"{target!r}: expected BUCKET/PREFIX, s3://BUCKET/PREFIX or a folder")
    return S3Source(bucket, prefix, s3_client(endpoint_url, region))


def presign_client(endpoint_url: str = "", region: str = "us-east-1") -> Any:
    """An S3 client for :func:`presign_url`: SigV4 (boto3 still signs presigned URLs with the deprecated SigV2
    unless told; regions opened since 2014 accept only V4), path-style for any endpoint. Signing is local: no
    request is made, only the credentials of the usual chain are needed."""
    config = Config(signature_version="s3v4", s3={"addressing_style": "path"})
    return boto3.session.Session().client("s3", endpoint_url=endpoint_url or None, region_name=region, config=config)


def presign_url(url: str, expires_s: int, client: Any) -> str:
    """A plain HTTP(S) GET URL for the object at ``s3://bucket/key``, valid ``expires_s`` seconds, on the
    endpoint ``client`` was made for (:func:`presign_client`). Other URLs (``file://``, already ``https://``)
    come back unchanged. The key is everything after the bucket, as :meth:`S3Source.object_uri` wrote it."""
    if not url.startswith("s3://"):
        return url
    bucket, _, key = url.removeprefix("s3://").partition("/")
    if not bucket or not key:
        raise ValueError(f"{url!r}: expected s3://BUCKET/KEY")
    return str(
        client.generate_presigned_url("get_object", Params={"Bucket": bucket, "Key": key}, ExpiresIn=int(expires_s))
    )
