"""Detection metrics in plain numpy (training needs no scikit-learn): image-level accuracy, balanced accuracy,
average precision, ROC-AUC, expected calibration error, the threshold that keeps the false-positive rate on real
images at a target, and pixel-level F1/IoU accumulated over a whole set (not averaged per image, so an image with a
tiny mask does not weigh like one with a large one).

Conventions: ``labels`` are 0 (real) / 1 (AI); ``scores`` are probabilities of class 1; a score >= threshold is
called AI.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np


def _arrays(labels, scores) -> tuple[np.ndarray, np.ndarray]:
    y, s = np.asarray(labels, dtype=np.int64).ravel(), np.asarray(scores, dtype=np.float64).ravel()
    if y.shape != s.shape:
        raise ValueError(f"{y.size} labels vs {s.size} scores")
    return y, s


def accuracy(labels, scores, threshold: float = 0.5) -> float:
    y, s = _arrays(labels, scores)
    return float(np.mean((s >= threshold) == (y == 1))) if y.size else float("nan")


def balanced_accuracy(labels, scores, threshold: float = 0.5) -> float:
    """Mean of the true-positive rate on AI images and the true-negative rate on real ones."""
    y, s = _arrays(labels, scores)
    rates = [np.mean((s[y == c] >= threshold) == (c == 1)) for c in (0, 1) if np.any(y == c)]
    return float(np.mean(rates)) if rates else float("nan")


def _ranked(y: np.ndarray, s: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Cumulative TP and FP counts at each distinct score, from the highest score down (ties grouped)."""
    order = np.argsort(-s, kind="mergesort")
    s, y = s[order], y[order]
    last_of_tie = np.r_[np.flatnonzero(np.diff(s)), y.size - 1]
    tp = np.cumsum(y)[last_of_tie]
    fp = (last_of_tie + 1) - tp
    return tp, fp, s[last_of_tie]


def average_precision(labels, scores) -> float:
    """Sum over thresholds of (recall step) x precision, as scikit-learn defines it (no interpolation)."""
    y, s = _arrays(labels, scores)
    positives = int(y.sum())
    if positives == 0:
        return float("nan")
    tp, fp, _ = _ranked(y, s)
    precision, recall = tp / (tp + fp), tp / positives
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


def roc_auc(labels, scores) -> float:
    """Area under the ROC curve (trapezoids, ties counted half), nan when one class is absent."""
    y, s = _arrays(labels, scores)
    positives, negatives = int(y.sum()), int((1 - y).sum())
    if positives == 0 or negatives == 0:
        return float("nan")
    tp, fp, _ = _ranked(y, s)
    tpr, fpr = np.r_[0.0, tp / positives], np.r_[0.0, fp / negatives]
    return float(np.sum(np.diff(fpr) * (tpr[1:] + tpr[:-1]) / 2))


def expected_calibration_error(labels, scores, bins: int = 10) -> float:
    """ECE of the AI probability: sum over equal-width bins of (bin share) x |mean label - mean score|."""
    y, s = _arrays(labels, scores)
    if y.size == 0:
        return float("nan")
    which = np.minimum((s * bins).astype(np.int64), bins - 1)
    error = 0.0
    for b in range(bins):
        members = which == b
        if members.any():
            error += members.mean() * abs(y[members].mean() - s[members].mean())
    return float(error)


def binomial_cdf(k: int, n: int, p: float) -> float:
    """P(Binomial(n, p) <= k): the pmf by its recurrence in log space, summed as it goes (O(k); the coefficients
    of n in the thousands overflow floats, and p**n underflows)."""
    if k < 0:
        return 0.0
    if k >= n or p <= 0.0:
        return 1.0
    if p >= 1.0:
        return 0.0
    log_ratio = math.log(p) - math.log1p(-p)
    log_pmf = n * math.log1p(-p)  # j = 0
    log_total = log_pmf
    for j in range(k):  # pmf(j + 1) = pmf(j) * (n - j) / (j + 1) * p / (1 - p)
        log_pmf += math.log(n - j) - math.log(j + 1) + log_ratio
        high, low = max(log_total, log_pmf), min(log_total, log_pmf)
        log_total = high + math.log1p(math.exp(low - high))
    return min(1.0, math.exp(log_total))


