"""Cost of each coverage mode (centre | five | full) per image and per megapixel, with the shipped model in process.

    .venv/bin/python bench/coverage.py [--images N] [--rounds R] [--sizes 640x480 1600x1200 4000x3000]
                                       [--photos DIR] [--threads 2] [--model gamma-local-effl0]

Contract v2 (``gamma/tiling.py``) looks at ``centre`` (one 512x512 tile: what contract v1's single centre crop
cost, without its upsizing), ``five`` (the centre and the four corners; the default) or ``full`` (the whole grid)
of every image. This bench measures what that choice costs on a mix of photo sizes: ``--images`` camera-like JPEGs
of each of ``--sizes`` (default 0.3, 1.9 and 12 MP), made here (smooth illumination, textured regions, hard edges,
sensor noise, q90 4:2:0), or the images of ``--photos DIR`` instead.

Each mode classifies the same images end to end through :class:`gamma.inference.Detector` (preprocessing,
batched inference of every tile, aggregation, stitched masks) with the checkpoint loaded once, torch limited to
``--threads`` threads. Images of one size go through one ``classify_bytes`` call, as a worker's chunk does, so tiles
of several images share batches. Modes are interleaved within each round (in a rotating order) so that drifting
background load hits them alike, and the medians over rounds are reported with CPU time (steadier than wall clock
on a shared machine). Every number is measured in the run that prints it; the ratio is each mode's time per image
over ``centre``'s.
"""

from __future__ import annotations

import argparse
import io
import os
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from gamma.inference import Detector, TorchBackend
from gamma.preprocess import decode_rgb
from gamma.tiling import DEFAULT_COVERAGE, Coverage
from gamma.weights import DEFAULT_MODEL

DEFAULT_SIZES = ("640x480", "1600x1200", "4000x3000")  # 0.3 MP (web), 1.9 MP (phone, resized), 12 MP (camera)
PHOTO_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".heic", ".heif", ".tif", ".tiff", ".bmp"}


