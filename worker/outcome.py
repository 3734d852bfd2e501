"""One object's outcome in a scan: a verdict with its masks, or an error with a reason.

Shared by the pipeline (which produces it), the records module (which stores it) and the CLIs (which print it),
so the three never disagree on field names.
"""

from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass
from typing import Any

from gamma.tiling import DEFAULT_COVERAGE
from gamma.verdict import Verdict


def unread_content_id(object_uri: str, reason: str) -> str:
    """Identity of an object whose bytes were never read: stable per (location, reason), never a content hash.

    The reason is part of it so that, say, a later ``retries-exhausted`` for a key does not rewrite the
    ``missing`` result an earlier scan of that key points at.
    """
    return hashlib.sha256(f"gamma:unread:{reason}:{object_uri}".encode()).hexdigest()


# Fields a judged outcome has and an error outcome does not (to_dict leaves them out of an error).
JUDGED_ONLY = (
    "probability", "ai_area", "manipulated_area", "ai_mask_url", "manipulation_mask_url", "tiles_seen", "tiles_total",
    "seen_fraction", "top_tile",
)  # fmt: skip


@dataclass
class Outcome:
    """``coverage`` is the mode the object was judged (or failed) under: part of its result's identity, so every
    outcome has one, errors included. ``tiles_seen``/``tiles_total``/``seen_fraction``/``top_tile`` say what the
    model looked at (:meth:`gamma.tiling.TileOutputs.summary`); None on errors."""

    key: str
    sha256: str
    verdict: str
    bytes_read: bool = True
    etag: str = ""
    size: int = -1
    probability: float | None = None
    ai_area: float | None = None
    manipulated_area: float | None = None
    ai_mask_url: str | None = None
    manipulation_mask_url: str | None = None
    coverage: str = DEFAULT_COVERAGE.value
    tiles_seen: int | None = None
    tiles_total: int | None = None
    seen_fraction: float | None = None
    top_tile: list[int] | None = None
    error_reason: str | None = None
    error_detail: str | None = None
    fetch_ms: float | None = None
    preprocess_ms: float | None = None
    infer_ms: float | None = None
    # Set when an earlier result of the same model version was reused (unchanged object, or the same bytes
    # under another key): nothing was inferred and the results row is not written again.
    result_id: int | None = None

    @classmethod
    def reused(cls, key: str, etag: str, size: int, result: Any) -> Outcome:
        """An outcome that points at an existing ``worker.db.Result`` row instead of a new inference."""
        return cls(
            key=key,
            sha256=result.sha256,
            verdict=result.verdict,
            etag=etag,
            size=size,
            probability=result.probability,
            ai_area=result.ai_area,
            manipulated_area=result.manipulated_area,
            ai_mask_url=result.ai_mask_url,
            manipulation_mask_url=result.manipulation_mask_url,
            coverage=result.coverage,
            tiles_seen=result.tiles_seen,
            tiles_total=result.tiles_total,
            seen_fraction=result.seen_fraction,
            top_tile=list(result.top_tile) if result.top_tile is not None else None,
            error_reason=result.error_reason,
            error_detail=result.error_detail,
            result_id=result.id,
        )

    @classmethod
    def failed(
        cls, key: str, object_uri: str, reason: str, detail: str, sha256: str | None = None, **extra: Any
    ) -> Outcome:
        """An error outcome; without ``sha256`` the bytes were never read and the location stands in for them."""
        return cls(
            key=key,
            sha256=sha256 or unread_content_id(object_uri, reason),
            verdict=Verdict.ERROR.value,
            bytes_read=sha256 is not None,
            error_reason=str(reason),  # a worker.reasons.Reason code, stored as its plain string
            error_detail=detail[:2000],
            **extra,
        )

    @property
    def is_error(self) -> bool:
        return self.verdict == Verdict.ERROR.value

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        del data["bytes_read"]
        data["reused"] = data.pop("result_id") is not None
        if self.is_error:
            for name in JUDGED_ONLY:
                data.pop(name)
        else:
            data.pop("error_reason")
            data.pop("error_detail")
        return data
