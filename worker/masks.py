"""Mask files: PNG encoding, content-addressed names, and writing them to S3 or a folder.

A mask covers the whole image (contract v2, :mod:`gamma.tiling`): ``ceil(H/4)`` x ``ceil(W/4)`` pixels, one per
4x4 block of the upright image (EXIF orientation applied, as the model saw it), stitched from the tiles the model
looked at, which keep the maximum where they overlap. Parts no tile looked at (outside the centre tile under
``centre``, between the corners under ``five``) are 0: "not looked at", not "clean". Above
:data:`gamma.tiling.MAX_MASK_SIDE` per side (8192-px images) the mask is max-pooled by the smallest integer factor
that fits, so its stride is 4 x that factor. A mask is an 8-bit greyscale PNG whose pixel value is the
probability x 255, exactly what the model output; a viewer scales it by its stride to lay it over the original.
Upsampling it here would store 16x the pixels and no information.

Names are derived from the image content, the model and the coverage mode,
``{prefix}/{model}/v{version}/{coverage}/{sha[:2]}/{sha}/ai.png``: a redelivered task or a second scan of the
same bytes overwrites the same two objects instead of leaving orphans, which is what makes writing masks before
the database commit safe; and a ``full`` scan's masks never overwrite those a ``centre`` scan's result points at.

The database keeps the URL as written (``s3://bucket/key`` or ``file://``). When the masks bucket is private,
``GAMMA_MASKS_PRESIGN=SECONDS`` makes what people read (``gamma-scan --json``) carry presigned HTTP(S) GET URLs
instead (:class:`MaskLinks`): signed when read, so a stored row never holds a URL that expires.
"""

from __future__ import annotations

import io
from typing import Any, Protocol

import numpy as np
from PIL import Image

from worker.settings import Settings
from worker.storage import LocalSource, S3Source, parse_source, presign_client, presign_url

PNG_TYPE = "image/png"
KINDS = ("ai", "manipulation")


class Sink(Protocol):
    def put(self, key: str, data: bytes, content_type: str) -> str: ...


def encode_png(mask: np.ndarray) -> bytes:
    """uint8 (rows, columns) probabilities -> PNG bytes (lossless; small for smooth or mostly unseen masks)."""
    array = np.ascontiguousarray(mask, dtype=np.uint8)
    if array.ndim != 2:
        raise ValueError(f"mask must be (H, W), got {array.shape}")
    buffer = io.BytesIO()
    Image.fromarray(array, mode="L").save(buffer, format="PNG", compress_level=6)
    return buffer.getvalue()


def decode_png(data: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(data)) as image:
        return np.asarray(image.convert("L"))


def mask_key(sha256: str, model_name: str, model_version: int, kind: str, coverage: str) -> str:
    return f"{model_name}/v{model_version}/{coverage}/{sha256[:2]}/{sha256}/{kind}.png"


class MaskStore:
    """Writes masks under one ``s3://bucket/prefix`` or folder and returns their URLs."""

    def __init__(self, sink: Sink, prefix: str = "") -> None:
        self.sink = sink
        self.prefix = prefix.strip("/")

    @classmethod
    def from_url(cls, url: str, endpoint_url: str = "", region: str = "us-east-1") -> MaskStore:
        target = parse_source(url, endpoint_url, region) if url.startswith(("s3://", "file://")) else None
        if target is None:  # a bare name is a folder here: masks are never written to a bucket by accident
            return cls(LocalSource(url))
        if isinstance(target, S3Source):
            return cls(target, target.prefix)
        return cls(target)

    def put(self, sha256: str, model_name: str, model_version: int, kind: str, mask: np.ndarray, coverage: str) -> str:
        """Write ``mask`` (uint8, any (rows, columns): a full-image mask) and return its URL."""
        key = mask_key(sha256, model_name, model_version, kind, coverage)
        return self.sink.put(f"{self.prefix}/{key}" if self.prefix else key, encode_png(mask), PNG_TYPE)


class MaskLinks:
    """Stored mask URLs as a reader gets them: unchanged, or ``s3://`` ones presigned for ``presign_s`` seconds
    on the configured endpoint (``GAMMA_S3_ENDPOINT_URL``). One client, made on first use (signing is local)."""

    def __init__(self, presign_s: int = 0, endpoint_url: str = "", region: str = "us-east-1") -> None:
        self.presign_s = presign_s
        self.endpoint_url = endpoint_url
        self.region = region
        self._client: Any = None

    @classmethod
    def from_settings(cls, settings: Settings) -> MaskLinks:
        return cls(settings.masks_presign, settings.s3_endpoint_url, settings.s3_region)

    def __call__(self, url: str | None) -> str | None:
        if url is None or self.presign_s <= 0 or not url.startswith("s3://"):
            return url
        if self._client is None:
            self._client = presign_client(self.endpoint_url, self.region)
        return presign_url(url, self.presign_s, self._client)

    def outcome(self, data: dict[str, Any]) -> dict[str, Any]:
        """An outcome's dict (``Outcome.to_dict``) with its mask URLs as a reader gets them."""
        for name in ("ai_mask_url", "manipulation_mask_url"):
            if data.get(name) is not None:
                data[name] = self(data[name])
        return data