def exceedances_allowed(real_count: int, target_fpr: float, confidence: float | None = None) -> int:
    """How many of ``real_count`` validation real images may score at or above the ``ai-generated`` threshold.

    ``confidence`` None: floor(target_fpr x n), the empirical quantile. Its promise holds on validation only: on new
    real images of the same kind the false-positive rate exceeds the target about half the time.

    ``confidence`` c: the Neyman-Pearson umbrella rule (Tong, Feng & Li, 2018): the largest r such that the threshold
    above the (r+1)-th highest real score has a true false-positive rate above ``target_fpr`` with probability at
    most 1 - c, i.e. P(Binomial(n, target_fpr) <= r) <= 1 - c, for real images drawn i.i.d. like validation's. It
    never allows more than the quantile (a c under ~0.5 would). When even r = 0 does not reach 1 - c
    (n < log(1 - c) / log(1 - target_fpr): 59 for 5 % at 95 %), 0: the threshold then sits above every validation
    real score and :func:`fpr_violation_probability` says how weak the promise is.
    """
    if real_count <= 0:
        return 0
    plain = int(np.floor(target_fpr * real_count + 1e-9))
    if confidence is None:
        return plain
    allowed = 0
    for r in range(1, plain + 1):  # the CDF grows with r: stop at the first r past the bound
        if binomial_cdf(r, real_count, target_fpr) > 1.0 - confidence:
            break
        allowed = r
    return allowed


def fpr_violation_probability(real_count: int, allowed: int, target_fpr: float) -> float:
    """P(true false-positive rate > ``target_fpr``) for the threshold that ``allowed`` of ``real_count`` i.i.d.
    validation real images reach (the umbrella rule's bound; ~0.5 for the empirical quantile)."""
    return binomial_cdf(allowed, real_count, target_fpr)


def threshold_at_fpr(labels, scores, target_fpr: float, confidence: float | None = None) -> float:
    """The lowest threshold whose false-positive rate on the real images (label 0) is <= ``target_fpr``: on these
    images (``confidence`` None), or on new ones like them with probability >= ``confidence``
    (:func:`exceedances_allowed`).

    With k real scores allowed at or above it, the threshold sits just above the (k+1)-th highest real score:
    np.nextafter of it. Returns nan without real images.
    """
    y, s = _arrays(labels, scores)
    real = np.sort(s[y == 0])[::-1]
    if real.size == 0:
        return float("nan")
    allowed = exceedances_allowed(real.size, target_fpr, confidence)
    if allowed >= real.size:
        return float(real[-1])
    return float(np.nextafter(real[allowed], np.inf))


@dataclass
class PixelCounts:
    """Pixel confusion counts summed over a set; F1 and IoU of the foreground (mask = 1) class."""

    tp: int = 0
    fp: int = 0
    fn: int = 0

    def update(self, predicted, target, threshold: float = 0.5) -> None:
        p = np.asarray(predicted) >= threshold
        t = np.asarray(target) >= 0.5
        self.tp += int(np.sum(p & t))
        self.fp += int(np.sum(p & ~t))
        self.fn += int(np.sum(~p & t))

    @property
    def f1(self) -> float:
        denominator = 2 * self.tp + self.fp + self.fn
        return 2 * self.tp / denominator if denominator else float("nan")

    @property
    def iou(self) -> float:
        denominator = self.tp + self.fp + self.fn
        return self.tp / denominator if denominator else float("nan")


def image_metrics(labels, scores, threshold: float = 0.5) -> dict[str, float | int]:
    """Every image-level metric in one dict (the evaluation report and the training log both use it)."""
    y, _ = _arrays(labels, scores)
    return {
        "count": int(y.size),
        "real": int((y == 0).sum()),
        "ai": int((y == 1).sum()),
        "accuracy": accuracy(labels, scores, threshold),
        "balanced_accuracy": balanced_accuracy(labels, scores, threshold),
        "ap": average_precision(labels, scores),
        "roc_auc": roc_auc(labels, scores),
        "ece": expected_calibration_error(labels, scores),
        "threshold_fpr_1pct": threshold_at_fpr(labels, scores, 0.01),
        "threshold_fpr_5pct": threshold_at_fpr(labels, scores, 0.05),
    }


