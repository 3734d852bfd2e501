"""The one image preprocessing contract (v2): encoded bytes -> the tiles the model sees, uint8 RGB, CHW.

Training, evaluation, export parity tests and serving all call this module, so that a model never sees pixels
prepared differently from those it was trained on. The reference definition is :func:`preprocess_reference`:

    decode_rgb -> [too-small below tiling.MIN_SIDE] -> align_format (JPEG q96 round trip) -> the tiles of
    tiling.plan_tiles(width, height, coverage) -> (N, 3, tile_height, tile_width)

*No resampling.* Pixels reach the model at their own resolution: large images are tiled, small ones run whole
(cut to the encoder's stride), and nothing is ever upsized or downsized (:mod:`gamma.tiling` says why).

*Format alignment* re-encodes every image as a JPEG at quality 96 before cutting tiles. The GAMMA paper applies
this to its PNG-stored generated training images, so that the lossless format of one class is not a shortcut
(real photos arrive as JPEGs). The contract applies it to every input, at training and serving alike: a PNG then
cannot look different from a JPEG of the same pixels, and the model sees the same kind of pixels it was trained
on whatever the upload's format. :func:`preprocess` returns exactly the same bytes faster: it round-trips only an
MCU-aligned window around the tiles, and for JPEGs it decodes the source only down to the rows that window needs
(see :mod:`gamma._fast_jpeg` for why that is bit-identical; the unit tests check it). Everything uses Pillow's
bundled libjpeg-turbo, so reference and fast path share one codec.

Untrusted input only ever raises :class:`ImageRejected` (a ``MemoryError`` of the host still propagates).
"""

from __future__ import annotations

import functools
import io
import logging
import re
import struct
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
from PIL import Image, UnidentifiedImageError

from gamma import _fast_jpeg, tiling

__all__ = [
    "DEFAULT_LIMITS", "JPEG_QUALITY", "JPEG_SUBSAMPLING", "REJECTION_REASONS", "ImageRejected", "PreprocessLimits",
    "Tiles", "align_format", "center_crop", "cut_tiles", "decode_rgb", "heif_available", "prepare_rgb", "preprocess",
    "preprocess_fast", "preprocess_reference", "random_crop", "to_chw", "warn_if_no_heif",
]  # fmt: skip

JPEG_QUALITY = 96
# 4:2:0 is what Pillow/libjpeg pick for a plain ``save(quality=96)`` (the paper's alignment) and what camera
# JPEGs use; 4:4:4 would keep chroma detail that most real uploads never had.
JPEG_SUBSAMPLING = "4:2:0"
ALIGN_MCU = 16  # MCU size at 4:2:0: the grid the fast path's window must follow
JPEG_MAX_SIDE = 65_500  # libjpeg cannot encode a larger side, so format alignment cannot either

REJECTION_REASONS = (
    "empty",  # zero bytes
    "too-many-bytes",  # over PreprocessLimits.max_bytes
    "too-many-pixels",  # declared size over PreprocessLimits.max_pixels (checked before decoding)
    "too-small",  # a side under tiling.MIN_SIDE (zero-sized included): too few pixels to judge
    "extreme-aspect-ratio",  # a side over JPEG's 65,500, which format alignment cannot encode
    "truncated",  # the file ends early
    "undecodable",  # corrupt data, or not an image at all
    "unsupported-format",  # an image format (or pixel mode) this contract does not accept
)

_BASE_FORMATS = ("JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF")  # JPEG includes MPO (camera multi-picture)
_SIGNATURES = (
    (b"\xff\xd8\xff", "JPEG"),
    (b"\x89PNG\r\n\x1a\n", "PNG"),
    (b"GIF87a", "GIF"),
    (b"GIF89a", "GIF"),
    (b"BM", "BMP"),
    (b"II*\x00", "TIFF"),
    (b"MM\x00*", "TIFF"),
    (b"%PDF", "PDF"),
)
_HEIF_BRANDS = {b"heic", b"heix", b"hevc", b"hevx", b"heim", b"heis", b"mif1", b"msf1"}


