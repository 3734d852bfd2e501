"""Where image bytes come from and where mask files go: S3 (any endpoint) or a local folder, behind one interface.

A source is named by a URI: ``s3://bucket/prefix`` or ``file:///abs/folder``; :func:`parse_source` also accepts
``bucket/prefix`` and plain folder paths, which is what people type. Listing is streamed (the boto3
``list_objects_v2`` paginator; ``os.scandir`` for folders) so a bucket of millions of keys never sits in memory.

Errors are sorted here, once, into two kinds the pipeline treats differently:
- :class:`ObjectUnreadable` (missing, access denied): about one object; it gets an error result, nothing retries.
- :class:`StorageUnavailable` (throttling, 5xx, connection trouble): about the service; the whole task retries.
"""

from __future__ import annotations

import errno
import os
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from stat import S_ISBLK, S_ISCHR, S_ISDIR, S_ISFIFO, S_ISLNK, S_ISREG, S_ISSOCK
from typing import Any, Protocol
from urllib.parse import unquote, urlparse

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError
from botocore.exceptions import ConnectionError as BotoConnectionError

from worker.reasons import Reason

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
    """One object cannot be read (``reason``: a :class:`~worker.reasons.Reason` code such as ``missing``,
    ``access-denied``, ``not-a-file``); no retry will change that."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


class ObjectTooLarge(ObjectUnreadable):
    """The object is larger than the preprocessing byte limit; it is not downloaded."""

    def __init__(self, detail: str) -> None:
        super().__init__(Reason.TOO_MANY_BYTES, detail)


@dataclass(frozen=True)
class ObjectRef:
    """One listed object. ``etag``/``size`` are as listed; the bytes fetched later are what gets hashed.

    ``reason`` (a :class:`~worker.reasons.Reason` code) and ``detail`` are set when the listing already knows the
    entry cannot be read (a FIFO, a dangling link, a folder that cannot be listed...): it is recorded with that
    error and never fetched, so every entry of a listing ends with a verdict or a reason.
    """

    key: str
    etag: str = ""
    size: int = -1
    reason: str = ""
    detail: str = ""


class Source(Protocol):
    """A bucket prefix or a folder: list its objects, read one."""

    uri: str
    bucket: str

    def list(self) -> Iterator[ObjectRef]: ...

    def get(self, ref: ObjectRef, max_bytes: int) -> bytes: ...

    def object_uri(self, key: str) -> str: ...


S3_POOL_CONNECTIONS = 32

_clients: dict[tuple[str, str, str, str], Any] = {}
_clients_lock = threading.Lock()


def _forget_clients() -> None:
    """After ``fork()``, in the child: boto3 clients (their sessions, connection pools and sockets) must not be
    shared with the parent, so the child builds its own on first use."""
    global _clients_lock
    _clients.clear()
    _clients_lock = threading.Lock()  # the parent may have held it while forking


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_clients)


def _credentials_key(profile: str | None) -> tuple[str, str]:
    """Which credentials a new client would take: the profile, and the access key id set in the environment
    (which the default chain prefers; a process whose environment changes keys gets a client for the new ones)."""
    return (os.environ.get("AWS_PROFILE", "") if profile is None else profile), os.environ.get("AWS_ACCESS_KEY_ID", "")


def s3_client(endpoint_url: str = "", region: str = "us-east-1", profile: str | None = None) -> Any:
    """The process's thread-safe S3 client for (endpoint, region, credentials profile); path-style addressing so
    any endpoint (moto, MinIO, Ceph) works. ``profile`` ``None``: ``AWS_PROFILE`` (empty: the default chain).

    One client per key per process, shared by every source, mask store and report (clients are thread-safe):
    one pool of :data:`S3_POOL_CONNECTIONS` connections, not one per scanned prefix. Forgotten in a forked child.
    botocore's own standard retry mode absorbs short throttling bursts before the task-level retry has to.
    """
    key = (endpoint_url or "", region or "", *_credentials_key(profile))
    with _clients_lock:
        client = _clients.get(key)
        if client is None:
            config = Config(
                retries={"max_attempts": 4, "mode": "standard"},
                max_pool_connections=S3_POOL_CONNECTIONS,
                s3={"addressing_style": "path"},
                connect_timeout=5,
                read_timeout=30,
            )
            session = boto3.session.Session(profile_name=key[2] or None)
            client = session.client("s3", endpoint_url=endpoint_url or None, region_name=region, config=config)
            _clients[key] = client
    return client


def _classify(error: Exception, what: str) -> Exception:
    """Map a botocore error to ObjectUnreadable or StorageUnavailable; unknown client errors stay as they are."""
    if isinstance(error, ClientError):
        code = str(error.response.get("Error", {}).get("Code", ""))
        status = str(error.response.get("ResponseMetadata", {}).get("HTTPStatusCode", ""))
        if code in _MISSING_CODES or status == "404":
            return ObjectUnreadable(Reason.MISSING, f"{what} does not exist")
        if code in _DENIED_CODES or status == "403":
            return ObjectUnreadable(Reason.ACCESS_DENIED, f"{what}: {code}")
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

    def check(self) -> None:
        """One ``ListObjectsV2`` of at most one key: the bucket exists and these credentials may list it."""
        try:
            self.client.list_objects_v2(Bucket=self.bucket, Prefix=self.prefix, MaxKeys=1)
        except (ClientError, BotoCoreError) as error:
            code = str(error.response.get("Error", {}).get("Code", "")) if isinstance(error, ClientError) else ""
            if code == "NoSuchBucket":
                raise ObjectUnreadable(Reason.MISSING, f"{self.uri}: no such bucket") from error
            classified = _classify(error, self.uri)
            if classified is error:
                raise ObjectUnreadable(Reason.IO_ERROR, f"{self.uri}: {code or error}") from error
            raise classified from error

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
                data = body.read(max_bytes + 1) if max_bytes else body.read()
        except (ClientError, BotoCoreError) as error:
            raise _classify(error, what) from error
        if max_bytes and len(data) > max_bytes:  # no (or a wrong) Content-Length: never more than the limit read
            raise ObjectTooLarge(f"{what}: more than {max_bytes} bytes")
        return data

    def put(self, key: str, data: bytes, content_type: str) -> str:
        try:
            self.client.put_object(Bucket=self.bucket, Key=key, Body=data, ContentType=content_type)
        except (ClientError, BotoCoreError) as error:
            raise _classify(error, self.object_uri(key)) from error
        return self.object_uri(key)


class LocalSource:
    """Files under a folder; keys are POSIX paths relative to it, listed recursively in directory order.

    The walk streams: one ``os.scandir`` open at a time, a file is yielded as its entry is read, and only the
    paths of subfolders still to visit (and the identities of the folders walked, for loop protection) are held.
    Keys are therefore *not* sorted (the order is the filesystem's, stable for an unchanged folder on one
    filesystem but not across filesystems): sorting would hold every entry of a directory in memory, a million
    ``DirEntry`` objects for a flat folder of a million files. Nothing downstream relies on the order: scan
    items, results and summaries are keyed by key and content, never by position. (S3 listings do come sorted,
    by UTF-8 key bytes.)

    **Every entry is accounted for**: each directory entry that is not a folder walked into yields exactly one
    :class:`ObjectRef`; what cannot be read carries a ``reason`` and is recorded with it, never silently left
    out, and no single entry can stop the listing:

    - regular files: listed (ETag ``mtime-size``);
    - symbolic links are resolved once, at listing: a link to a regular file inside the folder is listed (it is
      read through, the ETag is its target's); a link that leaves the folder is ``outside-root`` (its own
      ``lstat`` metadata, never its target's: nothing outside the folder is read or even stat'ed); a link to a
      folder inside it is ``linked-folder`` (not followed: its files are listed under their real path, once);
      a dangling link is ``dangling-link``, a loop ``symlink-loop``;
    - FIFOs, sockets, devices: ``not-a-file`` (never opened: reading a FIFO would block forever);
    - a name that is not UTF-8: ``non-utf8-name`` (its key shows the bytes as ``\\xNN``), never fetched;
    - a subfolder that cannot be listed (permissions, I/O error): one entry ``access-denied`` / ``io-error``
      with the key ``name/``; a folder already walked under another path (a bind mount of an ancestor):
      ``folder-loop``.
    """

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root).resolve()
        self.bucket = str(self.root)
        self.uri = self.root.as_uri()

    def check(self) -> None:
        """Raise ValueError unless the folder exists (a CLI asks this before it records a scan)."""
        if not self.root.exists():
            raise ValueError(f"{self.root}: no such folder")
        if not self.root.is_dir():
            raise ValueError(f"{self.root} is a file, not a folder (scan the folder that holds it)")

    def _key(self, path: str) -> tuple[str, bool]:
        """(key, whether it is valid UTF-8); an invalid name's bytes are shown as ``\\xNN``."""
        key = os.path.relpath(path, self.bucket).replace(os.sep, "/")
        try:
            key.encode("utf-8")
        except UnicodeEncodeError:
            return os.fsencode(key).decode("utf-8", "backslashreplace"), False
        return key, True

    def list(self) -> Iterator[ObjectRef]:
        if not self.root.is_dir():
            raise ObjectUnreadable(Reason.MISSING, f"{self.root} is not a folder")
        root_stat = self.root.stat()
        walked = {(root_stat.st_dev, root_stat.st_ino)}  # folders walked: a bind-mount loop ends here
        folders = [self.bucket]  # subfolders still to visit (depth first); each is listed once, streamed
        while folders:
            folder = folders.pop()
            subfolders: list[str] = []
            try:
                with os.scandir(folder) as entries:
                    for entry in entries:
                        ref = self._entry(entry, walked, subfolders)
                        if ref is not None:
                            yield ref
            except OSError as error:
                if folder == self.bucket:
                    reason, what = _os_reason(error), _os_error(error)
                    raise ObjectUnreadable(reason, f"{self.root} cannot be listed: {what}") from error
                key, _ = self._key(folder)
                yield ObjectRef(key + "/", reason=_os_reason(error), detail=f"folder cannot be listed: "
                                f"{_os_error(error)}")  # fmt: skip
            folders.extend(reversed(subfolders))

    def _entry(self, entry: os.DirEntry[str], walked: set[tuple[int, int]], subfolders: list[str]) -> ObjectRef | None:
        """The ref of one directory entry (None for a folder queued in ``subfolders``); never raises."""
        key, utf8 = self._key(entry.path)
        try:
            stat = entry.stat(follow_symlinks=False)
        except FileNotFoundError:  # deleted since the directory was read: its fetch says so
            return ObjectRef(key) if utf8 else ObjectRef(key, reason=Reason.MISSING, detail="deleted while listed")
        except OSError as error:
            return ObjectRef(key, reason=_os_reason(error), detail=_os_error(error))
        etag = f"{stat.st_mtime_ns:x}-{stat.st_size:x}"
        if not utf8:
            return ObjectRef(key, etag, stat.st_size, Reason.NON_UTF8_NAME, "the file name is not UTF-8: rename it")
        if S_ISDIR(stat.st_mode):
            if (stat.st_dev, stat.st_ino) in walked:
                return ObjectRef(key + "/", reason=Reason.FOLDER_LOOP, detail="a folder already listed (a mount loop)")
            walked.add((stat.st_dev, stat.st_ino))
            subfolders.append(entry.path)
            return None
        if S_ISREG(stat.st_mode):
            return ObjectRef(key, etag, stat.st_size)
        if not S_ISLNK(stat.st_mode):
            return ObjectRef(key, etag, stat.st_size, Reason.NOT_A_FILE, f"{_kind(stat.st_mode)}, not a regular file")
        return self._link(entry.path, key, etag, stat.st_size)

    def _link(self, path: str, key: str, etag: str, size: int) -> ObjectRef:
        """A symbolic link, resolved once. Only a link to a regular file inside the folder is read."""
        try:
            target = os.path.realpath(path, strict=True)
        except FileNotFoundError:
            pointed = os.fsencode(os.readlink(path)).decode("utf-8", "backslashreplace")
            return ObjectRef(key, etag, size, Reason.DANGLING_LINK, f"link to {pointed!r}, which does not exist")
        except OSError as error:
            return ObjectRef(key, etag, size, _os_reason(error), _os_error(error))
        if not Path(target).is_relative_to(self.root):
            return ObjectRef(key, etag, size, Reason.OUTSIDE_ROOT, "a link that leads out of the scanned folder")
        try:
            stat = os.stat(target)
        except OSError as error:
            return ObjectRef(key, etag, size, _os_reason(error), _os_error(error))
        if S_ISDIR(stat.st_mode):
            real, _ = self._key(target)
            what = f"link to the folder {real or '.'!r} of this scan: its files are listed there"
            return ObjectRef(key + "/", etag, size, Reason.LINKED_FOLDER, what)
        if not S_ISREG(stat.st_mode):
            return ObjectRef(key, etag, size, Reason.NOT_A_FILE, f"link to a {_kind(stat.st_mode)}")
        return ObjectRef(key, f"{stat.st_mtime_ns:x}-{stat.st_size:x}", stat.st_size)

    def _path(self, key: str) -> Path:
        """The real path of ``key`` (links resolved), refused when it leaves the folder; it may not exist."""
        path = Path(os.path.realpath(self.root / key))  # a loop stays a link here: opening it says ELOOP
        if not path.is_relative_to(self.root):
            raise ObjectUnreadable(Reason.OUTSIDE_ROOT, f"{key!r} leaves {self.root}")
        return path

    def object_uri(self, key: str) -> str:
        return (self.root / key).as_uri()

    def get(self, ref: ObjectRef, max_bytes: int) -> bytes:
        """The bytes of a regular file inside the folder; anything else raises :class:`ObjectUnreadable`.

        Opened non-blocking and checked with ``fstat`` on the open descriptor: a FIFO put there since the
        listing is refused instead of blocking the worker forever.
        """
        if ref.reason:
            raise ObjectUnreadable(ref.reason, ref.detail)
        try:
            ref.key.encode("utf-8")
        except UnicodeEncodeError as error:
            raise ObjectUnreadable(Reason.NON_UTF8_NAME, "the key is not UTF-8") from error
        path = self._path(ref.key)
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
        except FileNotFoundError as error:
            raise ObjectUnreadable(Reason.MISSING, f"{path} does not exist") from error
        except OSError as error:
            raise ObjectUnreadable(_os_reason(error), _os_error(error)) from error
        with os.fdopen(fd, "rb") as file:
            stat = os.fstat(fd)
            if not S_ISREG(stat.st_mode):
                raise ObjectUnreadable(Reason.NOT_A_FILE, f"{path}: {_kind(stat.st_mode)}, not a regular file")
            if max_bytes and stat.st_size > max_bytes:
                raise ObjectTooLarge(f"{path}: size {stat.st_size} > {max_bytes}")
            os.set_blocking(fd, True)
            try:
                data = file.read(max_bytes + 1) if max_bytes else file.read()
            except OSError as error:
                raise ObjectUnreadable(_os_reason(error), _os_error(error)) from error
        if max_bytes and len(data) > max_bytes:  # grew since the fstat: never more than the limit read
            raise ObjectTooLarge(f"{path}: more than {max_bytes} bytes (grew while read)")
        return data

    def put(self, key: str, data: bytes, content_type: str) -> str:
        path = (self.root / key).resolve()
        if not path.is_relative_to(self.root):
            raise ObjectUnreadable(Reason.OUTSIDE_ROOT, f"{key!r} leaves {self.root}")
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        tmp.write_bytes(data)
        tmp.replace(path)  # atomic: a reader never sees half a PNG, two writers never interleave
        return path.as_uri()


