"""The preprocessing contract (v2): golden outputs, every mode/format/rejection, no resampling, and the fast path
== the reference bit for bit, for every tile of every coverage mode.

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
    to_chw,
)
from gamma.tiling import MIN_SIDE, TILE_SIZE, Coverage, TilePlan, plan_tiles

WHITE = (255, 255, 255)
COVERAGES = list(Coverage)


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
    # separable waves (sines of one row and one column, broadcast) and float32 noise: a 6 MP image in well under
    # a second, so the fast-path test can afford camera sizes
    y, x = np.arange(height, dtype=np.float32)[:, None], np.arange(width, dtype=np.float32)[None, :]
    phase = rng.uniform(0, 6, 3)
    img = np.stack([128 + 90 * np.sin(x / 37 + p) * np.cos(y / 53 - p) for p in phase], axis=-1)
    img += rng.standard_normal(img.shape, dtype=np.float32) * 8
    for _ in range(4):
        x0, y0 = rng.integers(0, width), rng.integers(0, height)
        img[y0 : y0 + 40, x0 : x0 + 3] = rng.uniform(0, 255, 3)
    return np.clip(img, 0, 255).astype(np.uint8)


def sha(array: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(array).tobytes()).hexdigest()


def cut_by_hand(aligned: np.ndarray, plan: TilePlan) -> np.ndarray:
    """The contract's last step spelled out: each plan box of the aligned (H, W, 3) image, as (N, 3, h, w)."""
    return np.stack([aligned[top:bottom, left:right].transpose(2, 0, 1) for left, top, right, bottom in plan.boxes])


def assert_same_tiles(got: object, want: object, context: object = "") -> None:
    """Two Tiles: the same plan and the same bytes for every tile."""
    assert got.plan == want.plan, context  # type: ignore[attr-defined]
    assert got.pixels.dtype == np.uint8 and got.pixels.flags.c_contiguous, context  # type: ignore[attr-defined]
    assert np.array_equal(got.pixels, want.pixels), context  # type: ignore[attr-defined]


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


# name: (format, width, height, coverage, shape of the tiles)
GOLDEN = {
    "png-640x480-five": ("PNG", 640, 480, "five", (2, 3, 480, 512)),
    "png-200x120-whole": ("PNG", 200, 120, "five", (1, 3, 96, 192)),
    "jpeg-1000x700-five": ("JPEG", 1000, 700, "five", (5, 3, 512, 512)),
    "jpeg-1000x700-full": ("JPEG", 1000, 700, "full", (6, 3, 512, 512)),
    "jpeg-1000x700-centre": ("JPEG", 1000, 700, "centre", (1, 3, 512, 512)),
}
# sha256 of the tiles' bytes
GOLDEN_SHA256 = {
    "png-640x480-five": "947d501d3e0eda52991c429b4013b0cf5540c2b5f49a854bf541c886b48e5291",
    "png-200x120-whole": "a80c85f4a1f4b2ff237b6bfa76b5ccf7509e7e08cfdac0cdb15d3608222fa940",
    "jpeg-1000x700-five": "7000d1a2bdee6597c0fa4a5e23790a9d40f18d9cb4f6614cf5f58be4ba6c3c1b",
    "jpeg-1000x700-full": "171d157a0b05f56e7c7bf84ebebe24bde210db7ccc77eaf97f8d50756aa0682a",
    "jpeg-1000x700-centre": "6c51b8c652627728c5f40a0a57cd18775306acd1c17129472eb603f236127975",
}


@pytest.mark.parametrize("name", sorted(GOLDEN))
def test_golden(name: str) -> None:
    fmt, width, height, coverage, shape = GOLDEN[name]
    img = Image.fromarray(pattern(width, height))
    data = encode(img, fmt, quality=90) if fmt == "JPEG" else encode(img, fmt)
    out = preprocess(data, coverage=coverage)
    assert out.pixels.shape == shape and out.pixels.dtype == np.uint8 and out.pixels.flags.c_contiguous
    assert out.plan == plan_tiles(width, height, coverage) and len(out) == shape[0]
    assert_same_tiles(out, preprocess_reference(data, coverage=coverage))
    assert sha(out.pixels) == GOLDEN_SHA256[name]


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
    assert preprocess(data).pixels.shape == (1, 3, 64, 96)  # run whole: 96x64 is already on the 32-px stride


# ------------------------------------------------------------------------------------------------ rejections


def truncated_large_jpeg() -> bytes:
    data = encode(Image.fromarray(photo(np.random.default_rng(5), 900, 1200)), "JPEG", quality=90)
    return data[: int(len(data) * 0.9)]  # the centre tile's rows are all present; the bottom is not


def zero_height_jpeg() -> bytes:
    data = encode(Image.new("RGB", (32, 32), "red"), "JPEG")
    offset, _, _ = _fast_jpeg.frame_header(data)
    return _fast_jpeg.with_height(data, offset, 0)


