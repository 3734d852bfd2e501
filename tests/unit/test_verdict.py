"""Verdict rules: one module, thresholds from the checkpoint config."""

from __future__ import annotations

import numpy as np
import pytest

from gamma.verdict import Verdict, VerdictThresholds, decide, judge, mask_area

CLEAN = np.zeros((128, 128), dtype=np.uint8)


def _mask(fraction: float) -> np.ndarray:
    mask = np.zeros((100, 100), dtype=np.uint8)
    mask.flat[: int(fraction * mask.size)] = 255
    return mask


@pytest.mark.parametrize(
    ("probability", "manipulated", "expected"),
    [
        (0.95, 0.0, Verdict.AI_GENERATED),
        (0.95, 0.5, Verdict.AI_GENERATED),  # AI wins over manipulation
        (0.05, 0.0, Verdict.REAL),
        (0.05, 0.005, Verdict.REAL),  # below the manipulated-area threshold (1 %)
        (0.05, 0.2, Verdict.MANIPULATED),
        (0.55, 0.0, Verdict.NEEDS_REVIEW),
        (0.45, 0.3, Verdict.NEEDS_REVIEW),
    ],
)
def test_verdict_table(probability: float, manipulated: float, expected: Verdict) -> None:
    assert judge(probability, CLEAN, _mask(manipulated)).verdict is expected


@pytest.mark.parametrize(
    ("probability", "manipulated", "expected"),
    [
        (0.95, 0.5, Verdict.AI_GENERATED),
        (0.05, 0.01, Verdict.REAL),  # the threshold itself is not above it
        (0.05, 0.0101, Verdict.MANIPULATED),
        (0.41, 0.9, Verdict.NEEDS_REVIEW),
        (0.39, 0.9, Verdict.MANIPULATED),
        (0.61, 0.0, Verdict.AI_GENERATED),
    ],
)
def test_decide_from_areas(probability: float, manipulated: float, expected: Verdict) -> None:
    """What Detector calls: areas already measured (over the pixels the tiles saw), no masks needed."""
    judgement = decide(probability, 0.25, manipulated)
    assert judgement.verdict is expected
    assert (judgement.probability, judgement.ai_area, judgement.manipulated_area) == (probability, 0.25, manipulated)


def test_judge_is_decide_on_mask_areas() -> None:
    t = VerdictThresholds(mask_pixel=0.3, manipulated_area=0.2)
    ai, manipulation = _mask(0.1), _mask(0.3)
    assert judge(0.2, ai, manipulation, t) == decide(0.2, mask_area(ai, 0.3), mask_area(manipulation, 0.3), t)
    assert judge(0.2, ai, manipulation, t).verdict is Verdict.MANIPULATED


def test_areas_are_reported_for_uint8_and_float_masks() -> None:
    judgement = judge(0.9, _mask(0.25), _mask(0.5))
    assert judgement.ai_area == pytest.approx(0.25)
    assert judgement.manipulated_area == pytest.approx(0.5)
    assert mask_area(np.array([[0.2, 0.7], [0.9, 0.4]]), 0.5) == 0.5


def test_thresholds_are_configurable_and_validated() -> None:
    strict = VerdictThresholds(ai_probability=0.8, review_band=0.0)
    assert judge(0.7, CLEAN, CLEAN, strict).verdict is Verdict.REAL
    assert VerdictThresholds.from_dict(strict.to_dict()) == strict
    with pytest.raises(ValueError, match="review_band"):
        VerdictThresholds(review_band=0.6)
    with pytest.raises(ValueError, match="ai_probability"):
        VerdictThresholds(ai_probability=1.5)


def test_manipulated_area_is_measured_at_its_own_pixel_threshold() -> None:
    """A wide faint area does not make an image manipulated when ``manipulated_pixel`` asks for confident pixels;
    a small confident peak does. ``ai_area`` stays at ``mask_pixel``."""
    t = VerdictThresholds(mask_pixel=0.5, manipulated_area=0.02, manipulated_pixel=0.95)
    faint = np.full((10, 10), 0.6)
    peak = faint.copy()
    peak[:1] = 0.99  # 10 % of the pixels
    assert judge(0.1, faint, faint, t).verdict is Verdict.REAL
    assert judge(0.1, faint, faint, t).ai_area == pytest.approx(1.0)
    assert judge(0.1, CLEAN, peak, t).verdict is Verdict.MANIPULATED
    assert judge(0.1, CLEAN, peak, t).manipulated_area == pytest.approx(0.1)


def test_unset_manipulated_pixel_is_mask_pixel_as_older_checkpoints_were_judged() -> None:
    older = VerdictThresholds.from_dict({"ai_probability": 0.6, "review_band": 0.1, "mask_pixel": 0.3,
                                         "manipulated_area": 0.02})  # fmt: skip
    assert older.manipulated_pixel is None and older.manipulated_pixel_threshold == 0.3
    faint = np.full((10, 10), 0.4)
    assert judge(0.1, CLEAN, faint, older).verdict is Verdict.MANIPULATED
    newer = VerdictThresholds(mask_pixel=0.3, manipulated_pixel=0.9)
    assert VerdictThresholds.from_dict(newer.to_dict()) == newer
    with pytest.raises(ValueError, match="manipulated_pixel"):
        VerdictThresholds(manipulated_pixel=1.5)
