"""Geometry and JPEG-header helpers behind the bit-identical fast path of :mod:`gamma.preprocess`.

Why a crop of a JPEG round trip can be computed from a window of the image, with the same bits:

* the encoder codes every MCU (16x16 pixels at 4:2:0) from that MCU's pixels only: colour conversion and 2x2
  chroma averaging are per pixel / per MCU, the DCT and quantisation are per 8x8 block, and DC prediction and
  Huffman coding are lossless. A window cut on the MCU grid of the full image's origin therefore yields the same
  quantised coefficients for every MCU inside it; partial MCUs at the right/bottom edge are padded by edge
  replication in both cases as long as the window shares that edge.
* the decoder's inverse DCT is per block; "fancy" chroma upsampling reads one neighbouring chroma sample (two
  pixels) in each direction, and that neighbour differs only in the window's outermost MCU ring. A margin of
  one MCU around the crop keeps every output pixel of the crop identical.

The same holds for decoding a *source* JPEG only down to the rows a window needs: libjpeg decodes rows in order,
so declaring a smaller image height in the frame header (SOF) makes it stop early; the last two MCU rows before
that false bottom see edge-replicated upsampling/smoothing context, hence a margin of two MCU rows.
``tests/unit/test_preprocess.py`` checks both claims against the full computation on many random sizes.
"""

from __future__ import annotations

from PIL import Image

Box = tuple[int, int, int, int]  # left, top, right, bottom (PIL convention: right/bottom exclusive)

# EXIF orientation -> the transposition that puts the image upright (what PIL.ImageOps.exif_transpose does).
TRANSPOSITIONS: dict[int, Image.Transpose] = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}

# Start-of-frame markers (baseline, extended, progressive, lossless; Huffman or arithmetic coded).
_SOF_MARKERS = frozenset({0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF})
_STANDALONE_MARKERS = frozenset({0x01, *range(0xD0, 0xD9)})  # TEM, RST0-7, SOI: no length field


def align_window(width: int, height: int, box: Box, mcu: int = 16, margin: int = 16) -> Box:
    """``box`` grown by ``margin`` pixels per side, snapped outward to the ``mcu`` grid, clipped to the image."""
    left, top, right, bottom = box
    return (
        max(0, (left - margin) // mcu * mcu),
        max(0, (top - margin) // mcu * mcu),
        min(width, -(-(right + margin) // mcu) * mcu),
        min(height, -(-(bottom + margin) // mcu) * mcu),
    )


def source_box(box: Box, orientation: int, width: int, height: int) -> Box:
    """The box of the stored (not yet upright) ``width`` x ``height`` image that becomes ``box`` once upright."""
    left, top, right, bottom = box
    w, h = width, height
    return {
        2: (w - right, top, w - left, bottom),
        3: (w - right, h - bottom, w - left, h - top),
        4: (left, h - bottom, right, h - top),
        5: (top, left, bottom, right),
        6: (top, h - right, bottom, h - left),
        7: (w - bottom, h - right, w - top, h - left),
        8: (w - bottom, left, w - top, right),
    }.get(orientation, box)


def frame_header(data: bytes) -> tuple[int, int, int] | None:
    """(offset of the height field, width, height) of the first SOF marker of a JPEG stream.

    None when the bytes are not a plain marker sequence that reaches a SOF before SOS/EOI (junk between
    markers, no SOI): callers then take the slow path. EOFError when the data ends inside the header.
    """
    if not data.startswith(b"\xff\xd8"):
        return None
    size, i = len(data), 2
    while True:
        if i + 2 > size:
            raise EOFError("JPEG ends inside its header")
        if data[i] != 0xFF:
            return None
        while i + 2 < size and data[i + 1] == 0xFF:  # fill bytes
            i += 1
        marker = data[i + 1]
        if marker in _STANDALONE_MARKERS:
            i += 2
            continue
        if marker in (0xD9, 0xDA):
            return None
        if i + 9 > size:
            raise EOFError("JPEG ends inside its header")
        if marker in _SOF_MARKERS:
            return i + 5, int.from_bytes(data[i + 7 : i + 9], "big"), int.from_bytes(data[i + 5 : i + 7], "big")
        i += 2 + int.from_bytes(data[i + 2 : i + 4], "big")


def with_height(data: bytes, height_offset: int, height: int) -> bytes:
    """The same JPEG stream with the frame height field set to ``height`` (decoding then stops at that row)."""
    return data[:height_offset] + height.to_bytes(2, "big") + data[height_offset + 2 :]