MASK_LEVELS = 256  # masks cross the wire and are stored as uint8


def _above(histogram: np.ndarray) -> np.ndarray:
    """(..., 256) counts per uint8 value -> (..., 256) counts of values strictly above each level k."""
    return histogram[..., ::-1].cumsum(axis=-1)[..., ::-1] - histogram


@dataclass
class MaskThresholdEvidence:
    """What validation says about the mask thresholds, at every uint8 level at once (serving flags a mask pixel when
    its value is above :func:`gamma.verdict.mask_level` of ``mask_pixel``).

    ``positive``/``negative`` (2, 256): seen mask pixels per predicted value whose target is / is not flagged, pooled
    over the images (channel 0 the AI mask, 1 the manipulation mask). ``area_curves`` (images, 256): per image, the
    manipulated area serving reports (:func:`gamma.tiling.tile_area`: the largest flagged share of any one tile's own
    mask) when pixels above level k are flagged.
    ``manipulated``: per image, whether its target manipulation mask flags any pixel; ``labels``: its class.
    """

    positive: np.ndarray = field(default_factory=lambda: np.zeros((2, MASK_LEVELS), np.int64))
    negative: np.ndarray = field(default_factory=lambda: np.zeros((2, MASK_LEVELS), np.int64))
    area_curves: list[np.ndarray] = field(default_factory=list)
    manipulated: list[bool] = field(default_factory=list)
    labels: list[int] = field(default_factory=list)

    def add(
        self, label: int, predicted: tuple[np.ndarray, np.ndarray], targets: tuple[np.ndarray, np.ndarray],
        seen: np.ndarray, tile_manipulation_masks: np.ndarray,
    ) -> None:  # fmt: skip
        """One image: uint8 stitched masks (AI, manipulation), their targets as flagged shares per cell (0..1), the
        seen cells, and the uint8 manipulation mask of each tile (N, h, w), as serving measures its area on them."""
        for channel in (0, 1):
            values = np.asarray(predicted[channel], np.uint8)[seen]
            flagged = np.asarray(targets[channel])[seen] >= 0.5  # as PixelCounts counts a target pixel
            self.positive[channel] += np.bincount(values[flagged], minlength=MASK_LEVELS)
            self.negative[channel] += np.bincount(values[~flagged], minlength=MASK_LEVELS)
        curves = [
            _above(np.bincount(tile.ravel(), minlength=MASK_LEVELS)) / max(tile.size, 1)
            for tile in np.asarray(tile_manipulation_masks, np.uint8)
        ]
        self.area_curves.append(np.max(curves, axis=0) if curves else np.zeros(MASK_LEVELS))
        self.manipulated.append(bool((np.asarray(targets[1]) > 0).any()))
        self.labels.append(int(label))

    def pixel_f1(self, channel: int, level: int) -> float:
        """Pixel F1 of one mask over all seen validation pixels when values above ``level`` are flagged."""
        tp = _above(self.positive[channel])[level]
        fp = _above(self.negative[channel])[level]
        fn = self.positive[channel].sum() - tp
        denominator = 2 * tp + fp + fn
        return float(2 * tp / denominator) if denominator else float("nan")

    def areas(self, level: int) -> np.ndarray:
        """Per image, the manipulated area serving would report at ``level``."""
        return np.array([curve[level] for curve in self.area_curves], dtype=np.float64)

    def to_dict(self) -> dict[str, Any]:
        return {"positive": self.positive.tolist(), "negative": self.negative.tolist(),
                "area_curves": [c.tolist() for c in self.area_curves],
                "manipulated": self.manipulated, "labels": self.labels}  # fmt: skip

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> MaskThresholdEvidence:
        return cls(
            positive=np.asarray(data["positive"], np.int64),
            negative=np.asarray(data["negative"], np.int64),
            area_curves=[np.asarray(c, np.float64) for c in data["area_curves"]],
            manipulated=[bool(m) for m in data["manipulated"]],
            labels=[int(label) for label in data["labels"]],
        )
