"""gamma-report reads originals with the preprocessing byte limit: a larger one is "too large to preview"."""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path

import pytest
from moto import mock_aws
from PIL import Image

from gamma.preprocess import DEFAULT_LIMITS
from worker import html_report, storage
from worker.html_report import TOO_LARGE, Reader, Row, pictures
from worker.settings import Settings
from worker.storage import ObjectUnreadable, s3_client

LIMIT = 2000


def _png(size: tuple[int, int]) -> bytes:
    buffer = io.BytesIO()
    Image.effect_noise(size, 60).convert("RGB").save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture
def placeholders(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    texts: list[str] = []
    real = html_report._placeholder

    def spy(text: str) -> Image.Image:
        texts.append(text)
        return real(text)

    monkeypatch.setattr(html_report, "_placeholder", spy)
    return texts


@pytest.fixture(autouse=True)
def fresh_clients() -> Iterator[None]:
    storage._forget_clients()
    yield
    storage._forget_clients()


def _row(key: str) -> Row:
    return Row(key, "ai-generated", 0.9, 0.5, 0.0, None, None)


def test_the_limit_is_the_preprocessing_one() -> None:
    assert Reader(Settings()).limits.max_bytes == DEFAULT_LIMITS.max_bytes
    assert Reader(Settings(max_bytes=LIMIT)).limits.max_bytes == LIMIT


def test_a_local_original_over_the_limit_is_not_read(tmp_path: Path, placeholders: list[str]) -> None:
    big, small = _png((200, 200)), _png((16, 16))
    assert len(big) > LIMIT > len(small)
    (tmp_path / "big.png").write_bytes(big)
    (tmp_path / "small.png").write_bytes(small)
    reader = Reader(Settings(max_bytes=LIMIT))
    with pytest.raises(ObjectUnreadable) as large:
        reader.original(tmp_path.as_uri(), "big.png")
    assert large.value.reason == "too-many-bytes"
    assert reader.original(tmp_path.as_uri(), "small.png") == small

    pictures(reader, tmp_path.as_uri(), _row("big.png"))
    assert TOO_LARGE in placeholders
    placeholders.clear()
    pictures(reader, tmp_path.as_uri(), _row("small.png"))
    assert TOO_LARGE not in placeholders  # only the two missing masks are placeholders
    assert placeholders == ["mask unavailable", "mask unavailable"]


def test_an_s3_original_over_the_limit_is_too_large_to_preview(
    monkeypatch: pytest.MonkeyPatch, placeholders: list[str]
) -> None:
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    with mock_aws():
        s3 = s3_client()
        s3.create_bucket(Bucket="uploads")
        s3.put_object(Bucket="uploads", Key="p/big.png", Body=_png((200, 200)))
        reader = Reader(Settings(max_bytes=LIMIT))
        seen: list[str] = []
        s3.meta.events.register("before-call.s3.GetObject", lambda **_: seen.append("get"))
        pictures(reader, "s3://uploads/p/", _row("p/big.png"))
    assert seen == ["get"]  # the shared client: the one the test made
    assert placeholders == ["mask unavailable", "mask unavailable", TOO_LARGE]


def test_an_image_over_the_pixel_limit_is_too_large_to_preview(tmp_path: Path, placeholders: list[str]) -> None:
    buffer = io.BytesIO()
    Image.new("RGB", (3000, 3000), (9, 9, 9)).save(buffer, format="PNG")  # few bytes, many pixels
    (tmp_path / "wide.png").write_bytes(buffer.getvalue())
    pictures(Reader(Settings(max_pixels=1_000_000)), tmp_path.as_uri(), _row("wide.png"))
    assert placeholders == ["mask unavailable", "mask unavailable", TOO_LARGE]
