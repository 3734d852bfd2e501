"""Interpolate checkpoints in weight space: ``python training/soup.py --checkpoint A --checkpoint B --weight 0.5
--out DIR`` writes ``(1 - w) * A + w * B`` as a new checkpoint.

Why: a model fine-tuned from another (version 7 from version 6 here) usually stays in the same basin, and the
weights on the line between the two often score better than either end, on new data most of all (WiSE-FT,
Wortsman et al., "Robust fine-tuning of zero-shot models", CVPR 2022; "Model soups", ICML 2022). The mixing weight
is a model choice: pick it on validation (``training/calibrate.py --report-only`` per candidate), never on test or
the reserved independent sources.

Every floating-point tensor is interpolated, BatchNorm's running statistics included (what the papers do);
integer tensors (``num_batches_tracked``) are taken from the first checkpoint. The checkpoints must share one
architecture (config without thresholds) and one state-dict layout. The result carries the first checkpoint's
config, its thresholds included (calibrate it before serving it), and the first checkpoint's metadata less what
was measured on it (``calibration``, ``metrics``), with the ingredients and their weights under ``soup``.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch

from gamma.config import GammaConfig
from gamma.weights import WeightsError, load_checkpoint, save_checkpoint


def _architecture(config: GammaConfig) -> dict:
    """The config without what calibration or naming changes: what must match for weights to be mixed."""
    data = dataclasses.asdict(config)
    data.pop("thresholds", None)
    data.pop("name", None)
    return data


def interpolate_states(states: list[dict[str, torch.Tensor]], weights: list[float]) -> dict[str, torch.Tensor]:
    """``sum_i weights[i] * states[i]`` per floating-point tensor (``weights`` sum to 1); other tensors from the
    first state. The states share one layout (:func:`soup` loads them as checkpoints of one architecture)."""
    if len(states) != len(weights) or len(states) < 2:
        raise ValueError("need at least two states and one weight each")
    if not all(math.isfinite(w) and w >= 0 for w in weights) or not math.isclose(sum(weights), 1.0, abs_tol=1e-9):
        raise ValueError(f"mixing weights must be >= 0 and sum to 1, not {weights}")
    mixed = {}
    for key, first in states[0].items():
        if first.is_floating_point():
            total = torch.zeros_like(first, dtype=torch.float64)
            for weight, state in zip(weights, states, strict=True):
                total += weight * state[key].to(torch.float64)
            mixed[key] = total.to(first.dtype)
        else:
            mixed[key] = first.clone()
    return mixed


def soup(checkpoints: list[str | Path], weights: list[float], out: str | Path) -> Path:
    """Write the interpolation of ``checkpoints`` with ``weights`` to the checkpoint folder ``out``."""
    loaded = [load_checkpoint(c) for c in checkpoints]  # each refuses weights that do not fit its own config
    for checkpoint in loaded[1:]:
        if _architecture(checkpoint.config) != _architecture(loaded[0].config):
            raise WeightsError(f"{checkpoint.path}: another architecture than {loaded[0].path} (config differs)")
    model = loaded[0].model
    model.load_state_dict(interpolate_states([c.model.state_dict() for c in loaded], weights))
    metadata = {k: v for k, v in loaded[0].metadata.items() if k not in ("calibration", "metrics")}  # measured on
    metadata["soup"] = {  # the first checkpoint, not on the mix
        "ingredients": [{"checkpoint": str(c.path), "weight": w, "version": c.metadata.get("version")}
                        for c, w in zip(loaded, weights, strict=True)],
        "rule": "training/soup.py: floating-point tensors interpolated, integer tensors from the first",
    }  # fmt: skip
    return save_checkpoint(model, out, metadata)


def main(argv: list[str] | None = None) -> Path:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--checkpoint", action="append", required=True, help="a checkpoint folder or name (2+)")
    parser.add_argument(
        "--weight", type=float, action="append", required=True,
        help="with two checkpoints, one weight w: (1 - w) * first + w * second; else one weight per checkpoint",
    )  # fmt: skip
    parser.add_argument("--out", type=Path, required=True, help="the new checkpoint folder")
    args = parser.parse_args(argv)
    weights = args.weight
    if len(args.checkpoint) == 2 and len(weights) == 1:
        weights = [1.0 - weights[0], weights[0]]
    if len(args.checkpoint) < 2 or len(weights) != len(args.checkpoint):
        parser.error("give at least two --checkpoint and one --weight per checkpoint (or one weight for two)")
    try:
        out = soup(args.checkpoint, weights, args.out)
    except (ValueError, WeightsError) as error:
        parser.exit(2, f"soup.py: error: {error}\n")
    print(f"wrote {out} = " + " + ".join(f"{w:g} * {c}" for w, c in zip(weights, args.checkpoint, strict=True)))
    return out


if __name__ == "__main__":
    main()
