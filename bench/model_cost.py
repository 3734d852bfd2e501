"""Parameters and FLOPs of each GAMMA preset at a given input size (FLOPs = 2 x multiply-accumulates).

    python bench/model_cost.py [--size 512] [--presets gamma-b0 gamma-effl0 gamma-effl2 gamma-b2]
"""

from __future__ import annotations

import argparse

import torch
from torch.utils.flop_counter import FlopCounterMode

from gamma.config import preset
from gamma.model import GammaModel


def _sdpa_flops(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
    """QK^T and (softmax)V matmuls; FlopCounterMode has no formula for the CPU attention kernel."""
    *batch, queries, depth = query_shape
    keys, value_depth = key_shape[-2], value_shape[-1]
    heads = 1
    for size in batch:
        heads *= size
    return 2 * heads * queries * keys * (depth + value_depth)


CPU_ATTENTION = {torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: _sdpa_flops}


def cost(name: str, size: int) -> tuple[float, float]:
    """(parameters in millions, GFLOPs per image) for one preset at ``size`` x ``size``."""
    model = GammaModel(preset(name)).eval()
    params = sum(p.numel() for p in model.parameters()) / 1e6
    counter = FlopCounterMode(display=False, custom_mapping=CPU_ATTENTION)
    with counter, torch.no_grad():
        model(torch.zeros(1, 3, size, size, dtype=torch.uint8))
    return params, counter.get_total_flops() / 1e9


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--presets", nargs="+", default=["gamma-b0", "gamma-effl0", "gamma-effl2", "gamma-b2"])
    args = parser.parse_args()
    print(f"{'preset':<10} {'params (M)':>11} {'GFLOPs @' + str(args.size):>14}")
    for name in args.presets:
        params, gflops = cost(name, args.size)
        print(f"{name:<10} {params:>11.2f} {gflops:>14.1f}")


if __name__ == "__main__":
    main()
