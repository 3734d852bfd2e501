"""Evaluate a GAMMA checkpoint: ``python training/evaluate.py --checkpoint C --data DIR [--json J] [--plots P]``.

``--data`` is a GenImage tree (``<generator>/val/{ai,nature}``), a ``real/`` + ``ai/`` (+ ``masks/``) folder, or a
JSONL manifest (e.g. the local recipe's ``test.jsonl``). Every image goes through the serving contract
(:mod:`gamma.preprocess` v2: JPEG-96 alignment, the coverage's native-resolution tiles, their probabilities
aggregated and masks stitched by :func:`gamma.inference.infer_tiles`), exactly as in production.

Reports, per group (generator, sample kind) and overall: accuracy at 0.5, balanced accuracy, AP, ROC-AUC, ECE,
the thresholds that keep the false-positive rate on real images at 1% and 5%, and pixel F1/IoU of the AI and
manipulation masks (at the masks' stride 4, over the pixels a tile saw, flagged above the checkpoint's
``mask_pixel``). The same again on a
*size-matched* variant: before the contract, every image of both classes is downscaled (never upscaled) to a short
side drawn from the training recipe's shared range (:class:`training.data.builders.ViewSpec`), so a detector that
keys on image size (GenImage's AI images are 512-1024 px squares, its real ones
ImageNet photos of any size) loses that cue; a large gap between the two reports is a size shortcut. Then a
robustness sweep: the same metrics after JPEG re-compression (100 -> 30), Gaussian blur and down-scaling applied
*before* the contract (what happens to images on the way to us), with one PNG plot per metric. And a *content-only*
control (:func:`content_only`, skip with ``--no-content-control``): every image is shrunk to a 64-px short side and
blown back up to its own size, which keeps content, colour and layout but wipes pixel-level traces; a detector that
still separates the classes there is reading *what* is shown, not *how* it was made. The report is printed as a
table per variant and written as JSON with ``--json``.
"""

from __future__ import annotations

import argparse
import io
import json
import sys
import time
import zlib
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np
import torch
from PIL import Image, ImageFilter
from rich.console import Console
from rich.table import Table
from tqdm import tqdm

from gamma.inference import TorchBackend, infer_tiles
from gamma.model import GammaModel
from gamma.preprocess import ImageRejected
from gamma.tiling import AGGREGATION, MASK_STRIDE, Coverage, parse_coverage
from gamma.verdict import Verdict, VerdictThresholds, decide, mask_level
from gamma.weights import DEFAULT_MODEL, load_checkpoint
from training.augment import content_only
from training.data import datasets
from training.data.builders import ViewSpec
from training.data.datasets import GammaDataset, Sample
from training.metrics import MaskThresholdEvidence, PixelCounts, image_metrics

Degrade = Callable[[np.ndarray], np.ndarray]

JPEG_LEVELS = (100, 90, 70, 50, 30)
BLUR_LEVELS = (1.0, 2.0, 3.0)
SCALE_LEVELS = (0.75, 0.5, 0.25)
PLOTTED = ("accuracy", "balanced_accuracy", "ap", "roc_auc", "ece", "ai_mask_f1")


def jpeg(quality: int) -> Degrade:
    def apply(rgb: np.ndarray) -> np.ndarray:
        buffer = io.BytesIO()
        Image.fromarray(rgb).save(buffer, "JPEG", quality=quality)
        return np.asarray(Image.open(io.BytesIO(buffer.getvalue())).convert("RGB"))

    return apply


def blur(sigma: float) -> Degrade:
    return lambda rgb: np.asarray(Image.fromarray(rgb).filter(ImageFilter.GaussianBlur(sigma)))


def downscale(factor: float) -> Degrade:
    def apply(rgb: np.ndarray) -> np.ndarray:
        size = (max(1, round(rgb.shape[1] * factor)), max(1, round(rgb.shape[0] * factor)))
        return np.asarray(Image.fromarray(rgb).resize(size, Image.Resampling.LANCZOS))

    return apply


def size_matched(short_side: tuple[int, int] = ViewSpec().short_side) -> Degrade:
    """Downscale so the short side is a per-image draw from ``short_side`` (or stays, if already smaller).

    The draw is seeded by the image's pixels, so a report is reproducible and both classes get the same
    distribution of target sizes whatever their native sizes were."""

    def apply(rgb: np.ndarray) -> np.ndarray:
        seed = zlib.crc32(np.ascontiguousarray(rgb[::17, ::17]).tobytes())
        target = int(np.random.default_rng(seed).integers(short_side[0], short_side[1] + 1))
        height, width = rgb.shape[:2]
        if min(height, width) <= target:
            return rgb
        scale = target / min(height, width)
        size = (max(target, round(width * scale)), max(target, round(height * scale)))
        return np.asarray(Image.fromarray(rgb).resize(size, Image.Resampling.LANCZOS, reducing_gap=3.0))

    return apply


