"""Metrics against values worked out by hand (and, on random data, against scikit-learn's definitions)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from training import metrics

LABELS = [0, 0, 1, 1]
SCORES = [0.1, 0.4, 0.35, 0.8]


def test_accuracy_and_balanced_accuracy_by_hand() -> None:
    # predictions at 0.5: 0, 0, 0, 1 -> three of four right; TNR 1, TPR 1/2
    assert metrics.accuracy(LABELS, SCORES) == 0.75
    assert metrics.balanced_accuracy(LABELS, SCORES) == 0.75
    # imbalanced: 3 real all right, 1 AI wrong -> accuracy 3/4 but balanced (1 + 0) / 2
    assert metrics.balanced_accuracy([0, 0, 0, 1], [0.1, 0.2, 0.3, 0.4]) == 0.5


def test_roc_auc_by_hand() -> None:
    # positive/negative pairs ranked right: (0.35 > 0.1), (0.8 > 0.1), (0.8 > 0.4); wrong: (0.35 < 0.4)
    assert metrics.roc_auc(LABELS, SCORES) == pytest.approx(3 / 4)
    assert metrics.roc_auc([0, 1], [0.5, 0.5]) == pytest.approx(0.5)  # a tie counts half
    assert math.isnan(metrics.roc_auc([1, 1], [0.2, 0.3]))


def test_average_precision_by_hand() -> None:
    # ranked: 0.8 (AI) P=1 R=1/2; 0.4 (real); 0.35 (AI) P=2/3 R=1 -> 1/2 * 1 + 1/2 * 2/3
    assert metrics.average_precision(LABELS, SCORES) == pytest.approx(0.5 + 1 / 3)
    assert metrics.average_precision([0, 1], [0.5, 0.5]) == pytest.approx(0.5)


def test_expected_calibration_error_by_hand() -> None:
    # one sample per bin: |0 - 0.1|, |0 - 0.4|, |1 - 0.35|, |1 - 0.8|, each weighted 1/4
    assert metrics.expected_calibration_error(LABELS, SCORES) == pytest.approx((0.1 + 0.4 + 0.65 + 0.2) / 4)
    # one bin ([0.5, 0.6)) holding both: |mean label - mean score| = |0.5 - 0.525|
    assert metrics.expected_calibration_error([0, 1], [0.5, 0.55]) == pytest.approx(0.025)


def test_threshold_at_fpr_keeps_the_false_positive_budget() -> None:
    thr = metrics.threshold_at_fpr(LABELS, SCORES, 0.5)  # one of two reals may pass: just above 0.1
    assert 0.1 < thr < 0.1 + 1e-12
    assert metrics.threshold_at_fpr(LABELS, SCORES, 0.01) > 0.4  # no real may pass
    rng = np.random.default_rng(0)
    labels = np.r_[np.zeros(1000, int), np.ones(100, int)]
    scores = rng.random(1100)
    for fpr in (0.01, 0.05):
        thr = metrics.threshold_at_fpr(labels, scores, fpr)
        assert np.mean(scores[labels == 0] >= thr) <= fpr
        # and it is the lowest such threshold: one real more would pass just below it
        assert np.mean(scores[labels == 0] >= np.nextafter(thr, -np.inf)) > fpr or thr == scores[labels == 0].min()


def test_binomial_cdf_by_hand_and_against_scipy() -> None:
    assert metrics.binomial_cdf(0, 3, 0.5) == pytest.approx(1 / 8)
    assert metrics.binomial_cdf(1, 3, 0.5) == pytest.approx(4 / 8)
    assert metrics.binomial_cdf(3, 3, 0.5) == 1.0 and metrics.binomial_cdf(-1, 3, 0.5) == 0.0
    stats = pytest.importorskip("scipy.stats")  # scikit-learn's dependency, in the dev extra
    cases = [(5, 222, 0.05), (11, 222, 0.05), (0, 59, 0.05), (140, 3000, 0.05), (7, 40, 0.2), (2400, 50000, 0.05)]
    for k, n, p in cases:
        assert metrics.binomial_cdf(k, n, p) == pytest.approx(stats.binom.cdf(k, n, p), rel=1e-9)


def test_umbrella_rule_allows_fewer_exceedances_than_the_quantile() -> None:
    # 222 real images (version 4's validation): 11 by the quantile, 5 at 95 % confidence
    assert metrics.exceedances_allowed(222, 0.05) == 11
    assert metrics.exceedances_allowed(222, 0.05, 0.95) == 5
    assert metrics.fpr_violation_probability(222, 5, 0.05) <= 0.05 < metrics.fpr_violation_probability(222, 6, 0.05)
    # 59 images are the fewest for which "no real image above the threshold" gives 95 %; 58 cannot
    assert metrics.exceedances_allowed(59, 0.05, 0.95) == 0 and metrics.fpr_violation_probability(59, 0, 0.05) <= 0.05
    assert metrics.exceedances_allowed(58, 0.05, 0.95) == 0 and metrics.fpr_violation_probability(58, 0, 0.05) > 0.05


def test_umbrella_threshold_keeps_the_target_on_new_images_the_quantile_does_not() -> None:
    """Real scores uniform on [0, 1]: a threshold t has true FPR 1 - t. Over 400 validation draws of 200 real
    images, the quantile's threshold misses 5 % about half the time; the 95 % rule about one time in twenty."""
    rng = np.random.default_rng(0)
    misses = {None: 0, 0.95: 0}
    draws = 400
    for _ in range(draws):
        real = rng.random(200)
        labels, scores = np.r_[np.zeros(200, int), 1], np.r_[real, 0.99]
        for confidence in misses:
            misses[confidence] += 1.0 - metrics.threshold_at_fpr(labels, scores, 0.05, confidence) > 0.05
    assert 0.3 < misses[None] / draws < 0.7
    assert misses[0.95] / draws <= 0.08  # 0.05 plus sampling slack (sd ~0.011)


def test_pixel_f1_and_iou_by_hand() -> None:
    counts = metrics.PixelCounts()
    counts.update([[0.9, 0.2], [0.6, 0.1]], [[1, 1], [0, 0]])  # tp 1, fn 1, fp 1, tn 1
    assert (counts.tp, counts.fp, counts.fn) == (1, 1, 1)
    assert counts.f1 == pytest.approx(0.5)
    assert counts.iou == pytest.approx(1 / 3)
    counts.update([[1.0]], [[1]])  # accumulates over images: tp 2, fp 1, fn 1
    assert counts.f1 == pytest.approx(4 / 6)
    assert math.isnan(metrics.PixelCounts().f1)


def test_ranking_metrics_agree_with_scikit_learn() -> None:
    sk = pytest.importorskip("sklearn.metrics")
    rng = np.random.default_rng(1)
    labels = rng.integers(0, 2, 500)
    scores = np.round(rng.random(500) * 0.6 + labels * 0.3, 2)  # rounded: many ties
    assert metrics.roc_auc(labels, scores) == pytest.approx(sk.roc_auc_score(labels, scores))
    assert metrics.average_precision(labels, scores) == pytest.approx(sk.average_precision_score(labels, scores))
    assert metrics.balanced_accuracy(labels, scores) == pytest.approx(sk.balanced_accuracy_score(labels, scores >= 0.5))