def _os_reason(error: OSError) -> Reason:
    if isinstance(error, PermissionError):
        return Reason.ACCESS_DENIED
    if isinstance(error, FileNotFoundError):
        return Reason.MISSING
    if error.errno == errno.ELOOP:
        return Reason.SYMLINK_LOOP
    return Reason.IO_ERROR


def _os_error(error: OSError) -> str:
    """``strerror`` (and the errno name), without the path: the key already says where."""
    name = errno.errorcode.get(error.errno or 0, "")
    return f"{error.strerror or type(error).__name__}" + (f" ({name})" if name else "")


def _kind(mode: int) -> str:
    for test, name in ((S_ISFIFO, "a FIFO"), (S_ISSOCK, "a socket"), (S_ISCHR, "a character device"),
                       (S_ISBLK, "a block device"), (S_ISDIR, "a folder")):  # fmt: skip
        if test(mode):
            return name
    return "not a regular file"


def parse_source(target: str, endpoint_url: str = "", region: str = "us-east-1") -> S3Source | LocalSource:
    """``s3://bucket/prefix`` (buckets always need the scheme), ``file:///folder`` or a folder path.

    Only the syntax is checked here (workers parse the URIs of listed scans, whose folder may since have gone):
    :func:`open_target` is what a command calls, which also checks that the source is there.
    """
    if target.startswith("s3://"):
        parsed = urlparse(target)
        if not parsed.netloc:
            raise ValueError(f"{target!r}: no bucket (expected s3://BUCKET/PREFIX)")
        return S3Source(parsed.netloc, parsed.path.lstrip("/"), s3_client(endpoint_url, region))
    if target.startswith("file://"):
        return LocalSource(unquote(urlparse(target).path))
    if "://" in target:
        raise ValueError(f"{target!r}: expected s3://BUCKET/PREFIX or a folder")
    if not target:
        raise ValueError("no target: expected s3://BUCKET/PREFIX or a folder")
    return LocalSource(Path(target).expanduser())


def open_target(target: str, endpoint_url: str = "", region: str = "us-east-1") -> S3Source | LocalSource:
    """:func:`parse_source` plus a check that the source is there: an existing folder, or a bucket that can be
    listed (one ``ListObjectsV2`` of one key). Raises ValueError (a local path that is not a folder, a malformed
    target), :class:`ObjectUnreadable` or :class:`StorageUnavailable` (the bucket), before anything is recorded."""
    source = parse_source(target, endpoint_url, region)
    try:
        source.check()
    except ValueError as error:
        bare = isinstance(source, LocalSource) and not target.startswith(("/", ".", "~", "file://"))
        if bare and not source.root.exists():  # what a bucket without its s3:// looks like
            raise ValueError(f"{error} (a bucket needs s3://, e.g. s3://{target})") from error
        raise
    return source


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