class ImageRejected(ValueError):
    """The bytes are not an image this contract accepts; ``reason`` is a stable code from REJECTION_REASONS."""

    def __init__(self, reason: str, detail: str) -> None:
        if reason not in REJECTION_REASONS:
            raise ValueError(f"unknown rejection reason {reason!r}")
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail

    def __reduce__(self) -> tuple[type[ImageRejected], tuple[str, str]]:  # picklable across processes
        return type(self), (self.reason, self.detail)


@dataclass(frozen=True)
class PreprocessLimits:
    """Resource limits checked before any pixel is decoded.

    80 MP covers every camera sensor in use while keeping the worst case (RGBA decode, conversions and a JPEG
    round trip) near 1 GB; it stays below Pillow's own bomb threshold (89 MP warning, 179 MP error), which is
    left untouched as an outer bound: a PIL bomb error or warning is reported as ``too-many-pixels``.
    """

    max_pixels: int = 80_000_000
    max_bytes: int = 50 * 2**20


DEFAULT_LIMITS = PreprocessLimits()


@functools.cache
def _accepted_formats() -> tuple[str, ...]:
    """Pillow format ids we open; anything else is never parsed (Image.open(formats=...)). HEIF if pillow-heif."""
    Image.init()
    formats = list(_BASE_FORMATS) + [f for f in ("AVIF",) if f in Image.OPEN]
    try:
        import pillow_heif

        pillow_heif.register_heif_opener()  # libheif applies HEIF rotations and resets the EXIF orientation
        formats.append("HEIF")
    except (ImportError, OSError):
        pass
    return tuple(formats)


HEIF_MISSING = (
    "pillow-heif cannot be imported: HEIF/HEIC images (iPhone photos) will be recorded unsupported-format, "
    "not judged (pip install pillow-heif)"
)
_heif_warned = False


def heif_available() -> bool:
    """Whether HEIF/HEIC is decoded here (pillow-heif importable and registered with Pillow)."""
    return "HEIF" in _accepted_formats()


def warn_if_no_heif(stderr: bool = False) -> bool:
    """At start-up: :func:`heif_available`, and if not, say so once per process (a logging warning; with
    ``stderr``, as a CLI does, one ``warning:`` line on stderr, logged too if logging is configured)."""
    global _heif_warned
    if heif_available():
        return True
    if not _heif_warned:
        _heif_warned = True
        log = logging.getLogger(__name__)
        if stderr:
            print(f"warning: {HEIF_MISSING}", file=sys.stderr, flush=True)
        if not stderr or log.hasHandlers():  # no handler: logging's last resort would print the line again
            log.warning(HEIF_MISSING)
    return False


def _sniff(data: bytes) -> str | None:
    """A format name from magic bytes, used only to explain failures."""
    for magic, name in _SIGNATURES:
        if data.startswith(magic):
            return name
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "WEBP"
    if data[4:8] == b"ftyp":
        return "AVIF" if data[8:12] in (b"avif", b"avis") else "HEIF" if data[8:12] in _HEIF_BRANDS else None
    head = data[:4096].lstrip(b"\xef\xbb\xbf \t\r\n").lower()
    return "SVG" if head.startswith(b"<") and b"<svg" in head else None


def _looks_truncated(data: bytes, fmt: str | None) -> bool:
    """True when the container itself says more bytes should follow (only asked after a decode failure)."""
    if fmt == "JPEG":
        try:
            _fast_jpeg.frame_header(data)
        except EOFError:
            return True
        return not data.rstrip(b"\x00").endswith(b"\xff\xd9")
    if fmt == "PNG":
        return len(data) < 33 or b"IEND" not in data[-32:]
    if fmt == "WEBP":
        return int.from_bytes(data[4:8], "little") + 8 > len(data)
    if fmt == "GIF":
        return len(data) < 13 or not data.rstrip(b"\x00").endswith(b";")
    if fmt == "BMP":
        return len(data) < 26 or int.from_bytes(data[2:6], "little") > len(data)
    return False


def _zero_sized(data: bytes, fmt: str | None) -> bool:
    if fmt == "PNG" and len(data) >= 24:
        return int.from_bytes(data[16:20], "big") == 0 or int.from_bytes(data[20:24], "big") == 0
    if fmt == "JPEG":
        try:
            header = _fast_jpeg.frame_header(data)
        except EOFError:
            return False
        return header is not None and 0 in header[1:]
    return False


