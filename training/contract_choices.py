"""Measure the three choices contract v2 leaves open, so each constant in :mod:`gamma.tiling` rests on a number:

    python training/contract_choices.py --checkpoint gamma-local-effl0 \\
        --val training/data/cache/local-v3/val.jsonl --test training/data/cache/local-v3/test.jsonl --json J

1. **Smallest useful size** (``MIN_SIDE``): validation ROC-AUC when every image is cut to its centre ``s x s``
   (no resampling, ``s`` a multiple of the stride) for ``s`` in :data:`SIDES`, beside the whole image.
2. **Tile aggregation** (``AGGREGATION``): validation ROC-AUC of each rule of :func:`gamma.tiling.aggregate_probability`
   over the ``full`` coverage's tile probabilities, overall and on the images with more than one tile.
3. **Coverage default** (``DEFAULT_COVERAGE``): on the test split, ROC-AUC, tiles per image and model seconds per
   image for ``centre``, ``five`` and ``full``.
4. **Image score** (``IMAGE_SCORE``): validation (and test) ROC-AUC of the classification head's probability (the
   paper's) beside scores read from the AI mask the same pass returns (its mean and 99th percentile over the seen
   pixels) and their fusion (the mean of the head's logit and the mask-mean's logit): a region edit moves a few
   mask pixels a lot and the pooled classification token little.

Choices 2 and 3 need images larger than one tile; a recipe's views are not, so run them on its source pictures,
whole (``python -m training.data.whole_sources`` writes their val/test manifests; ``--only aggregation --only
coverage``).

Everything runs the served form of the model (:class:`gamma.inference.TorchBackend`) on the contract's tiles.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np
import torch

from gamma import preprocess as contract
from gamma.inference import TorchBackend, infer_tiles
from gamma.tiling import (
    AGGREGATIONS,
    STRIDE,
    Coverage,
    TileOutputs,
    aggregate_probability,
    image_probability,
    plan_tiles,
)
from gamma.weights import DEFAULT_MODEL, load_checkpoint
from training.data.datasets import GammaDataset
from training.evaluate import limit_per_group, load_samples
from training.metrics import image_metrics

SIDES = (32, 64, 96, 128, 192)
CHOICES = ("size", "aggregation", "coverage", "image-score")


def _auc(labels: list[int], scores: list[float]) -> float:
    return float(image_metrics(np.asarray(labels), np.asarray(scores))["roc_auc"])


def _centre_square(tiles: contract.Tiles, rgb: np.ndarray, side: int) -> contract.Tiles | None:
    """The centre ``side`` square of the aligned image as one tile (None if the image is smaller)."""
    height, width = rgb.shape[:2]
    if min(height, width) < side:
        return None
    return contract.Tiles(contract.to_chw(contract.center_crop(rgb, side))[None].copy(), tiles.plan)


@torch.no_grad()
def smallest_size(backend: TorchBackend, dataset: GammaDataset, sides: tuple[int, ...] = SIDES) -> dict[str, Any]:
    """ROC-AUC per centre-square side (and the whole image under ``full``) on ``dataset``."""
    scores: dict[str, list[float]] = {str(s): [] for s in sides} | {"whole": []}
    labels: dict[str, list[int]] = {key: [] for key in scores}
    for index in range(len(dataset)):
        rgb, _, label = dataset.load(index)
        height, width = rgb.shape[:2]
        whole = contract.cut_tiles(rgb, plan_tiles(width, height, Coverage.FULL))
        scores["whole"].append(infer_tiles(backend, [whole])[0].probability)
        labels["whole"].append(label)
        for side in sides:
            square = _centre_square(whole, rgb, side)
            if square is None:
                continue
            probability = float(backend.infer(square.pixels).probability[0])
            scores[str(side)].append(probability)
            labels[str(side)].append(label)
    return {key: {"images": len(scores[key]), "roc_auc": _auc(labels[key], scores[key])} for key in scores}


@torch.no_grad()
def aggregation(backend: TorchBackend, dataset: GammaDataset) -> dict[str, Any]:
    """ROC-AUC per aggregation rule over the full coverage's tiles (all images, and multi-tile images only)."""
    tile_scores, labels = [], []
    for index in range(len(dataset)):
        tiles, _, label = dataset.tiles(index, Coverage.FULL)
        tile_scores.append(infer_tiles(backend, [tiles])[0].tile_probabilities)
        labels.append(label)
    multi = [i for i, scores in enumerate(tile_scores) if len(scores) > 1]
    report: dict[str, Any] = {"images": len(labels), "multi_tile_images": len(multi)}
    for rule in AGGREGATIONS:
        aggregated = [aggregate_probability(scores, rule) for scores in tile_scores]
        report[rule] = {
            "roc_auc": _auc(labels, aggregated),
            "roc_auc_multi_tile": _auc([labels[i] for i in multi], [aggregated[i] for i in multi]) if multi else None,
        }
    return report


