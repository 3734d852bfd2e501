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
import json
import math
import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch

from gamma.config import GammaConfig
from gamma.weights import CONFIG_FILE, METADATA_FILE, WEIGHTS_FILE, WeightsError, resolve_checkpoint


def _architecture(config: GammaConfig) -> dict:
    """The config without what calibration or naming changes: what must match for weights to be mixed."""
    data = dataclasses.asdict(config)
    data.pop("thresholds", None)
    data.pop("name", None)
    return data


def interpolate_states(states: list[dict[str, torch.Tensor]], weights: list[float]) -> dict[str, torch.Tensor]:
    """``sum_i weights[i] * states[i]`` per floating-point tensor (``weights`` sum to 1); other tensors from the
    first state."""
    if len(states) != len(weights) or len(states) < 2:
        raise ValueError("need at least two states and one weight each")
    if not all(math.isfinite(w) and w >= 0 for w in weights) or not math.isclose(sum(weights), 1.0, abs_tol=1e-9):
        raise ValueError(f"mixing weights must be >= 0 and sum to 1, not {weights}")
    keys = set(states[0])
    for index, state in enumerate(states[1:], start=1):
        if set(state) != keys:
            diff = sorted(keys ^ set(state))[:3]
            raise WeightsError(f"checkpoint {index} has other tensors than checkpoint 0: {diff}")
    mixed = {}
    for key, first in states[0].items():
        for index, state in enumerate(states[1:], start=1):
            if state[key].shape != first.shape or state[key].dtype != first.dtype:
                raise WeightsError(f"{key}: checkpoint {index} has {tuple(state[key].shape)} {state[key].dtype}, "
                                   f"checkpoint 0 {tuple(first.shape)} {first.dtype}")  # fmt: skip
        if first.is_floating_point():
            total = torch.zeros_like(first, dtype=torch.float64)
            for weight, state in zip(weights, states, strict=True):
                total += weight * state[key].to(torch.float64)
            mixed[key] = total.to(first.dtype).contiguous()
        else:
            mixed[key] = first.clone()
    return mixed


def soup(checkpoints: list[str | Path], weights: list[float], out: str | Path) -> Path:
    """Write the interpolation of ``checkpoints`` with ``weights`` to the checkpoint folder ``out``."""
    from safetensors.torch import load_file, save_file

    directories = [resolve_checkpoint(c) for c in checkpoints]
    configs = [GammaConfig.from_json(d / CONFIG_FILE) for d in directories]
    for directory, config in zip(directories[1:], configs[1:], strict=True):
        if _architecture(config) != _architecture(configs[0]):
            raise WeightsError(f"{directory}: another architecture than {directories[0]} (config differs)")
    states = [load_file(str(d / WEIGHTS_FILE)) for d in directories]
    mixed = interpolate_states(states, weights)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    save_file(mixed, str(out / WEIGHTS_FILE))
    configs[0].to_json(out / CONFIG_FILE)
    metadata_path = directories[0] / METADATA_FILE
    metadata = json.loads(metadata_path.read_text()) if metadata_path.is_file() else {}
    for measured in ("calibration", "metrics"):  # the first checkpoint's measurements do not describe the mix
        metadata.pop(measured, None)
    metadata["soup"] = {
        "ingredients": [
            {"checkpoint": str(d), "weight": w, "version": json.loads((d / METADATA_FILE).read_text()).get("version")
             if (d / METADATA_FILE).is_file() else None}
            for d, w in zip(directories, weights, strict=True)
        ],
        "rule": "training/soup.py: floating-point tensors interpolated, integer tensors from the first",
    }  # fmt: skip
    (out / METADATA_FILE).write_text(json.dumps(metadata, indent=2, sort_keys=True) + "\n")
    return out


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
