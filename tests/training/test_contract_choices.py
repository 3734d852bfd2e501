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


def test_the_image_score_choice_runs_end_to_end_on_a_manifest(tmp_path) -> None:
    """``--only image-score`` on a tiny two-class manifest with a random-weight checkpoint: every candidate gets a
    validation and test ROC-AUC, overall and per AI kind, and nothing else is measured."""
    import json

    from tests.fixtures.models import make_checkpoint
    from tests.training.planted import CASTS, row, write_image, write_manifest
    from training import contract_choices

    checkpoint = tmp_path / "ckpt"
    make_checkpoint(checkpoint)
    rng = np.random.default_rng(0)
    for split in ("val", "test"):
        rows = [row(write_image(tmp_path, f"{split}-r{i}", rng), 0, "real", f"r{i}") for i in range(3)]
        red = CASTS["red"]
        rows += [row(write_image(tmp_path, f"{split}-a{i}", rng, red), 1, "synthetic", f"a{i}") for i in range(3)]
        write_manifest(tmp_path, split, rows)
    out = tmp_path / "choices.json"
    contract_choices.main([
        "--checkpoint", str(checkpoint), "--val", str(tmp_path / "val.jsonl"), "--test", str(tmp_path / "test.jsonl"),
        "--only", "image-score", "--threads", "1", "--json", str(out),
    ])  # fmt: skip
    report = json.loads(out.read_text())
    assert set(report) == {"checkpoint", "stride", "image_score_val", "image_score_test"}
    for key in ("image_score_val", "image_score_test"):
        block = report[key]
        assert block["images"] == 6
        assert set(block) == {"images", "classifier", "ai_mask_mean", "ai_mask_q99", "fused"}
        assert all(0.0 <= block[name]["roc_auc"] <= 1.0 for name in ("classifier", "fused"))
        assert set(block["classifier"]["roc_auc_per_ai_kind"]) == {"synthetic"}