@torch.no_grad()
def coverage_modes(backend: TorchBackend, dataset: GammaDataset) -> dict[str, Any]:
    """Per coverage mode: ROC-AUC, tiles per image and model seconds per image over ``dataset``."""
    report = {}
    for coverage in Coverage:
        scores, labels, tiles_seen, seconds = [], [], 0, 0.0
        for index in range(len(dataset)):
            tiles, _, label = dataset.tiles(index, coverage)
            start = time.perf_counter()
            scores.append(infer_tiles(backend, [tiles])[0].probability)
            seconds += time.perf_counter() - start
            labels.append(label)
            tiles_seen += len(tiles)
        report[coverage.value] = {
            "images": len(labels),
            "roc_auc": _auc(labels, scores),
            "tiles_per_image": tiles_seen / max(len(labels), 1),
            "model_seconds_per_image": seconds / max(len(labels), 1),
        }
    return report


def image_scores(result: TileOutputs) -> dict[str, float]:
    """The candidate image scores of one image's combined tiles (masks are uint8 probabilities at MASK_STRIDE)."""
    seen = result.plan.seen()
    ai = result.ai_mask[seen].astype(np.float32) / 255.0 if result.ai_mask.shape == seen.shape else np.zeros(1)
    return {
        "classifier": image_probability(result.head_probability, result.ai_mask_mean, "classifier"),
        "ai_mask_mean": result.ai_mask_mean,
        "ai_mask_q99": float(np.quantile(ai, 0.99)) if ai.size else 0.0,
        "fused": image_probability(result.head_probability, result.ai_mask_mean, "fused"),
    }


@torch.no_grad()
def image_score(backend: TorchBackend, dataset: GammaDataset, coverage: Coverage) -> dict[str, Any]:
    """ROC-AUC of each candidate image score of :func:`image_scores` over ``dataset``, overall and per kind."""
    rows, labels, groups = [], [], []
    for index in range(len(dataset)):
        tiles, _, label = dataset.tiles(index, coverage)
        rows.append(image_scores(infer_tiles(backend, [tiles])[0]))
        labels.append(label)
        groups.append(dataset.samples[index].group)
    report: dict[str, Any] = {"images": len(labels)}
    for name in rows[0] if rows else ():
        scores = [row[name] for row in rows]
        # per AI kind against every real-class image: which kinds each score finds
        per_kind = {
            kind: _auc(
                [labels[i] for i in range(len(labels)) if labels[i] == 0 or groups[i] == kind],
                [scores[i] for i in range(len(labels)) if labels[i] == 0 or groups[i] == kind],
            )
            for kind in sorted({g for g, label in zip(groups, labels) if label == 1})
        }
        report[name] = {"roc_auc": _auc(labels, scores), "roc_auc_per_ai_kind": per_kind}
    return report


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--checkpoint", default=DEFAULT_MODEL)
    parser.add_argument("--val", type=Path, required=True, help="validation manifest: size and aggregation")
    parser.add_argument("--test", type=Path, required=True, help="test manifest: coverage modes")
    parser.add_argument("--limit", type=int, default=None, help="at most N images per (group, class): a quick look")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--only", choices=sorted(CHOICES), action="append", default=None,
                        help="measure only these choices (repeatable; default: all)")  # fmt: skip
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    loaded = load_checkpoint(args.checkpoint)
    backend = TorchBackend(loaded.model, loaded.config, loaded.name, loaded.version)
    val = GammaDataset(limit_per_group(load_samples(args.val), args.limit))
    test = GammaDataset(limit_per_group(load_samples(args.test), args.limit))
    measures = {
        "size": {"smallest_size_val": lambda: smallest_size(backend, val)},
        "aggregation": {"aggregation_val": lambda: aggregation(backend, val)},
        "coverage": {"coverage_test": lambda: coverage_modes(backend, test)},
        "image-score": {
            "image_score_val": lambda: image_score(backend, val, Coverage.FIVE),
            "image_score_test": lambda: image_score(backend, test, Coverage.FIVE),
        },
    }
    report: dict[str, Any] = {"checkpoint": loaded.name, "stride": STRIDE}
    for choice in args.only or CHOICES:
        report |= {key: measure() for key, measure in measures[choice].items()}
    text = json.dumps(report, indent=2, default=float)
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(text + "\n")
    print(text)
    return report


if __name__ == "__main__":
    main()
