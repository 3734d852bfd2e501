"""Why an entry got ``verdict=error``: every reason code a scan can record, in one enum.

Each code says whether it describes the *bytes* (``reusable``: the same bytes under the same model version and
coverage mode get the same answer, so a rescan may reuse the result) or the *run* or the *place* (a service that
was down, a time limit, a worker that died, a link or a file that could not be read at that moment): those are
never reused, the next scan tries again.

The preprocessing codes are :data:`gamma.preprocess.REJECTION_REASONS` (the library cannot import the worker);
a unit test keeps the two in step. Verdict strings come from :class:`gamma.verdict.Verdict`.
"""

from __future__ import annotations

from enum import StrEnum


class Reason(StrEnum):
    # about the bytes (gamma.preprocess.ImageRejected): reusable
    EMPTY = "empty"
    TOO_MANY_BYTES = "too-many-bytes"
    TOO_MANY_PIXELS = "too-many-pixels"
    TOO_SMALL = "too-small"  # a side under gamma.tiling.MIN_SIDE (64 px), zero-sized included: never tiled
    EXTREME_ASPECT_RATIO = "extreme-aspect-ratio"
    TRUNCATED = "truncated"
    UNDECODABLE = "undecodable"
    UNSUPPORTED_FORMAT = "unsupported-format"
    # about the place the entry was listed at (storage): the bytes were never read
    MISSING = "missing"  # gone since the listing, or never there
    ACCESS_DENIED = "access-denied"  # no permission (an object, a file, a folder that cannot be listed)
    OUTSIDE_ROOT = "outside-root"  # a key or a link that leads out of the scanned folder: refused, never read
    NOT_A_FILE = "not-a-file"  # a FIFO, socket or device: never opened
    DANGLING_LINK = "dangling-link"  # a symbolic link whose target does not exist
    SYMLINK_LOOP = "symlink-loop"  # a link that resolves to itself (ELOOP)
    LINKED_FOLDER = "linked-folder"  # a link to a folder inside the scanned one: its files are listed there
    FOLDER_LOOP = "folder-loop"  # a folder seen before under another path (a bind mount of an ancestor)
    NON_UTF8_NAME = "non-utf8-name"  # a file name that is not UTF-8: no key can name it
    IO_ERROR = "io-error"  # any other operating-system error while listing or reading the entry
    # about the run (worker.tasks): never reused
    RETRIES_EXHAUSTED = "retries-exhausted"
    TIME_LIMIT = "time-limit"
    BACKEND_ERROR = "backend-error"
    INTERNAL_ERROR = "internal-error"
    WORKER_LOST = "worker-lost"

    @property
    def reusable(self) -> bool:
        """Whether a result with this reason describes the bytes (and may be reused for the same bytes)."""
        return self in _ABOUT_THE_BYTES


_ABOUT_THE_BYTES = frozenset(
    {
        Reason.EMPTY,
        Reason.TOO_MANY_BYTES,
        Reason.TOO_MANY_PIXELS,
        Reason.TOO_SMALL,
        Reason.EXTREME_ASPECT_RATIO,
        Reason.TRUNCATED,
        Reason.UNDECODABLE,
        Reason.UNSUPPORTED_FORMAT,
    }
)

# Error results never reused by a later scan (the SQL filter of worker.records).
NOT_REUSABLE_REASONS: tuple[str, ...] = tuple(reason.value for reason in Reason if not reason.reusable)