def sweep_plan(
    jpeg_levels=JPEG_LEVELS, blur_levels=BLUR_LEVELS, scale_levels=SCALE_LEVELS
) -> dict[str, list[tuple[float, Degrade]]]:
    return {
        "jpeg_quality": [(q, jpeg(int(q))) for q in jpeg_levels],
        "blur_sigma": [(s, blur(s)) for s in blur_levels],
        "downscale": [(f, downscale(f)) for f in scale_levels],
    }


@dataclass
class Predictions:
    """Per-image scores and labels plus pixel counts, per group."""

    scores: list[float] = field(default_factory=list)
    labels: list[int] = field(default_factory=list)
    groups: list[str] = field(default_factory=list)
    manipulated_areas: list[float] = field(default_factory=list)  # serving's, at the checkpoint's manipulated_pixel
    ai_pixels: dict[str, PixelCounts] = field(default_factory=lambda: defaultdict(PixelCounts))
    manipulation_pixels: dict[str, PixelCounts] = field(default_factory=lambda: defaultdict(PixelCounts))

    def metrics(self) -> dict[str, Any]:
        """``overall`` and one block per group, each with image metrics and mask pixel F1/IoU."""
        scores, labels, groups = np.array(self.scores), np.array(self.labels), np.array(self.groups)
        report: dict[str, Any] = {"overall": self._block(scores, labels, sorted(set(self.groups)))}
        for group in sorted(set(self.groups)):
            chosen = groups == group
            report[group] = self._block(scores[chosen], labels[chosen], [group])
        return report

    def _block(self, scores: np.ndarray, labels: np.ndarray, groups: list[str]) -> dict[str, Any]:
        block: dict[str, Any] = image_metrics(labels, scores)
        for name, by_group in (("ai_mask", self.ai_pixels), ("manipulation_mask", self.manipulation_pixels)):
            total = PixelCounts()
            for group in groups:
                counts = by_group.get(group, PixelCounts())
                total.tp, total.fp, total.fn = total.tp + counts.tp, total.fp + counts.fp, total.fn + counts.fn
            block[f"{name}_f1"], block[f"{name}_iou"] = total.f1, total.iou
        return block


