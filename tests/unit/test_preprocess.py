"""The preprocessing contract: golden outputs, every mode/format/rejection, and fast path == reference bit for bit.

All images are generated here with Pillow/numpy. The golden hashes pin the exact bytes the model sees; they
change only if the contract (or Pillow's bundled libjpeg-turbo) changes, which must be a deliberate decision.
"""

from __future__ import annotations

import hashlib
import io
import pickle
import struct
import warnings
import zlib
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from PIL import Image

from gamma import _fast_jpeg
from gamma.preprocess import (
    CROP_SIZE,
    DEFAULT_LIMITS,
    REJECTION_REASONS,
    ImageRejected,
    PreprocessLimits,
    _aligned_crop,
    _jpeg_fast,
    align_format,
    center_crop,
    decode_rgb,
    prepare_rgb,
    preprocess,
    preprocess_fast,
    preprocess_reference,
    random_crop,
    resize_short_side,
    to_chw,
)

WHITE = (255, 255, 255)


def encode(img: Image.Image, fmt: str, **kwargs: object) -> bytes:
    buffer = io.BytesIO()
    img.save(buffer, fmt, **kwargs)
    return buffer.getvalue()


def pattern(width: int, height: int) -> np.ndarray:
    """Integer-only synthetic content (no RNG, no libm): stable inputs for the golden hashes."""
    y, x = np.mgrid[0:height, 0:width].astype(np.int64)
    return np.stack([(x * 3 + y) % 256, (x ^ y) & 255, ((x * y) >> 4) & 255], axis=-1).astype(np.uint8)


def photo(rng: np.random.Generator, width: int, height: int) -> np.ndarray:
    """Camera-ish content: smooth gradients, noise and a few hard edges."""
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    phase = rng.uniform(0, 6, 3)
    img = np.stack([128 + 90 * np.sin(x / 37 + p) * np.cos(y / 53 - p) for p in phase], axis=-1)
    img += rng.normal(0, 8, img.shape)
    for _ in range(4):
        x0, y0 = rng.integers(0, width), rng.integers(0, height)
        img[y0 : y0 + 40, x0 : x0 + 3] = rng.uniform(0, 255, 3)
    return np.clip(img, 0, 255).astype(np.uint8)


def sha(array: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(array).tobytes()).hexdigest()


def png_chunk(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))


def raw_png(width: int, height: int, bit_depth: int, color_type: int, rows: bytes) -> bytes:
    """A PNG built by hand: header-only bombs cost a few bytes, 16-bit RGB needs no encoder support."""
    ihdr = struct.pack(">IIBBBBB", width, height, bit_depth, color_type, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + png_chunk(b"IHDR", ihdr)
        + png_chunk(b"IDAT", zlib.compress(rows))
        + png_chunk(b"IEND", b"")
    )


def with_orientation(img: Image.Image, orientation: int, fmt: str = "JPEG", **kwargs: object) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = orientation
    return encode(img, fmt, exif=exif.tobytes(), **kwargs)


# ---------------------------------------------------------------------------------------------------- golden


GOLDEN = {
    "png-640x480": ("PNG", 640, 480, "52992b82836db60eaabfaf117bbfc3c20141be31aa206aa563497810112d732a"),
    "png-200x120-upsized": ("PNG", 200, 120, "4b267734b73096c990483ca908e8de38876aa91c112ba829a8a65e2f197fd6a9"),
    "jpeg-1000x700": ("JPEG", 1000, 700, "5a5693f3007b90b7214cb6b62fa36c0ea3cbd12ce0d7b1dd14cc521e3f0c413d"),
}


@pytest.mark.parametrize("name", sorted(GOLDEN))
def test_golden(name: str) -> None:
    fmt, width, height, expected = GOLDEN[name]
    img = Image.fromarray(pattern(width, height))
    data = encode(img, fmt, quality=90) if fmt == "JPEG" else encode(img, fmt)
    out = preprocess(data)
    assert out.shape == (3, CROP_SIZE, CROP_SIZE) and out.dtype == np.uint8 and out.flags.c_contiguous
    assert np.array_equal(out, preprocess_reference(data))
    assert sha(out) == expected