# Huffman-coded DCT frames (baseline, extended, progressive): every 8x8 block of every component codes its DC
# coefficient with a Huffman code of at least one bit, so the entropy-coded data holds at least a bit per block.
_HUFFMAN_DCT_SOF = (0xC0, 0xC1, 0xC2)
_STANDALONE = frozenset({0x01, *range(0xD0, 0xD8)})


def _ceil(a: int, b: int) -> int:
    return -(-a // b)


def _jpeg_too_short(data: bytes) -> str | None:
    """Why a JPEG cannot hold the image its frame header declares, or None.

    A header patched (or damaged) to declare a far larger image than the data codes decodes without an error:
    libjpeg only warns, and fills what is missing with mid grey, which the model would then judge. Every 8x8
    block costs at least one bit in any Huffman-coded DCT JPEG, so fewer bits after the first scan header than
    the frame has blocks means data is missing. Header parsing only, before anything is decoded; arithmetic
    coded and lossless frames are not checked (their lower bound is not a bit per block).
    """
    size, i, frame = len(data), 2, None
    while i + 4 <= size and data[i] == 0xFF:
        marker = data[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
            continue
        if marker in _STANDALONE:
            i += 2
            continue
        if marker == 0xD9:
            return None
        length = int.from_bytes(data[i + 2 : i + 4], "big")
        if marker in _HUFFMAN_DCT_SOF and frame is None and i + 10 <= size:
            height, width, count = *struct.unpack(">HH", data[i + 5 : i + 9]), data[i + 9]
            factors = [(data[j] >> 4, data[j] & 15) for j in range(i + 11, min(i + 11 + 3 * count, size), 3)]
            frame = width, height, factors
        elif marker in (0xC3, *range(0xC5, 0xD0)) and marker != 0xCC and frame is None:
            return None  # lossless, hierarchical or arithmetic coded: not checked
        if marker == 0xDA:
            if frame is None:
                return None
            width, height, factors = frame
            if not width or not height or not factors or any(h == 0 or v == 0 for h, v in factors):
                return None
            h_max, v_max = max(h for h, _ in factors), max(v for _, v in factors)
            blocks = sum(_ceil(_ceil(width * h, h_max), 8) * _ceil(_ceil(height * v, v_max), 8) for h, v in factors)
            coded = max(size - (i + 2 + length), 0)
            if coded * 8 < blocks:
                return f"{width}x{height} declared ({blocks} blocks) but only {coded} bytes of image data"
            return None
        i += 2 + length
    return None


def _tiff_layout(data: bytes) -> tuple[str, bool] | None:
    """(samples per pixel x bits and their kind, whether floating point) from a TIFF's first IFD, or None."""
    try:
        order = "<" if data[:2] == b"II" else ">"
        (offset,) = struct.unpack(order + "I", data[4:8])
        (count,) = struct.unpack(order + "H", data[offset : offset + 2])
        tags: dict[int, int] = {}  # the first value of each SHORT/LONG tag
        for n in range(min(count, 512)):
            entry = offset + 2 + 12 * n
            tag, kind, values = struct.unpack(order + "HHI", data[entry : entry + 8])
            if kind not in (3, 4):
                continue
            width = 2 if kind == 3 else 4
            at = entry + 8 if values * width <= 4 else struct.unpack(order + "I", data[entry + 8 : entry + 12])[0]
            tags[tag] = struct.unpack(order + ("H" if kind == 3 else "I"), data[at : at + width])[0]
    except (struct.error, ValueError):
        return None
    samples, bits, sample_format = tags.get(277, 1), tags.get(258, 1), tags.get(339, 1)
    kind = {1: "unsigned integer", 2: "signed integer", 3: "floating-point"}.get(sample_format, "undefined")
    return f"{samples} x {bits}-bit {kind} sample(s) per pixel", sample_format == 3


def _message(exc: Exception) -> str:
    """``Type: message`` without object reprs (``<_io.BytesIO object at 0x...>`` says nothing to anyone)."""
    text = re.sub(r"\s*<[^<>]* object at 0x[0-9a-fA-F]+>", "", str(exc)).strip()
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _diagnose(data: bytes, exc: Exception) -> ImageRejected:
    """Turns any decoder failure into the most specific rejection reason."""
    fmt, message = _sniff(data), _message(exc)
    if fmt in ("SVG", "PDF", "AVIF", "HEIF"):  # AVIF/HEIF only reach here when no plugin can decode them
        return ImageRejected("unsupported-format", f"{fmt} is not accepted")
    if "truncat" in str(exc).lower() or _looks_truncated(data, fmt):
        return ImageRejected("truncated", f"{fmt or 'image'} data ends early ({message})")
    if _zero_sized(data, fmt):
        return ImageRejected("too-small", f"{fmt} declares a zero-sized image")
    if isinstance(exc, UnidentifiedImageError) and fmt is None:
        try:  # name a real but unaccepted format (PSD, ICO, JPEG 2000...): header parsing only, no decoding
            with Image.open(io.BytesIO(data)) as im:
                return ImageRejected("unsupported-format", f"{im.format} is not accepted")
        except Exception:
            return ImageRejected("undecodable", "not an image in a known format")
    if isinstance(exc, UnidentifiedImageError) and fmt == "TIFF":
        layout = _tiff_layout(data)
        if layout is not None and layout[1]:
            return ImageRejected(
                "unsupported-format", f"TIFF of {layout[0]}: this floating-point layout is not accepted"
            )
        what = f" ({layout[0]})" if layout is not None else ""
        return ImageRejected("undecodable", f"a TIFF{what} that the decoder cannot open: corrupt or an unusual layout")
    if isinstance(exc, UnidentifiedImageError):
        return ImageRejected("undecodable", f"{fmt or 'image'} header the decoder cannot parse")
    return ImageRejected("undecodable", message)


@contextmanager
def _rejections(data: bytes) -> Iterator[None]:
    """Maps everything a decoder may raise to ImageRejected, so untrusted bytes raise nothing else."""
    try:
        yield
    except (ImageRejected, MemoryError):
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageRejected("too-many-pixels", str(exc)) from exc
    except Exception as exc:
        raise _diagnose(data, exc) from exc


def _open(data: bytes, limits: PreprocessLimits) -> Image.Image:
    """Header-only open with the byte and pixel limits enforced before any pixel is decoded."""
    if not data:
        raise ImageRejected("empty", "zero bytes")
    if len(data) > limits.max_bytes:
        raise ImageRejected("too-many-bytes", f"{len(data)} bytes > limit {limits.max_bytes}")
    im = Image.open(io.BytesIO(data), formats=_accepted_formats())  # first frame of animations and pages
    _check_size(*im.size, limits)
    if im.format in ("JPEG", "MPO") and (short := _jpeg_too_short(data)) is not None:
        raise ImageRejected("truncated", f"JPEG data ends early: {short}")
    return im


def _check_size(width: int, height: int, limits: PreprocessLimits) -> None:
    if width < 1 or height < 1:
        raise ImageRejected("too-small", f"{width}x{height} image")
    if width * height > limits.max_pixels:
        raise ImageRejected("too-many-pixels", f"{width}x{height} > limit {limits.max_pixels} pixels")


def _orientation(im: Image.Image) -> int:
    """The EXIF orientation as exif_transpose reads it; an unreadable EXIF block counts as upright."""
    try:
        value = im.getexif().get(0x0112, 1)
    except Exception:
        return 1
    return value if value in _fast_jpeg.TRANSPOSITIONS else 1


def _to_rgb(im: Image.Image) -> Image.Image:
    """Any Pillow mode -> 8-bit RGB; transparency composited on white, 16-bit scaled (not clipped) to 8-bit."""
    mode = im.mode
    if mode == "RGB":
        return im
    if mode in ("RGBA", "LA", "PA", "RGBa", "La") or (mode == "P" and "transparency" in im.info):
        rgba = im.convert("RGBA")
        white = Image.new("RGB", im.size, (255, 255, 255))
        white.paste(rgba.convert("RGB"), mask=rgba.getchannel("A"))  # exact (c*a + 255*(255-a)) / 255
        return white
    if mode == "I" or mode.startswith("I;16"):  # 16-bit data (PNG/TIFF); round(v * 255 / 65535)
        wide = np.clip(np.asarray(im).astype(np.int64), 0, 65535)
        return Image.fromarray(((wide * 255 + 32767) // 65535).astype(np.uint8)).convert("RGB")
    if mode == "F":  # float images: [0, 1] if that is their range, else Pillow's own 0..255 scale
        values = np.nan_to_num(np.asarray(im, dtype=np.float64), nan=0.0, posinf=255.0, neginf=0.0)
        scale = 255.0 if values.size and values.max() <= 1.0 else 1.0
        return Image.fromarray(np.clip(np.rint(values * scale), 0, 255).astype(np.uint8)).convert("RGB")
    try:
        return im.convert("RGB")  # L, 1, P, CMYK (no ICC transform), YCbCr, RGBX, ...
    except ValueError as exc:
        raise ImageRejected("unsupported-format", f"pixel mode {mode}") from exc


def _decode(data: bytes, limits: PreprocessLimits) -> Image.Image:
    with _rejections(data):
        im = _open(data, limits)
        im.load()
        _check_size(*im.size, limits)  # a frame may be larger than the header said (GIF)
        orientation = _orientation(im)
        rgb = _to_rgb(im)
        return rgb.transpose(_fast_jpeg.TRANSPOSITIONS[orientation]) if orientation != 1 else rgb


def decode_rgb(data: bytes, limits: PreprocessLimits = DEFAULT_LIMITS) -> np.ndarray:
    """Encoded bytes -> upright (H, W, 3) uint8 RGB. Raises ImageRejected, never anything else."""
    return np.array(_decode(data, limits))


def _check_rgb(rgb: np.ndarray) -> None:
    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
        raise ValueError(f"expected (H, W, 3) uint8, got {rgb.shape} {rgb.dtype}")
    if rgb.shape[0] == 0 or rgb.shape[1] == 0:
        raise ImageRejected("too-small", f"{rgb.shape[1]}x{rgb.shape[0]} image")


def _jpeg_roundtrip(img: Image.Image, quality: int = JPEG_QUALITY) -> Image.Image:
    """Encode and decode with every setting that can change pixels pinned (Pillow's islow DCT both ways)."""
    buffer = io.BytesIO()
    settings = {"quality": quality, "subsampling": JPEG_SUBSAMPLING, "qtables": None, "smooth": 0}
    settings |= {"optimize": False, "progressive": False, "keep_rgb": False}
    img.save(buffer, "JPEG", restart_marker_blocks=0, restart_marker_rows=0, **settings)
    decoded = Image.open(buffer, formats=("JPEG",))
    decoded.load()  # fancy upsampling, no draft/scaling
    return decoded


def align_format(rgb: np.ndarray, quality: int = JPEG_QUALITY) -> np.ndarray:
    """The paper's format alignment: a JPEG round trip (q96, 4:2:0, baseline) of the whole image."""
    _check_rgb(rgb)
    return np.array(_jpeg_roundtrip(Image.fromarray(rgb), quality))


def _check_tileable(width: int, height: int) -> None:
    """The contract's size rules on an upright image: at least MIN_SIDE on each side, at most JPEG's limit."""
    if min(width, height) < tiling.MIN_SIDE:
        raise ImageRejected("too-small", f"{width}x{height} image: sides under {tiling.MIN_SIDE} px are not judged")
    if max(width, height) > JPEG_MAX_SIDE:
        raise ImageRejected("extreme-aspect-ratio", f"{width}x{height}: a side over {JPEG_MAX_SIDE} cannot be aligned")


def center_crop(rgb: np.ndarray, size: int) -> np.ndarray:
    """The centre ``size`` x ``size`` (floor offsets); ValueError if the image is smaller (never padded)."""
    height, width = rgb.shape[:2]
    if width < size or height < size:
        raise ValueError(f"{width}x{height} image is smaller than the {size}x{size} crop")
    left, top = (width - size) // 2, (height - size) // 2  # floor: an odd margin leaves the extra pixel after
    return rgb[top : top + size, left : left + size]


def random_crop(rgb: np.ndarray, size: int, rng: np.random.Generator, padding: int = 1) -> np.ndarray:
    """Training's RandomCrop(size, padding): zero-pad every side, then a uniform random ``size`` crop."""
    padded = np.pad(rgb, ((padding, padding), (padding, padding), (0, 0)))
    top = int(rng.integers(0, padded.shape[0] - size + 1))
    left = int(rng.integers(0, padded.shape[1] - size + 1))
    return padded[top : top + size, left : left + size].copy()


def to_chw(rgb: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(rgb.transpose(2, 0, 1))


@dataclass
class Tiles:
    """What the model sees of one image: ``pixels`` uint8 (N, 3, tile_height, tile_width), the plan's tiles in
    order, cut from the format-aligned image at its own resolution."""

    pixels: np.ndarray
    plan: tiling.TilePlan

    def __len__(self) -> int:
        return len(self.pixels)


def _bounding_box(boxes: tuple[_fast_jpeg.Box, ...]) -> _fast_jpeg.Box:
    return min(b[0] for b in boxes), min(b[1] for b in boxes), max(b[2] for b in boxes), max(b[3] for b in boxes)


def _chw_tiles(regions: list[np.ndarray], plan: tiling.TilePlan) -> Tiles:
    """(h, w, 3) regions -> Tiles (N, 3, h, w), written straight into one array (one copy, not stack + transpose)."""
    pixels = np.empty((len(regions), 3, plan.tile_height, plan.tile_width), dtype=np.uint8)
    for index, region in enumerate(regions):
        pixels[index] = region.transpose(2, 0, 1)
    return Tiles(pixels, plan)


def cut_tiles(aligned: np.ndarray, plan: tiling.TilePlan, origin: tuple[int, int] = (0, 0)) -> Tiles:
    """The plan's tiles from an aligned region whose top-left is ``origin`` in image coordinates."""
    x0, y0 = origin
    return _chw_tiles(
        [aligned[top - y0 : bottom - y0, left - x0 : right - x0] for left, top, right, bottom in plan.boxes], plan
    )


def _aligned_crop(img: Image.Image, box: _fast_jpeg.Box) -> np.ndarray:
    """align_format(img) cropped to ``box``, computed by round-tripping only an MCU-aligned window around it."""
    window = _fast_jpeg.align_window(*img.size, box, mcu=ALIGN_MCU, margin=ALIGN_MCU)
    aligned = _jpeg_roundtrip(img.crop(window) if window != (0, 0, *img.size) else img)
    left, top = box[0] - window[0], box[1] - window[1]
    return np.asarray(aligned.crop((left, top, left + box[2] - box[0], top + box[3] - box[1])))


def _area(box: _fast_jpeg.Box) -> int:
    return (box[2] - box[0]) * (box[3] - box[1])


def _aligned_tiles(img: Image.Image, plan: tiling.TilePlan, origin: tuple[int, int] = (0, 0)) -> Tiles:
    """The plan's tiles of align_format(whole image), from ``img``: the whole image, or a region of it whose
    top-left ``origin`` is on the MCU grid and which holds every tile's aligned window (the fast JPEG path's).

    One round trip of the tiles' bounding window, or one per tile where their windows add up to fewer pixels (the
    five corners of a 12 MP photo: 5 x 0.3 MP instead of 12 MP); bit-identical either way, since each window
    is on the MCU grid with a margin (:mod:`gamma._fast_jpeg`)."""
    x0, y0 = origin
    boxes = [(left - x0, top - y0, right - x0, bottom - y0) for left, top, right, bottom in plan.boxes]
    window = _fast_jpeg.align_window(*img.size, _bounding_box(tuple(boxes)), mcu=ALIGN_MCU, margin=ALIGN_MCU)
    per_tile = sum(_area(_fast_jpeg.align_window(*img.size, b, mcu=ALIGN_MCU, margin=ALIGN_MCU)) for b in boxes)
    if len(boxes) > 1 and per_tile < _area(window):
        return _chw_tiles([_aligned_crop(img, box) for box in boxes], plan)
    box = _bounding_box(tuple(boxes))
    return cut_tiles(_aligned_crop(img, box), plan, (x0 + box[0], y0 + box[1]))


def _prepare(img: Image.Image, coverage: tiling.Coverage | str) -> Tiles:
    _check_tileable(*img.size)
    return _aligned_tiles(img, tiling.plan_tiles(*img.size, coverage))


def prepare_rgb(rgb: np.ndarray, coverage: tiling.Coverage | str = tiling.DEFAULT_COVERAGE) -> Tiles:
    """The contract from already-decoded upright RGB: align -> the coverage's tiles (no resampling)."""
    _check_rgb(rgb)
    return _prepare(Image.fromarray(rgb), coverage)


def preprocess_reference(
    data: bytes, limits: PreprocessLimits = DEFAULT_LIMITS, coverage: tiling.Coverage | str = tiling.DEFAULT_COVERAGE
) -> Tiles:
    """The definition, step by step on whole images (slow; tests and benchmarks compare against it)."""
    rgb = decode_rgb(data, limits)
    _check_tileable(rgb.shape[1], rgb.shape[0])
    return cut_tiles(align_format(rgb), tiling.plan_tiles(rgb.shape[1], rgb.shape[0], coverage))


def _jpeg_fast(data: bytes, limits: PreprocessLimits, coverage: tiling.Coverage | str) -> Tiles | None:
    """JPEGs: decode only down to the rows the tiles' window needs. None where that does not apply."""
    with _rejections(data):
        im = _open(data, limits)
        header = _fast_jpeg.frame_header(data) if im.format in ("JPEG", "MPO") else None
        # A stream that does not end with EOI may be truncated below the rows decoded here, which only a full
        # decode notices: those (and trailers after EOI) take the reference path, which decides.
        if header is None or im.mode not in ("L", "RGB", "CMYK") or header[1:] != im.size:
            return None
        if not data.endswith(b"\xff\xd9"):
            return None
        orientation, (width, height) = _orientation(im), im.size
        upright = (height, width) if orientation >= 5 else (width, height)
        _check_tileable(*upright)
        plan = tiling.plan_tiles(*upright, coverage)
        tiles_box = _bounding_box(plan.boxes)
        window = _fast_jpeg.align_window(*upright, tiles_box, mcu=ALIGN_MCU, margin=ALIGN_MCU)
        box = _fast_jpeg.source_box(window, orientation, width, height)
        mcu_rows = 8 * max(v for _, _, v, _ in im.layer)
        rows = -(-box[3] // mcu_rows) * mcu_rows + 2 * mcu_rows
        try:
            if rows < height:
                im = Image.open(io.BytesIO(_fast_jpeg.with_height(data, header[0], rows)), formats=("JPEG",))
            im.load()
        except Exception:
            return None  # the reference path rejects it (or not) with the full decode's verdict
        if im.size != (width, min(rows, height)):
            return None
        region = _to_rgb(im.crop(box))
        if orientation != 1:
            region = region.transpose(_fast_jpeg.TRANSPOSITIONS[orientation])
        return _aligned_tiles(region, plan, window[:2])  # region is the window, already on the MCU grid


def preprocess_fast(
    data: bytes, limits: PreprocessLimits = DEFAULT_LIMITS, coverage: tiling.Coverage | str = tiling.DEFAULT_COVERAGE
) -> Tiles:
    """Bit-identical to preprocess_reference (tested), without round-tripping or decoding more than the tiles need."""
    tiles = _jpeg_fast(data, limits, coverage) if data[:3] == b"\xff\xd8\xff" else None
    return tiles if tiles is not None else _prepare(_decode(data, limits), coverage)


def preprocess(
    data: bytes, limits: PreprocessLimits = DEFAULT_LIMITS, coverage: tiling.Coverage | str = tiling.DEFAULT_COVERAGE
) -> Tiles:
    """Encoded bytes -> the :class:`Tiles` the model sees, per the contract above. Raises only ImageRejected."""
    return preprocess_fast(data, limits, coverage)
