"""Parameters and FLOPs of each GAMMA preset per tile (FLOPs = 2 x multiply-accumulates), and per photo by coverage.

    python bench/model_cost.py [--size 512 | --size 288x192] [--presets gamma-b0 gamma-effl0 gamma-effl2 gamma-b2]
                               [--photo 4000x3000]

Contract v2 feeds the model tiles of at most 512x512 at the image's own resolution (``gamma/tiling.py``), so the
cost of an image is its tiles' cost: ``--size`` is one tile (a side a multiple of 32; ``WxH`` for the tile of an
image smaller than 512 on a side), and ``--photo`` also prints what one photo of that size costs under each
coverage mode (its tiles counted by the real tile plan).
"""

from __future__ import annotations

import argparse

import torch
from torch.utils.flop_counter import FlopCounterMode

from gamma.config import preset
from gamma.model import GammaModel
from gamma.tiling import STRIDE, TILE_SIZE, Coverage, plan_tiles


def _sdpa_flops(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
    """QK^T and (softmax)V matmuls; FlopCounterMode has no formula for the CPU attention kernel."""
    *batch, queries, depth = query_shape
    keys, value_depth = key_shape[-2], value_shape[-1]
    heads = 1
    for size in batch:
        heads *= size
    return 2 * heads * queries * keys * (depth + value_depth)


CPU_ATTENTION = {torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: _sdpa_flops}


def cost(name: str, width: int, height: int | None = None) -> tuple[float, float]:
    """(parameters in millions, GFLOPs per tile) for one preset on a ``width`` x ``height`` tile (square if no
    height)."""
    height = width if height is None else height
    model = GammaModel(preset(name)).eval()
    params = sum(p.numel() for p in model.parameters()) / 1e6
    counter = FlopCounterMode(display=False, custom_mapping=CPU_ATTENTION)
    with counter, torch.no_grad():
        model(torch.zeros(1, 3, height, width, dtype=torch.uint8))
    return params, counter.get_total_flops() / 1e9


def parse_size(text: str) -> tuple[int, int]:
    """``512`` -> (512, 512); ``288x192`` -> (288, 192) (width x height)."""
    width, _, height = text.lower().partition("x")
    return int(width), int(height or width)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", default=str(TILE_SIZE), help="one tile: N or WxH, multiples of 32 (default 512)")
    parser.add_argument("--presets", nargs="+", default=["gamma-b0", "gamma-effl0", "gamma-effl2", "gamma-b2"])
    parser.add_argument("--photo", help="WxH of a photo: also print its GFLOPs under each coverage mode")
    args = parser.parse_args()
    width, height = parse_size(args.size)
    if width % STRIDE or height % STRIDE or max(width, height) > TILE_SIZE:
        parser.error(f"a tile's sides are multiples of {STRIDE} up to {TILE_SIZE}, not {width}x{height}")
    plans = {}
    if args.photo:
        photo = parse_size(args.photo)
        plans = {c: plan_tiles(*photo, c) for c in Coverage}
        tile = plans[Coverage.CENTRE].tile_width, plans[Coverage.CENTRE].tile_height
        if tile != (width, height):  # the photo's own tiles, whatever --size says
            width, height = tile
    label = f"{width}x{height}" if width != height else str(width)
    print(f"{'preset':<10} {'params (M)':>11} {'GFLOPs @' + label:>14} {'GFLOPs/MP':>10}")
    per_tile = {}
    for name in args.presets:
        params, per_tile[name] = cost(name, width, height)
        print(f"{name:<10} {params:>11.2f} {per_tile[name]:>14.1f} {per_tile[name] / (width * height / 1e6):>10.1f}")
    if plans:
        print(f"\nGFLOPs per {args.photo} photo by coverage (tiles seen of {plans[Coverage.FULL].grid}):")
        print(f"{'preset':<10}" + "".join(f" {f'{c.value} ({len(p.boxes)})':>12}" for c, p in plans.items()))
        for name, gflops in per_tile.items():
            print(f"{name:<10}" + "".join(f" {gflops * len(p.boxes):>12.1f}" for p in plans.values()))


if __name__ == "__main__":
    main()