def rejection_cases() -> dict[str, tuple[str, bytes, PreprocessLimits]]:
    """name: (reason, bytes, limits)."""
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
        "1x2000-panorama": ("too-small", encode(Image.new("RGB", (2000, 1)), "PNG"), limits),
        "1x1-png": ("too-small", encode(Image.new("RGB", (1, 1)), "PNG"), limits),
        "8x8-jpeg": ("too-small", encode(Image.new("RGB", (8, 8), "red"), "JPEG"), limits),
        "63x800-jpeg": ("too-small", encode(Image.fromarray(pattern(63, 800)), "JPEG", quality=90), limits),
        "800x63-png-exif-rotated": ("too-small", with_orientation(Image.new("RGB", (63, 800)), 6, "PNG"), limits),
        "65501x64-png": ("extreme-aspect-ratio", encode(Image.new("RGB", (65_501, 64)), "PNG"), limits),
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
# Decodable images the contract still refuses (sides under 64 px, a side JPEG cannot encode): decode_rgb returns
# their pixels, upright; only preprocessing refuses them.
DECODABLE = {
    "1x2000-panorama": (1, 2000),
    "1x1-png": (1, 1),
    "8x8-jpeg": (8, 8),
    "63x800-jpeg": (800, 63),
    "800x63-png-exif-rotated": (63, 800),
    "65501x64-png": (64, 65_501),
}


@pytest.mark.parametrize("name", sorted(CASES))
@pytest.mark.parametrize("function", [preprocess, preprocess_reference, decode_rgb])
def test_rejections(name: str, function: object) -> None:
    reason, data, limits = CASES[name]
    if function is decode_rgb and name in DECODABLE:
        assert decode_rgb(data, limits).shape[:2] == DECODABLE[name]
        return
    coverages = COVERAGES if function is not decode_rgb else [None]
    for coverage in coverages:  # a verdict on the bytes, whichever tiles would be looked at
        kwargs = {"coverage": coverage} if coverage is not None else {}
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # PIL's DecompressionBombWarning must not escape as anything else
            with pytest.raises(ImageRejected) as info:
                function(data, limits, **kwargs)  # type: ignore[operator]
        assert info.value.reason == reason, (coverage, info.value)
        assert str(info.value) == f"{reason}: {info.value.detail}" and info.value.detail
        if reason == "too-small" and name in DECODABLE:
            assert f"under {MIN_SIDE} px" in info.value.detail


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
    for shape in ((0, 5, 3), (63, 100, 3), (100, 63, 3), (1, 1, 3)):
        with pytest.raises(ImageRejected, match="too-small"):
            prepare_rgb(np.zeros(shape, np.uint8))
    assert prepare_rgb(np.zeros((64, 64, 3), np.uint8)).pixels.shape == (1, 3, 64, 64)  # the smallest judged
    with pytest.raises(ValueError):
        prepare_rgb(np.zeros((5, 5), np.uint8))


# ------------------------------------------------------------------------------------- no resampling, crops


SMALL_SIZES = [(64, 64), (100, 70), (200, 300), (95, 511), (511, 96), (300, 100), (543, 64)]