def camera_jpeg(seed: int, width: int, height: int) -> bytes:
    """Photographic-ish content at a given size, so that decoding and alignment cost what real uploads cost."""
    rng = np.random.default_rng(seed)
    y = np.arange(height, dtype=np.float32)[:, None]
    x = np.arange(width, dtype=np.float32)[None, :]
    img = np.empty((height, width, 3), np.float32)
    for c, base in enumerate(rng.uniform(60, 190, 3)):
        fx, fy, phase = rng.uniform(200, 900), rng.uniform(200, 900), rng.uniform(0, 6)
        img[..., c] = base + 50 * np.sin(x / fx + phase) * np.cos(y / fy - phase) + 25 * (x / width - y / height)
    texture = np.sin(x / 3.1 + np.sin(y / 7.3) * 4) * np.cos(y / 2.7) * 12
    img += (texture * (x > width * rng.uniform(0.3, 0.7)))[..., None]  # a textured part (foliage, fabric)
    for _ in range(max(4, width * height // 300_000)):  # objects with hard edges
        x0, y0 = int(rng.integers(0, width - width // 8)), int(rng.integers(0, height - height // 8))
        w, h = (int(v) for v in rng.integers(width // 40 + 1, width // 6 + 2, 2))
        img[y0 : y0 + h, x0 : x0 + w] = img[y0 : y0 + h, x0 : x0 + w] * 0.4 + rng.uniform(0, 255, 3) * 0.6
    img += rng.standard_normal(img.shape, dtype=np.float32) * 4  # sensor noise
    buffer = io.BytesIO()
    Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(buffer, "JPEG", quality=90, subsampling="4:2:0")
    return buffer.getvalue()


@dataclass
class Group:
    """Images of one size (one classify_bytes call per mode and round)."""

    label: str
    items: list[tuple[str, bytes]]
    megapixels: float  # all images of the group together
    tiles: dict[Coverage, int] = field(default_factory=dict)  # per image, by mode
    wall_ms: dict[Coverage, list[float]] = field(default_factory=dict)  # per round, all images of the group
    cpu_ms: dict[Coverage, list[float]] = field(default_factory=dict)


def generated_groups(sizes: list[str], images: int) -> list[Group]:
    groups = []
    for index, size in enumerate(sizes):
        width, height = (int(v) for v in size.lower().split("x"))
        items = [(f"{size}-{i}", camera_jpeg(1000 * index + i, width, height)) for i in range(images)]
        groups.append(Group(f"{width}x{height} ({width * height / 1e6:.1f} MP)", items, images * width * height / 1e6))
    return groups


def photo_groups(folder: Path, images: int) -> list[Group]:
    """Real photos, grouped by size (at most ``images`` per size)."""
    by_size: dict[tuple[int, int], list[tuple[str, bytes]]] = {}
    for path in sorted(p for p in folder.rglob("*") if p.suffix.lower() in PHOTO_SUFFIXES):
        data = path.read_bytes()
        height, width = decode_rgb(data).shape[:2]
        if len(by_size.setdefault((width, height), [])) < images:
            by_size[(width, height)].append((path.name, data))
    return [
        Group(f"{w}x{h} ({w * h / 1e6:.1f} MP)", items, len(items) * w * h / 1e6)
        for (w, h), items in sorted(by_size.items(), key=lambda kv: kv[0][0] * kv[0][1])
    ]


def run(detector: Detector, group: Group, coverage: Coverage) -> None:
    detector.coverage = coverage
    cpu, start = time.process_time(), time.perf_counter()
    results = detector.classify_bytes(group.items)
    wall_ms, cpu_ms = (time.perf_counter() - start) * 1000, (time.process_time() - cpu) * 1000
    errors = [r.to_dict() for r in results if r.judgement is None]
    if errors:
        raise SystemExit(f"not judged: {errors}")
    tiles = {r.tiles.plan.tiles_seen for r in results if r.tiles is not None}
    group.tiles[coverage] = statistics.mean(tiles)
    group.wall_ms.setdefault(coverage, []).append(wall_ms)
    group.cpu_ms.setdefault(coverage, []).append(cpu_ms)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=1, help="images of each size (default 1)")
    parser.add_argument("--rounds", type=int, default=1, help="timed passes over every mode (default 1)")
    parser.add_argument("--sizes", nargs="+", default=list(DEFAULT_SIZES), help="WxH of the generated JPEGs")
    parser.add_argument("--photos", type=Path, help="a folder of real photos instead of generated JPEGs")
    parser.add_argument("--threads", type=int, default=2, help="torch threads (default 2)")
    parser.add_argument("--model", default=DEFAULT_MODEL, help=f"checkpoint name or folder (default {DEFAULT_MODEL})")
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    detector = Detector(TorchBackend.from_checkpoint(args.model))
    groups = photo_groups(args.photos, args.images) if args.photos else generated_groups(args.sizes, args.images)
    if not groups:
        raise SystemExit(f"no photos in {args.photos}")
    modes = list(Coverage)
    count = sum(len(g.items) for g in groups)
    megapixels = sum(g.megapixels for g in groups)
    print(f"model {detector.backend.model_name} v{detector.backend.model_version}, torch {torch.__version__}, "
          f"{args.threads} thread(s), batches of {detector.backend.max_batch_size}; {count} images "
          f"({', '.join(f'{len(g.items)} x {g.label}' for g in groups)}), {megapixels:.1f} MP; "
          f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f}", flush=True)  # fmt: skip

    for group in groups:  # untimed: first-call allocations and kernels for each tile shape, decoders warm
        run(detector, Group("warm-up", group.items[:1], 0.0), Coverage.CENTRE)
    for round_ in range(args.rounds):
        order = modes[round_ % len(modes) :] + modes[: round_ % len(modes)]
        for group in groups:
            for coverage in order:
                run(detector, group, coverage)
                print(f"  round {round_ + 1}: {group.label:<22} {coverage.value:<6} "
                      f"{group.wall_ms[coverage][-1] / len(group.items):>9.0f} ms/image", flush=True)  # fmt: skip

    def wall(group: Group, coverage: Coverage) -> float:
        return statistics.median(group.wall_ms[coverage])

    def cpu(group: Group, coverage: Coverage) -> float:
        return statistics.median(group.cpu_ms[coverage])

    centre = sum(wall(g, Coverage.CENTRE) for g in groups) / count
    print(f"\nall sizes ({count} images, {megapixels:.1f} MP; default coverage: {DEFAULT_COVERAGE.value})")
    print("| mode | images | tiles/image | ms/image | ms/MP | CPU ms/image | vs centre |")
    print("|---|---|---|---|---|---|---|")
    for coverage in modes:
        tiles = sum(g.tiles[coverage] * len(g.items) for g in groups) / count
        total = sum(wall(g, coverage) for g in groups)
        cpu_total = sum(cpu(g, coverage) for g in groups)
        print(f"| {coverage.value} | {count} | {tiles:.1f} | {total / count:.0f} | {total / megapixels:.0f} | "
              f"{cpu_total / count:.0f} | {total / count / centre:.2f}x |")  # fmt: skip

    print("\nms/image by size (tiles/image)")
    print("| size | " + " | ".join(c.value for c in modes) + " |")
    print("|---|" + "---|" * len(modes))
    for g in groups:
        cells = [f"{wall(g, c) / len(g.items):.0f} ({g.tiles[c]:g})" for c in modes]
        print(f"| {g.label} | " + " | ".join(cells) + " |")
    print(f"\nload average {os.getloadavg()[0]:.2f} at the end (shared cores move wall clock; CPU ms moves less)")


if __name__ == "__main__":
    main()