# ---------------------------------------------------------------------------------------------- orientation


# Stored pixels = upright image put through the inverse of what the orientation tag asks a viewer to do.
INVERSE = {o: t for o, t in _fast_jpeg.TRANSPOSITIONS.items()}
INVERSE[6], INVERSE[8] = Image.Transpose.ROTATE_90, Image.Transpose.ROTATE_270


@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation_is_applied(orientation: int) -> None:
    upright = Image.new("RGB", (600, 800), WHITE)
    upright.paste((255, 0, 0), (0, 0, 200, 200))  # red marks the top-left corner
    upright.paste((0, 0, 255), (400, 0, 600, 200))  # blue the top-right
    stored = upright.transpose(INVERSE[orientation]) if orientation != 1 else upright
    rgb = decode_rgb(with_orientation(stored, orientation, quality=95))
    assert rgb.shape == (800, 600, 3)
    assert np.abs(rgb[100, 100].astype(int) - (255, 0, 0)).max() < 8
    assert np.abs(rgb[100, 500].astype(int) - (0, 0, 255)).max() < 8
    assert np.abs(rgb[700, 300].astype(int) - WHITE).max() < 8


# -------------------------------------------------------------------------------------------- modes/formats


def test_rgba_is_composited_on_white() -> None:
    rgba = np.zeros((8, 8, 4), np.uint8)
    rgba[..., :3] = (10, 200, 30)
    rgba[0, 0, 3], rgba[0, 1, 3], rgba[0, 2, 3] = 0, 255, 128
    rgb = decode_rgb(encode(Image.fromarray(rgba, "RGBA"), "PNG"))
    assert tuple(rgb[0, 0]) == WHITE
    assert tuple(rgb[0, 1]) == (10, 200, 30)
    assert tuple(rgb[0, 2]) == tuple((c * 128 + 255 * 127 + 127) // 255 for c in (10, 200, 30))


def test_la_and_palette_transparency_become_white() -> None:
    la = Image.fromarray(np.dstack([np.full((4, 4), 77, np.uint8), np.array([[0, 255] * 2] * 4, np.uint8)]), "LA")
    rgb = decode_rgb(encode(la, "PNG"))
    assert tuple(rgb[0, 0]) == WHITE and tuple(rgb[0, 1]) == (77, 77, 77)

    palette = Image.new("P", (4, 4), 1)
    palette.putpalette([0, 0, 0, 250, 20, 20, 20, 250, 20] + [0] * 759)
    palette.putpixel((0, 0), 2)
    for fmt in ("PNG", "GIF"):
        rgb = decode_rgb(encode(palette, fmt, transparency=2))
        assert tuple(rgb[0, 0]) == WHITE and tuple(rgb[1, 1]) == (250, 20, 20), fmt
    rgb = decode_rgb(encode(palette, "PNG"))  # no transparency: the palette colour itself
    assert tuple(rgb[0, 0]) == (20, 250, 20)


def test_greyscale_bilevel_and_cmyk() -> None:
    grey = np.arange(64, dtype=np.uint8).reshape(8, 8) * 4
    assert np.array_equal(decode_rgb(encode(Image.fromarray(grey), "PNG")), np.dstack([grey] * 3))
    bilevel = Image.fromarray(grey > 100).convert("1")
    rgb = decode_rgb(encode(bilevel, "PNG"))
    assert set(np.unique(rgb)) == {0, 255} and np.array_equal(rgb[..., 0] == 255, grey > 100)
    cmyk = Image.new("CMYK", (8, 8), (255, 0, 0, 0))  # pure cyan
    assert tuple(decode_rgb(encode(cmyk, "TIFF"))[0, 0]) == (0, 255, 255)
    assert np.abs(decode_rgb(encode(cmyk, "JPEG", quality=95))[4, 4].astype(int) - (0, 255, 255)).max() < 6


def test_sixteen_bit_is_scaled_not_clipped() -> None:
    values = np.array([[0, 257, 32896, 65535]], np.uint16)
    expected = np.array([0, 1, 128, 255], np.uint8)
    for fmt in ("PNG", "TIFF"):
        rgb = decode_rgb(encode(Image.fromarray(values), fmt))  # mode I;16
        assert np.array_equal(rgb[0, :, 0], expected) and np.array_equal(rgb[..., 0], rgb[..., 2]), fmt
    assert np.array_equal(decode_rgb(encode(Image.fromarray(values.astype(np.int32)), "TIFF"))[0, :, 1], expected)
    unit = Image.fromarray(np.array([[0.0, 0.5, 1.0]], np.float32))  # mode F in [0, 1]
    assert list(decode_rgb(encode(unit, "TIFF"))[0, :, 0]) == [0, 128, 255]
    rows = b"".join(b"\x00" + struct.pack(">6H", 0xFF00, 0x8000, 0x0100, 0, 0xFFFF, 0x7F00) for _ in range(2))
    rgb = decode_rgb(raw_png(2, 2, 16, 2, rows))  # 16-bit RGB PNG
    assert tuple(rgb[0, 0]) == (255, 128, 1) and tuple(rgb[1, 1]) == (0, 255, 127)


@pytest.mark.parametrize("fmt", ["GIF", "WEBP", "PNG"])
def test_animations_give_their_first_frame(fmt: str) -> None:
    frames = [Image.new("RGB", (64, 48), colour) for colour in ((250, 0, 0), (0, 250, 0), (0, 0, 250))]
    data = encode(frames[0], fmt, save_all=True, append_images=frames[1:], duration=50, loop=0, lossless=True)
    assert Image.open(io.BytesIO(data)).n_frames == 3
    assert np.abs(decode_rgb(data)[20, 30].astype(int) - (250, 0, 0)).max() <= 4


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF", "MPO", "AVIF", "HEIF"])
def test_every_format_decodes(fmt: str) -> None:
    if fmt == "HEIF":
        pytest.importorskip("pillow_heif").register_heif_opener()
    img = Image.fromarray(pattern(96, 64) // 2 + 60)
    kwargs: dict[str, object] = {"WEBP": {"lossless": True}, "MPO": {"save_all": True, "append_images": [img]}}.get(
        fmt, {"quality": 95}
    )
    try:
        data = encode(img, fmt, **kwargs)
    except (KeyError, OSError, ValueError) as exc:
        pytest.skip(f"this Pillow cannot write {fmt}: {exc}")
    rgb = decode_rgb(data)
    assert rgb.shape == (64, 96, 3) and rgb.dtype == np.uint8 and rgb.flags.writeable
    tolerance = {"GIF": 40, "JPEG": 40, "MPO": 40, "AVIF": 60, "HEIF": 60}.get(fmt, 0)
    assert np.abs(rgb.astype(int) - np.asarray(img, int)).mean() <= tolerance / 4
    assert preprocess(data).shape == (3, CROP_SIZE, CROP_SIZE)


# ------------------------------------------------------------------------------------------------ rejections


def truncated_large_jpeg() -> bytes:
    data = encode(Image.fromarray(photo(np.random.default_rng(5), 900, 1200)), "JPEG", quality=90)
    return data[: int(len(data) * 0.9)]  # the centre crop's rows are all present; the bottom is not


def zero_height_jpeg() -> bytes:
    data = encode(Image.new("RGB", (32, 32), "red"), "JPEG")
    offset, _, _ = _fast_jpeg.frame_header(data)
    return _fast_jpeg.with_height(data, offset, 0)


def rejection_cases() -> dict[str, tuple[str, bytes, PreprocessLimits]]:
    small = encode(Image.fromarray(pattern(100, 100)), "PNG")
    jpeg = encode(Image.fromarray(pattern(300, 200)), "JPEG", quality=90)
    gif = encode(Image.fromarray(pattern(64, 64)).convert("P"), "GIF")
    webp = encode(Image.fromarray(pattern(64, 64)), "WEBP")
    limits = DEFAULT_LIMITS
    return {
        "empty": ("empty", b"", limits),
        "too-many-bytes": ("too-many-bytes", small, PreprocessLimits(max_bytes=100)),
        "small-pixel-limit": ("too-many-pixels", small, PreprocessLimits(max_pixels=9_999)),
        "png-bomb-header-20000x20000": ("too-many-pixels", raw_png(20000, 20000, 8, 2, b"\x00"), limits),
        "png-bomb-header-10000x10000": ("too-many-pixels", raw_png(10000, 10000, 8, 2, b"\x00"), limits),
        "zero-width-png": ("too-small", raw_png(0, 10, 8, 2, b"\x00"), limits),
        "zero-height-jpeg": ("too-small", zero_height_jpeg(), limits),
        "1x2000-panorama": ("extreme-aspect-ratio", encode(Image.new("RGB", (2000, 1)), "PNG"), limits),
        "truncated-jpeg": ("truncated", jpeg[: len(jpeg) // 2], limits),
        "truncated-large-jpeg": ("truncated", truncated_large_jpeg(), limits),
        "truncated-png": ("truncated", small[: len(small) // 2], limits),
        "truncated-png-header": ("truncated", small[:30], limits),
        "truncated-gif": ("truncated", gif[: len(gif) - 5], limits),
        "truncated-webp": ("truncated", webp[: len(webp) // 2], limits),
        "garbage": ("undecodable", np.random.default_rng(0).integers(0, 256, 4096, np.uint8).tobytes(), limits),
        "text-named-jpg": ("undecodable", b"this is not a picture, whatever its name says\n", limits),
        "corrupt-png-crc": ("undecodable", small[:40] + bytes([small[40] ^ 0xFF]) + small[41:], limits),
        "svg": ("unsupported-format", b'<?xml version="1.0"?>\n<svg xmlns="http://www.w3.org/2000/svg"/>', limits),
        "ico": ("unsupported-format", encode(Image.new("RGB", (32, 32)), "ICO"), limits),
        "pdf": ("unsupported-format", b"%PDF-1.7\n1 0 obj\n<<>>\nendobj\n", limits),
    }


CASES = rejection_cases()


@pytest.mark.parametrize("name", sorted(CASES))
@pytest.mark.parametrize("function", [preprocess, preprocess_reference, decode_rgb])
def test_rejections(name: str, function: object) -> None:
    reason, data, limits = CASES[name]
    if function is decode_rgb and reason == "extreme-aspect-ratio":
        assert decode_rgb(data, limits).shape == (1, 2000, 3)  # decodable; only the contract's resize refuses it
        return
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # PIL's DecompressionBombWarning must not escape as anything else
        with pytest.raises(ImageRejected) as info:
            function(data, limits)  # type: ignore[operator]
    assert info.value.reason == reason, info.value
    assert str(info.value) == f"{reason}: {info.value.detail}" and info.value.detail


def test_every_rejection_reason_is_exercised() -> None:
    assert {reason for reason, _, _ in CASES.values()} == set(REJECTION_REASONS)


def test_rejection_is_a_picklable_value_error() -> None:
    exc = ImageRejected("truncated", "ends early")
    copy = pickle.loads(pickle.dumps(exc))
    assert isinstance(copy, ValueError) and (copy.reason, copy.detail, str(copy)) == (
        "truncated",
        "ends early",
        "truncated: ends early",
    )
    with pytest.raises(ValueError):
        ImageRejected("no-such-reason", "x")


def test_arrays_too_small_or_malformed() -> None:
    with pytest.raises(ImageRejected, match="too-small"):
        prepare_rgb(np.zeros((0, 5, 3), np.uint8))
    with pytest.raises(ValueError):
        prepare_rgb(np.zeros((5, 5), np.uint8))


# ------------------------------------------------------------------------------------------ resize and crops


def test_small_image_is_upsized_to_short_side_512() -> None:
    data = encode(Image.fromarray(pattern(100, 300)), "PNG")
    rgb = decode_rgb(data)
    assert rgb.shape == (300, 100, 3)
    assert resize_short_side(rgb).shape == (1536, 512, 3)
    assert resize_short_side(np.zeros((333, 1000, 3), np.uint8)).shape == (512, 1538, 3)  # round(1000 * 512 / 333)
    big = np.zeros((600, 700, 3), np.uint8)
    assert resize_short_side(big) is big  # never downsized
    assert preprocess(data).shape == (3, CROP_SIZE, CROP_SIZE)


def test_center_crop_and_shape_idempotence() -> None:
    rgb = pattern(701, 600)
    crop = center_crop(rgb)
    assert np.array_equal(crop, rgb[44:556, 94:606])  # floor((600 - 512) / 2), floor((701 - 512) / 2)
    out = preprocess(encode(Image.fromarray(rgb), "PNG"))
    again = prepare_rgb(np.ascontiguousarray(out.transpose(1, 2, 0)))
    assert out.shape == again.shape == (3, CROP_SIZE, CROP_SIZE)
    assert np.array_equal(center_crop(crop), crop)


def test_random_crop_pads_by_one_pixel() -> None:
    rgb = np.full((512, 515, 3), 9, np.uint8)
    seen_top, seen_left = set(), set()
    for seed in range(40):
        crop = random_crop(rgb, CROP_SIZE, np.random.default_rng(seed), padding=1)
        assert crop.shape == (CROP_SIZE, CROP_SIZE, 3)
        seen_top.add((crop[0] == 0).all())
        seen_left.add((crop[:, 0] == 0).all())
    assert seen_top == {True, False} and seen_left == {True, False}  # the zero padding is sometimes inside
    a = random_crop(rgb, CROP_SIZE, np.random.default_rng(3))
    assert np.array_equal(a, random_crop(rgb, CROP_SIZE, np.random.default_rng(3)))


# ---------------------------------------------------------------------------------- fast path == reference


def test_window_round_trip_equals_whole_image_round_trip() -> None:
    """The crop of a q96 round trip of a whole image == the crop of a round trip of an MCU-aligned window."""
    rng = np.random.default_rng(1)
    for _ in range(150):
        width, height = (int(v) for v in rng.integers(1, 180, 2))
        rgb = photo(rng, width, height)
        full = align_format(rgb)
        bw, bh = int(rng.integers(1, width + 1)), int(rng.integers(1, height + 1))
        left, top = int(rng.integers(0, width - bw + 1)), int(rng.integers(0, height - bh + 1))
        if rng.random() < 0.3:  # touch the borders often
            left, top = (0, 0) if rng.random() < 0.5 else (width - bw, height - bh)
        window = _aligned_crop(Image.fromarray(rgb), (left, top, left + bw, top + bh))
        assert np.array_equal(window, full[top : top + bh, left : left + bw]), (width, height, left, top, bw, bh)


def test_row_limited_jpeg_decode_equals_full_decode() -> None:
    rng = np.random.default_rng(2)
    for _ in range(40):
        width, height = (int(v) for v in rng.integers(20, 300, 2))
        img = Image.fromarray(photo(rng, width, height))
        kwargs = {"quality": int(rng.integers(50, 100)), "subsampling": int(rng.integers(0, 3))}
        data = encode(img.convert("L") if rng.random() < 0.2 else img, "JPEG", progressive=rng.random() < 0.4, **kwargs)
        offset, _, _ = _fast_jpeg.frame_header(data)
        rows = int(rng.integers(1, height + 1))
        part = np.asarray(Image.open(io.BytesIO(_fast_jpeg.with_height(data, offset, rows))))
        keep = max(0, rows - 32)  # two MCU rows of margin at most (4:2:0)
        assert np.array_equal(part[:keep], np.asarray(Image.open(io.BytesIO(data)))[:keep])


def random_jpeg(rng: np.random.Generator) -> tuple[bytes, dict[str, object]]:
    width, height = (int(v) for v in rng.integers(512, 1100, 2))
    orientation = int(rng.integers(1, 9))
    mode = str(rng.choice(["RGB"] * 6 + ["L", "CMYK"]))
    img = Image.fromarray(photo(rng, width, height)).convert(mode)
    kwargs: dict[str, object] = {
        "quality": int(rng.integers(60, 100)),
        "subsampling": int(rng.integers(0, 3)),
        "progressive": bool(rng.random() < 0.3),
        "restart_marker_rows": int(rng.integers(0, 3)),
    }
    exif = Image.Exif()
    exif[0x0112] = orientation
    fmt = "MPO" if rng.random() < 0.1 else "JPEG"
    extra = {"save_all": True, "append_images": [img.resize((64, 48))]} if fmt == "MPO" else {}
    data = encode(img, fmt, exif=exif.tobytes(), **kwargs, **extra)
    return data, {"size": (width, height), "orientation": orientation, "mode": mode, "fmt": fmt, **kwargs}


@pytest.mark.filterwarnings("ignore:Image appears to be a malformed MPO")  # Pillow's MPO writer, both paths agree
def test_fast_path_is_bit_identical_to_reference() -> None:
    rng = np.random.default_rng(3)
    row_limited = 0
    for _ in range(48):
        data, case = random_jpeg(rng)
        fast = _jpeg_fast(data, DEFAULT_LIMITS)
        assert fast is not None, case  # the fast path really ran
        assert np.array_equal(fast, preprocess_reference(data)), case
        row_limited += _fast_jpeg.frame_header(data)[2] > 800
    assert row_limited > 10


def test_fast_path_declines_what_it_cannot_prove() -> None:
    data = encode(Image.fromarray(photo(np.random.default_rng(4), 700, 900)), "JPEG", quality=90)
    assert _jpeg_fast(data, DEFAULT_LIMITS) is not None
    trailer = data + b"camera trailer after EOI"
    assert _jpeg_fast(trailer, DEFAULT_LIMITS) is None
    assert np.array_equal(preprocess(trailer), preprocess_reference(data))
    small = encode(Image.fromarray(photo(np.random.default_rng(4), 400, 900)), "JPEG", quality=90)
    assert _jpeg_fast(small, DEFAULT_LIMITS) is None  # needs upsizing
    assert np.array_equal(preprocess(small), preprocess_reference(small))


@pytest.mark.parametrize("fmt", ["PNG", "WEBP", "BMP"])
def test_other_formats_fast_equals_reference(fmt: str) -> None:
    rng = np.random.default_rng(6)
    for width, height in ((530, 517), (1000, 513), (300, 700)):
        data = encode(Image.fromarray(photo(rng, width, height)), fmt, **({"lossless": True} if fmt == "WEBP" else {}))
        assert np.array_equal(preprocess_fast(data), preprocess_reference(data))


def test_prepare_rgb_matches_preprocess() -> None:
    data = encode(Image.fromarray(photo(np.random.default_rng(7), 800, 600)), "JPEG", quality=90)
    assert np.array_equal(prepare_rgb(decode_rgb(data)), preprocess(data))
    assert np.array_equal(to_chw(center_crop(align_format(resize_short_side(decode_rgb(data))))), preprocess(data))


def test_thread_safe_and_deterministic() -> None:
    rng = np.random.default_rng(8)
    blobs = [encode(Image.fromarray(photo(rng, 700, 640)), "JPEG", quality=90) for _ in range(6)]
    sequential = [preprocess(b) for b in blobs]
    with ThreadPoolExecutor(3) as pool:
        parallel = list(pool.map(preprocess, blobs * 2))
    assert all(np.array_equal(a, b) for a, b in zip(sequential * 2, parallel, strict=True))


@pytest.mark.parametrize(
    "options", [{}, {"optimize": True}, {"progressive": True, "optimize": True}], ids=["plain", "optimized", "progr"]
)
def test_a_header_that_declares_more_than_the_data_holds_is_truncated(options: dict[str, object]) -> None:
    """Every 8x8 block costs at least a bit: a frame header patched to a far larger size (which libjpeg would fill
    with grey, silently) is ``truncated``; the smallest honest JPEGs (uniform, optimised, progressive) are not."""
    uniform = encode(Image.new("RGB", (2048, 1536), (128, 128, 128)), "JPEG", **options)
    assert preprocess(uniform).shape == (3, CROP_SIZE, CROP_SIZE)  # about 2 bits per block: above the bound
    data = bytearray(encode(Image.new("RGB", (64, 48), (200, 40, 40)), "JPEG", **options))
    offset, _, _ = _fast_jpeg.frame_header(bytes(data))  # type: ignore[misc]
    data[offset : offset + 4] = struct.pack(">HH", 1300, 60000)
    with pytest.raises(ImageRejected) as rejected:
        preprocess(bytes(data))
    assert rejected.value.reason == "truncated" and "60000x1300" in rejected.value.detail
    with pytest.raises(ImageRejected):
        decode_rgb(bytes(data))  # the reference path too
