"""training/contract_choices.py: the candidate image scores read the combined tiles the way their names say."""

from __future__ import annotations

import numpy as np
import pytest

from gamma.tiling import MASK_STRIDE, Coverage, combine_tiles, plan_tiles
from training.contract_choices import image_scores


def test_image_scores_read_the_head_and_the_seen_ai_mask() -> None:
    plan = plan_tiles(256, 256, Coverage.FULL)  # one 256 x 256 tile
    side = 256 // MASK_STRIDE
    ai = np.zeros((1, side, side), np.uint8)
    ai[0, : side // 4, : side // 4] = 255  # a region edit: 1/16 of the pixels certain, the rest clean
    result = combine_tiles(plan, np.array([0.2]), ai, np.zeros_like(ai), mask_pixel=0.5)
    scores = image_scores(result)
    assert scores["classifier"] == pytest.approx(0.2)
    assert scores["ai_mask_mean"] == pytest.approx(1 / 16, abs=1e-3)
    assert scores["ai_mask_q99"] == pytest.approx(1.0)
    # the fusion averages the two logits: between the head (0.2) and the mask mean (1/16)
    logit = lambda p: np.log(p / (1 - p))  # noqa: E731
    expected = 1 / (1 + np.exp(-(logit(0.2) + logit(1 / 16)) / 2))
    assert scores["fused"] == pytest.approx(expected, rel=1e-3)
