"""Benchmark: gamma.preprocess against the naive Pillow chain, on 12 MP camera-like JPEGs, one core, one run.

    .venv/bin/python bench/preprocess.py [--images N] [--rounds R] [--coverage centre five full]

The naive chain is what the contract says, done the obvious way: decode the whole JPEG, JPEG-encode the whole
image at q96 (4:2:0), decode it, cut the coverage mode's tiles. ``preprocess`` round-trips only an MCU-aligned
window around the tiles and decodes the source only down to the rows that window needs. Both run interleaved in
the same process on the same inputs; the outputs are compared byte for byte (max abs diff must be 0).

The window is the tiles' bounding box, so the saving depends on the mode: ``centre`` (one 512x512 tile in the
middle) skips most of a 12 MP photo (the target, >= 4x, is for it); ``five`` and ``full`` reach the image's
corners, so their window is the whole image and the two chains do the same work (ratio about 1x).
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMEXPR_NUM_THREADS"):
    os.environ[_var] = "1"  # before numpy is imported

import argparse  # noqa: E402
import io  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from collections.abc import Callable  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from gamma.preprocess import JPEG_QUALITY, JPEG_SUBSAMPLING, preprocess  # noqa: E402
from gamma.tiling import Coverage, plan_tiles  # noqa: E402


def camera_jpeg(seed: int, width: int = 4000, height: int = 3000) -> bytes:
    """Photographic-ish content: smooth illumination gradients, textured regions, sensor noise, hard edges."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    base = rng.uniform(60, 190, 3).astype(np.float32)
    img = np.empty((height, width, 3), np.float32)
    for c in range(3):
        fx, fy, phase = rng.uniform(200, 900), rng.uniform(200, 900), rng.uniform(0, 6)
        img[..., c] = base[c] + 50 * np.sin(x / fx + phase) * np.cos(y / fy - phase) + 25 * (x / width - y / height)
    texture = np.sin(x / 3.1 + np.sin(y / 7.3) * 4) * np.cos(y / 2.7) * 12
    img += texture[..., None] * (x > width * rng.uniform(0.3, 0.7))[..., None]  # a textured half (foliage, fabric)
    for _ in range(40):  # objects with hard edges
        x0, y0 = int(rng.integers(0, width - 200)), int(rng.integers(0, height - 200))
        w, h = (int(v) for v in rng.integers(20, 600, 2))
        img[y0 : y0 + h, x0 : x0 + w] = img[y0 : y0 + h, x0 : x0 + w] * 0.4 + rng.uniform(0, 255, 3) * 0.6
    img += rng.normal(0, 4, img.shape).astype(np.float32)  # sensor noise
    buffer = io.BytesIO()
    Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(buffer, "JPEG", quality=90, subsampling="4:2:0")
    return buffer.getvalue()


def naive(data: bytes, coverage: Coverage) -> np.ndarray:
    """Full decode -> full q96 encode -> full decode -> the mode's tiles (N, 3, h, w), all in Pillow/numpy."""
    img = Image.open(io.BytesIO(data)).convert("RGB")
    buffer = io.BytesIO()
    img.save(buffer, "JPEG", quality=JPEG_QUALITY, subsampling=JPEG_SUBSAMPLING, optimize=False, progressive=False)
    aligned = np.asarray(Image.open(buffer))
    boxes = plan_tiles(img.width, img.height, coverage).boxes
    return np.stack([aligned[top:bottom, left:right].transpose(2, 0, 1) for left, top, right, bottom in boxes])


def contract(data: bytes, coverage: Coverage) -> np.ndarray:
    return preprocess(data, coverage=coverage).pixels


def timed(function: Callable[[bytes, Coverage], np.ndarray], data: bytes, coverage: Coverage) -> float:
    start = time.perf_counter()
    function(data, coverage)
    return (time.perf_counter() - start) * 1000


def measure(images: list[bytes], coverage: Coverage, rounds: int) -> bool:
    """One mode: warm-up and identity check, then interleaved timed rounds; prints its table. True if identical."""
    naive_ms: list[list[float]] = [[] for _ in images]
    fast_ms: list[list[float]] = [[] for _ in images]
    max_diff = [0] * len(images)
    tiles = 0
    for index, data in enumerate(images):  # warm-up, and the identity check
        a, b = naive(data, coverage), contract(data, coverage)
        same_shape = a.shape == b.shape
        max_diff[index] = int(np.abs(a.astype(np.int16) - b.astype(np.int16)).max()) if same_shape else 255
        tiles = len(b)
    for round_ in range(rounds):
        for index, data in enumerate(images):
            order = ((naive, naive_ms), (contract, fast_ms))
            for function, store in order if round_ % 2 == 0 else order[::-1]:  # interleaved, alternating order
                store[index].append(timed(function, data, coverage))

    print(f"\ncoverage {coverage.value}: {tiles} tile(s) of 512x512 per image")
    print(f"{'image':>5} {'MB':>5} {'naive ms':>9} {'preprocess ms':>14} {'ratio':>6} {'max|diff|':>9}")
    for index, data in enumerate(images):
        n, f = statistics.median(naive_ms[index]), statistics.median(fast_ms[index])
        print(f"{index:>5} {len(data) / 2**20:>5.2f} {n:>9.1f} {f:>14.1f} {n / f:>5.2f}x {max_diff[index]:>9}")
    n_all = statistics.median(ms for row in naive_ms for ms in row)
    f_all = statistics.median(ms for row in fast_ms for ms in row)
    identical = max(max_diff) == 0
    print(f"{'all':>5} {'':>5} {n_all:>9.1f} {f_all:>14.1f} {n_all / f_all:>5.2f}x {max(max_diff):>9}")
    target = " (target >= 4x)" if coverage is Coverage.CENTRE else ""
    verdict = "identical" if identical else "DIFFERENT"
    print(f"ratio naive/preprocess (medians), {coverage.value}: {n_all / f_all:.2f}x{target}; outputs {verdict}")
    return identical


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=6, help="number of 4000x3000 JPEGs (default 6)")
    parser.add_argument("--rounds", type=int, default=5, help="timed passes over all images (default 5)")
    parser.add_argument(
        "--coverage", nargs="+", default=[c.value for c in Coverage], choices=[c.value for c in Coverage]
    )
    args = parser.parse_args()

    core = min(os.sched_getaffinity(0))
    os.sched_setaffinity(0, {core})
    print(f"pinned to CPU {core}; Pillow {Image.__version__}; generating {args.images} 4000x3000 q90 4:2:0 JPEGs...")
    images = [camera_jpeg(seed) for seed in range(args.images)]
    identical = [measure(images, Coverage(mode), args.rounds) for mode in args.coverage]
    sys.exit(0 if all(identical) else 1)


if __name__ == "__main__":
    main()