def target_at_mask_stride(mask: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """A full-image uint8 {0, 255} mask (H, W) -> its area share per MASK_STRIDE cell (rows, columns) in [0, 1]:
    the grid the stitched masks are predicted on (edge cells average the pixels they have)."""
    rows, cols = shape
    padded = np.zeros((rows * MASK_STRIDE, cols * MASK_STRIDE), dtype=np.float32)
    counts = np.zeros_like(padded)
    padded[: mask.shape[0], : mask.shape[1]] = mask / 255.0
    counts[: mask.shape[0], : mask.shape[1]] = 1.0
    pooled = padded.reshape(rows, MASK_STRIDE, cols, MASK_STRIDE).sum(axis=(1, 3))
    return pooled / np.maximum(counts.reshape(rows, MASK_STRIDE, cols, MASK_STRIDE).sum(axis=(1, 3)), 1.0)


@torch.no_grad()
def predict(
    model: GammaModel, dataset: GammaDataset, batch_size: int, progress: bool, desc: str,
    coverage: Coverage | str | None = None, images_per_round: int = 16, evidence: MaskThresholdEvidence | None = None,
) -> Predictions:  # fmt: skip
    """Scores every sample the way serving does: the coverage's native-resolution tiles, batched across images
    by tile shape through the served form of the model (:class:`gamma.inference.TorchBackend`), combined into one
    probability and stitched masks per image (:func:`gamma.inference.infer_tiles`). Mask pixels are scored at
    MASK_STRIDE over the pixels some tile saw, flagged at the checkpoint's ``mask_pixel`` as serving flags them
    (:func:`gamma.verdict.mask_area`); an image serving would refuse (``too-small``) is left out.
    ``evidence``, when given, also gathers what the mask thresholds are calibrated on (``training/calibrate.py``)."""
    backend = TorchBackend(model, model.config, "evaluate", max_batch_size=batch_size)
    out, coverage = Predictions(), parse_coverage(coverage)
    level = mask_level(model.config.thresholds.mask_pixel)  # a pixel is flagged above it, as serving flags it
    indices = range(len(dataset))
    for start in tqdm(range(0, len(dataset), images_per_round), desc=desc, disable=not progress, file=sys.stdout):
        items = []
        for index in indices[start : start + images_per_round]:
            try:
                items.append((index, *dataset.tiles(index, coverage)))
            except ImageRejected:
                continue
        for (index, tiles, masks, label), result in zip(items, infer_tiles(backend, [t for _, t, _, _ in items])):
            group = dataset.samples[index].group
            out.scores.append(result.probability)
            out.labels.append(int(label))
            out.groups.append(group)
            out.manipulated_areas.append(result.manipulated_area)
            seen = tiles.plan.seen()
            targets = []
            for channel, predicted, counts in ((0, result.ai_mask, out.ai_pixels),
                                               (1, result.manipulation_mask, out.manipulation_pixels)):  # fmt: skip
                if predicted.shape != seen.shape:  # capped (a side over 8192 px): not scored
                    continue
                targets.append(target_at_mask_stride(masks[..., channel], seen.shape))
                counts[group].update(predicted[seen] > level, targets[-1][seen])
            if evidence is not None and len(targets) == 2:
                predicted_masks = (result.ai_mask, result.manipulation_mask)
                evidence.add(
                    int(label), predicted_masks, (targets[0], targets[1]), seen, result.tile_manipulation_masks
                )
    return out


def load_samples(data: Path, split: str = "val") -> list[Sample]:
    data = Path(data)
    if data.suffix == ".jsonl":
        return datasets.manifest(data)
    if (data / "real").is_dir() or (data / "ai").is_dir():
        return datasets.real_ai_folders(data)
    if datasets.is_genimage(data):
        return datasets.genimage(data, split)
    raise FileNotFoundError(f"{data}: not a GenImage tree, a real/ + ai/ folder, or a .jsonl manifest")


def limit_per_group(samples: list[Sample], limit: int | None, seed: int = 0) -> list[Sample]:
    """At most ``limit`` images per (group, label): a random, seeded subset, so subsets stay balanced."""
    if limit is None:
        return samples
    buckets: dict[tuple[str, int], list[Sample]] = defaultdict(list)
    for sample in samples:
        buckets[(sample.group, sample.label)].append(sample)
    rng = np.random.default_rng(seed)
    chosen: list[Sample] = []
    for key in sorted(buckets):
        bucket = buckets[key]
        picks = rng.choice(len(bucket), min(limit, len(bucket)), replace=False)
        chosen += [bucket[i] for i in sorted(picks)]
    return chosen


def plot_sweep(sweep: dict[str, list[dict[str, Any]]], folder: Path) -> list[Path]:
    """One PNG per metric: a panel per degradation, the metric against its level. Needs matplotlib (Agg)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for metric in PLOTTED:
        fig, axes = plt.subplots(1, len(sweep), figsize=(4 * len(sweep), 3.2), squeeze=False)
        for ax, (kind, points) in zip(axes[0], sweep.items()):
            levels = [p["level"] for p in points]
            ax.plot(levels, [p["overall"][metric] for p in points], marker="o")
            ax.set_xlabel(kind)
            ax.set_title(metric)
            ax.grid(alpha=0.3)
            if kind == "jpeg_quality":
                ax.invert_xaxis()  # left to right: increasingly degraded
        fig.tight_layout()
        path = folder / f"robustness_{metric}.png"
        fig.savefig(path, dpi=100)
        plt.close(fig)
        written.append(path)
    return written


REPORT_COLUMNS = (
    ("count", "n", "d"), ("accuracy", "acc@0.5", ".3f"), ("balanced_accuracy", "bal. acc", ".3f"), ("ap", "AP", ".3f"),
    ("roc_auc", "ROC-AUC", ".3f"), ("ece", "ECE", ".3f"), ("threshold_fpr_1pct", "thr@1%FPR", ".3f"),
    ("threshold_fpr_5pct", "thr@5%FPR", ".3f"), ("ai_mask_f1", "AI F1", ".3f"), ("ai_mask_iou", "AI IoU", ".3f"),
    ("manipulation_mask_f1", "manip. F1", ".3f"), ("manipulation_mask_iou", "manip. IoU", ".3f"),
)  # fmt: skip


def report_table(title: str, blocks: dict[str, dict[str, Any]]) -> Table:
    """One row per group (``overall`` first), one column per metric; NaN (undefined, e.g. AUC of one class) as -."""
    table = Table(title=title)
    table.add_column("group")
    for _, header, _ in REPORT_COLUMNS:
        table.add_column(header, justify="right")
    for group in ["overall", *sorted(g for g in blocks if g != "overall")]:
        cells = []
        for key, _, spec in REPORT_COLUMNS:
            value = blocks[group].get(key)
            missing = value is None or (isinstance(value, float) and not np.isfinite(value))
            cells.append("-" if missing else format(value, spec))
        table.add_row(group, *cells)
    return table


def verdict_rates(labels: np.ndarray, scores: np.ndarray, thresholds: VerdictThresholds) -> dict[str, Any]:
    """What the checkpoint's own thresholds do to these images: per class, the share called ``ai-generated``
    (for real images: the false-positive rate the calibration promised to keep <= 5 %) and ``needs-review``."""
    ai_from = thresholds.ai_probability + thresholds.review_band
    review_from = thresholds.ai_probability - thresholds.review_band
    rates: dict[str, Any] = {"ai_generated_from": ai_from, "needs_review_above": review_from}
    for name, label in (("real", 0), ("ai", 1)):
        chosen = scores[labels == label]
        inside = (chosen > review_from) & (chosen < ai_from)
        rates[name] = {
            "count": int(chosen.size),
            "ai_generated": float((chosen >= ai_from).mean()) if chosen.size else float("nan"),
            "needs_review": float(inside.mean()) if chosen.size else float("nan"),
        }
    return rates


def manipulated_by_group(predictions: Predictions, thresholds: VerdictThresholds) -> dict[str, float]:
    """Per group (a manifest's ``kind``), the share serving calls ``manipulated``: for plain real photos the false
    verdicts, for copy-move and splicing the edits found."""
    called: dict[str, list[bool]] = defaultdict(list)
    for group, score, area in zip(predictions.groups, predictions.scores, predictions.manipulated_areas):
        called[group].append(decide(score, 0.0, area, thresholds).verdict is Verdict.MANIPULATED)
    return {group: float(np.mean(flags)) for group, flags in sorted(called.items())}


def print_report(report: dict[str, Any], console: Console | None = None) -> None:
    """The clean and size-matched tables and the robustness sweep (overall accuracy / ROC-AUC per level)."""
    if console is None:
        console = Console()
        if not console.is_terminal:  # a log file or a pipe: no 80-column squeeze of the 13 metric columns
            console = Console(width=200)
    console.print(report_table(f"{report['model']} v{report['version']} on {report['data']}: clean", report["clean"]))
    if "verdicts" in report:
        rates = report["verdicts"]
        console.print(f"shipped thresholds (ai-generated from p >= {rates['ai_generated_from']:.3f}, needs-review "
                      f"above {rates['needs_review_above']:.3f}): real images called ai-generated "
                      f"{rates['real']['ai_generated']:.1%}, needs-review {rates['real']['needs_review']:.1%}; "
                      f"AI images called ai-generated {rates['ai']['ai_generated']:.1%}, needs-review "
                      f"{rates['ai']['needs_review']:.1%}")  # fmt: skip
        manipulated = rates.get("manipulated_by_group", {})
        console.print("called manipulated: " + ", ".join(f"{kind} {share:.1%}" for kind, share in manipulated.items()))
    if "size_matched" in report:
        console.print(report_table("size-matched (both classes downscaled to one short-side range)",
                                   report["size_matched"]))  # fmt: skip
    if "robustness" in report:
        table = Table(title=f"robustness ({report['robustness_count']} images): overall accuracy / ROC-AUC")
        for column in ("degradation", "level", "accuracy", "ROC-AUC"):
            table.add_column(column, justify="left" if column == "degradation" else "right")
        for kind, points in report["robustness"].items():
            for point in points:
                overall = point["overall"]
                table.add_row(kind, f"{point['level']:g}", f"{overall['accuracy']:.3f}", f"{overall['roc_auc']:.3f}")
        console.print(table)
    if "content_only" in report:
        control = report["content_only"]
        table = Table(title=f"content-only control ({control['size']} px and back)")
        for column in ("variant", "n", "ROC-AUC", "AP", "bal. acc"):
            table.add_column(column, justify="left" if column == "variant" else "right")
        for name, block in (("clean images", report["clean"]["overall"]), ("content only", control["overall"])):
            cells = [format(block[key], spec) if np.isfinite(block[key]) else "-"
                     for key, spec in (("roc_auc", ".3f"), ("ap", ".3f"), ("balanced_accuracy", ".3f"))]  # fmt: skip
            table.add_row(name, str(block["count"]), *cells)
        console.print(table)


def evaluate(
    checkpoint: str, data: Path, *, split: str = "val", limit: int | None = None, robustness: bool = True,
    robustness_limit: int | None = None, batch_size: int = 8, progress: bool = True,
    plan: dict[str, list[tuple[float, Degrade]]] | None = None, size_matched_variant: bool = True,
    content_control: bool = True, content_size: int = 64, coverage: Coverage | str | None = None,
) -> dict[str, Any]:  # fmt: skip
    coverage = parse_coverage(coverage)
    loaded = load_checkpoint(checkpoint)
    model = loaded.model.eval()
    samples = limit_per_group(load_samples(data, split), limit)
    started = time.time()
    report: dict[str, Any] = {
        "checkpoint": str(loaded.path or checkpoint),
        "model": loaded.name,
        "version": loaded.version,
        "data": str(data),
        "count": len(samples),
        "contract": f"gamma.preprocess v2: decode -> JPEG q96 -> {coverage.value} tiles at native resolution -> "
        f"{AGGREGATION}",
        "coverage": coverage.value,
        "mask_pixel": loaded.config.thresholds.mask_pixel,  # the masks' F1/IoU flag pixels above it
    }
    clean = predict(model, GammaDataset(samples), batch_size, progress, "clean", coverage)
    report["clean"] = clean.metrics()
    report["verdicts"] = verdict_rates(np.asarray(clean.labels), np.asarray(clean.scores), loaded.config.thresholds)
    report["verdicts"]["manipulated_by_group"] = manipulated_by_group(clean, loaded.config.thresholds)
    if size_matched_variant:
        matched = GammaDataset(samples, degrade=size_matched())
        report["size_matched"] = predict(model, matched, batch_size, progress, "size-matched", coverage).metrics()
    if content_control:
        blurred = GammaDataset(samples, degrade=content_only(content_size))
        overall = predict(model, blurred, batch_size, progress, "content-only", coverage).metrics()["overall"]
        report["content_only"] = {"size": content_size, "overall": overall}
    if robustness:
        subset = limit_per_group(samples, robustness_limit)
        report["robustness_count"] = len(subset)
        report["robustness"] = {
            kind: [
                {
                    "level": level,
                    "overall": predict(
                        model, GammaDataset(subset, degrade=degrade), batch_size, progress, f"{kind}={level}", coverage
                    ).metrics()["overall"],
                }
                for level, degrade in points
            ]
            for kind, points in (plan or sweep_plan()).items()
        }
    report["seconds"] = round(time.time() - started, 1)
    return report


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--checkpoint", default=DEFAULT_MODEL, help="a model name (models/<name>) or a folder")
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--split", default="val", help="GenImage split folder")
    parser.add_argument("--json", type=Path, default=None, help="write the report here")
    parser.add_argument("--plots", type=Path, default=None, help="write robustness PNGs here")
    parser.add_argument("--limit", type=int, default=None, help="at most N images per (group, class)")
    parser.add_argument("--robustness-limit", type=int, default=None, help="a smaller subset for the sweep")
    parser.add_argument("--no-robustness", action="store_true")
    parser.add_argument("--no-size-matched", action="store_true", help="skip the size-matched variant")
    parser.add_argument("--no-content-control", action="store_true", help="skip the content-only control")
    parser.add_argument("--content-size", type=int, default=64, help="short side of the content-only control")
    parser.add_argument("--coverage", default=None, help="tiles seen per image: centre|five|full (default: serving's)")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    report = evaluate(
        args.checkpoint, args.data, split=args.split, limit=args.limit, robustness=not args.no_robustness,
        robustness_limit=args.robustness_limit, batch_size=args.batch_size,
        size_matched_variant=not args.no_size_matched, content_control=not args.no_content_control,
        content_size=args.content_size, coverage=args.coverage,
    )  # fmt: skip
    if args.plots is not None and "robustness" in report:
        report["plots"] = [str(p) for p in plot_sweep(report["robustness"], args.plots)]
    text = json.dumps(report, indent=2, default=float)
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(text + "\n")
    print_report(report)
    overall = report["clean"]["overall"]
    print(json.dumps({k: overall[k] for k in ("count", "accuracy", "balanced_accuracy", "ap", "roc_auc", "ece")}))
    return report


if __name__ == "__main__":
    main()