@pytest.mark.parametrize("size", SMALL_SIZES, ids=[f"{w}x{h}" for w, h in SMALL_SIZES])
def test_small_images_run_whole_at_their_own_resolution(size: tuple[int, int]) -> None:
    """Nothing is upsampled: a small image's one tile is its decoded, format-aligned pixels cut to the 32-px stride
    (never larger than the image, at most 31 px smaller per side), in every coverage mode and on every path."""
    width, height = size
    rgb = photo(np.random.default_rng(width * height), width, height)
    data = encode(Image.fromarray(rgb), "PNG")
    assert np.array_equal(decode_rgb(data), rgb)  # lossless: the pixels the image really has
    aligned = align_format(rgb)
    tile_w, tile_h = min(TILE_SIZE, width // 32 * 32), min(TILE_SIZE, height // 32 * 32)
    assert tile_w <= width < tile_w + 32 or tile_w == TILE_SIZE
    for coverage in COVERAGES:
        tiles = preprocess(data, coverage=coverage)
        assert tiles.pixels.shape == (1, 3, tile_h, tile_w), coverage
        left, top, right, bottom = tiles.plan.boxes[0]
        assert (right - left, bottom - top) == (tile_w, tile_h) and right <= width and bottom <= height
        assert np.array_equal(tiles.pixels[0], aligned[top:bottom, left:right].transpose(2, 0, 1)), coverage
        assert_same_tiles(tiles, preprocess_reference(data, coverage=coverage), coverage)
        assert_same_tiles(prepare_rgb(rgb, coverage), tiles, coverage)
        jpeg = encode(Image.fromarray(rgb), "JPEG", quality=95)  # the JPEG fast path too (no upsizing to avoid)
        fast = _jpeg_fast(jpeg, DEFAULT_LIMITS, coverage)
        assert fast is not None and fast.pixels.shape == (1, 3, tile_h, tile_w)
        assert_same_tiles(fast, preprocess_reference(jpeg, coverage=coverage), coverage)


@pytest.mark.parametrize("coverage", COVERAGES)
def test_every_tile_is_the_aligned_image_at_its_box(coverage: Coverage) -> None:
    """Large images too: tile k is exactly align_format(decode_rgb(data)) at plan box k — no scaling, no offset."""
    rgb = photo(np.random.default_rng(12), 1700, 1100)
    data = encode(Image.fromarray(rgb), "PNG")
    tiles = preprocess(data, coverage=coverage)
    assert tiles.plan == plan_tiles(1700, 1100, coverage)
    assert tiles.pixels.shape[1:] == (3, TILE_SIZE, TILE_SIZE)
    assert len(tiles) == {"centre": 1, "five": 5, "full": 12}[coverage.value]
    assert np.array_equal(tiles.pixels, cut_by_hand(align_format(rgb), tiles.plan))


def test_center_crop_and_shape_idempotence() -> None:
    rgb = pattern(701, 600)
    crop = center_crop(rgb, TILE_SIZE)
    assert np.array_equal(crop, rgb[44:556, 94:606])  # floor((600 - 512) / 2), floor((701 - 512) / 2)
    assert np.array_equal(center_crop(crop, TILE_SIZE), crop)
    with pytest.raises(ValueError, match="smaller"):
        center_crop(rgb, 601)  # never padded
    out = preprocess(encode(Image.fromarray(rgb), "PNG"), coverage="centre")
    assert out.pixels.shape == (1, 3, TILE_SIZE, TILE_SIZE)
    again = prepare_rgb(np.ascontiguousarray(out.pixels[0].transpose(1, 2, 0)), "centre")
    assert again.pixels.shape == out.pixels.shape and again.plan.boxes == ((0, 0, TILE_SIZE, TILE_SIZE),)


def test_random_crop_pads_by_one_pixel() -> None:
    rgb = np.full((512, 515, 3), 9, np.uint8)
    seen_top, seen_left = set(), set()
    for seed in range(40):
        crop = random_crop(rgb, TILE_SIZE, np.random.default_rng(seed), padding=1)
        assert crop.shape == (TILE_SIZE, TILE_SIZE, 3)
        seen_top.add((crop[0] == 0).all())
        seen_left.add((crop[:, 0] == 0).all())
    assert seen_top == {True, False} and seen_left == {True, False}  # the zero padding is sometimes inside
    a = random_crop(rgb, TILE_SIZE, np.random.default_rng(3))
    assert np.array_equal(a, random_crop(rgb, TILE_SIZE, np.random.default_rng(3)))


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


def random_jpeg(rng: np.random.Generator, kind: str = "mid") -> tuple[bytes, dict[str, object]]:
    """A camera-like JPEG of a random size (``small``: under a tile on some side, runs whole; ``mid``: one tile to
    grids of a few; ``large``: grids well over five), orientation, mode, quality, subsampling, progressive or not,
    with or without restart markers, sometimes an MPO."""
    low, high = {"small": (MIN_SIDE, 560), "mid": (512, 1400), "large": (1400, 2600)}[kind]
    width, height = (int(v) for v in rng.integers(low, high, 2))
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
def test_fast_path_is_bit_identical_to_reference(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every tile of every coverage mode, on random JPEGs: the fast path (row-limited decode, windowed alignment)
    gives the reference's plan and bytes. Counts the row-limited decodes, so the test shows they really ran."""
    truncations: list[int] = []
    real_with_height = _fast_jpeg.with_height

    def counting_with_height(data: bytes, offset: int, rows: int) -> bytes:
        truncations.append(rows)
        return real_with_height(data, offset, rows)

    monkeypatch.setattr(_fast_jpeg, "with_height", counting_with_height)
    rng = np.random.default_rng(3)
    kinds = ["small", "mid", "mid", "mid", "large"] * 6
    for index, kind in enumerate(kinds):
        data, case = random_jpeg(rng, kind)
        # The whole-image reference, once per image: preprocess_reference itself for one mode (in turn), the same
        # definition cut by hand for the others (a full decode and alignment per mode would triple the cost).
        reference_mode = COVERAGES[index % len(COVERAGES)]
        reference = preprocess_reference(data, coverage=reference_mode)
        aligned = align_format(decode_rgb(data))
        assert np.array_equal(reference.pixels, cut_by_hand(aligned, reference.plan)), case
        for coverage in COVERAGES:
            fast = _jpeg_fast(data, DEFAULT_LIMITS, coverage)
            assert fast is not None, (coverage, case)  # the fast path really ran
            want = plan_tiles(aligned.shape[1], aligned.shape[0], coverage)
            assert fast.plan == want, (coverage, case)
            assert np.array_equal(fast.pixels, cut_by_hand(aligned, want)), (coverage, case)
    assert len(truncations) >= 10


def test_fast_path_declines_what_it_cannot_prove() -> None:
    data = encode(Image.fromarray(photo(np.random.default_rng(4), 700, 900)), "JPEG", quality=90)
    assert _jpeg_fast(data, DEFAULT_LIMITS, "centre") is not None
    trailer = data + b"camera trailer after EOI"
    assert _jpeg_fast(trailer, DEFAULT_LIMITS, "centre") is None
    for coverage in COVERAGES:
        assert_same_tiles(preprocess(trailer, coverage=coverage), preprocess_reference(data, coverage=coverage))


@pytest.mark.parametrize("fmt", ["PNG", "WEBP", "BMP"])
def test_other_formats_fast_equals_reference(fmt: str) -> None:
    rng = np.random.default_rng(6)
    for width, height in ((530, 517), (1000, 513), (300, 700), (1700, 1100), (64, 90)):
        data = encode(
            Image.fromarray(photo(rng, width, height)),
            fmt,
            **({"lossless": True, "method": 0} if fmt == "WEBP" else {}),
        )
        for coverage in COVERAGES:
            assert_same_tiles(preprocess_fast(data, coverage=coverage), preprocess_reference(data, coverage=coverage))


@pytest.mark.parametrize("orientation", range(1, 9))
def test_png_orientation_fast_equals_reference(orientation: int) -> None:
    """Non-JPEG inputs with an EXIF orientation: tiles are cut from the upright image on both paths."""
    img = Image.fromarray(photo(np.random.default_rng(orientation), 1200, 700))
    data = with_orientation(img, orientation, "PNG")
    upright = (700, 1200) if orientation >= 5 else (1200, 700)
    for coverage in COVERAGES:
        tiles = preprocess(data, coverage=coverage)
        assert (tiles.plan.width, tiles.plan.height) == upright
        assert_same_tiles(tiles, preprocess_reference(data, coverage=coverage), (orientation, coverage))


def test_prepare_rgb_matches_preprocess() -> None:
    data = encode(Image.fromarray(photo(np.random.default_rng(7), 1300, 900)), "JPEG", quality=90)
    rgb = decode_rgb(data)
    for coverage in COVERAGES:
        tiles = preprocess(data, coverage=coverage)
        assert_same_tiles(prepare_rgb(rgb, coverage), tiles, coverage)
        assert np.array_equal(cut_by_hand(align_format(rgb), plan_tiles(1300, 900, coverage)), tiles.pixels)
    assert np.array_equal(to_chw(rgb), rgb.transpose(2, 0, 1)) and to_chw(rgb).flags.c_contiguous


def test_thread_safe_and_deterministic() -> None:
    rng = np.random.default_rng(8)
    blobs = [encode(Image.fromarray(photo(rng, 700 + 60 * i, 640)), "JPEG", quality=90) for i in range(6)]
    sequential = [preprocess(b) for b in blobs]
    with ThreadPoolExecutor(3) as pool:
        parallel = list(pool.map(preprocess, blobs * 2))
    for a, b in zip(sequential * 2, parallel, strict=True):
        assert_same_tiles(a, b)


@pytest.mark.parametrize(
    "options", [{}, {"optimize": True}, {"progressive": True, "optimize": True}], ids=["plain", "optimized", "progr"]
)
def test_a_header_that_declares_more_than_the_data_holds_is_truncated(options: dict[str, object]) -> None:
    """Every 8x8 block costs at least a bit: a frame header patched to a far larger size (which libjpeg would fill
    with grey, silently) is ``truncated``; the smallest honest JPEGs (uniform, optimised, progressive) are not."""
    uniform = encode(Image.new("RGB", (2048, 1536), (128, 128, 128)), "JPEG", **options)
    assert preprocess(uniform).pixels.shape == (5, 3, 512, 512)  # about 2 bits per block: above the bound
    data = bytearray(encode(Image.new("RGB", (64, 48), (200, 40, 40)), "JPEG", **options))
    offset, _, _ = _fast_jpeg.frame_header(bytes(data))  # type: ignore[misc]
    data[offset : offset + 4] = struct.pack(">HH", 1300, 60000)
    with pytest.raises(ImageRejected) as rejected:
        preprocess(bytes(data))
    assert rejected.value.reason == "truncated" and "60000x1300" in rejected.value.detail
    with pytest.raises(ImageRejected):
        decode_rgb(bytes(data))  # the reference path too
