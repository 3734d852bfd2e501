"""training/kind_rates.py: per-kind shares from saved scores, with a checkpoint's thresholds."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from gamma.verdict import VerdictThresholds
from training.kind_rates import kind_rates


def _write(tmp_path: Path, kinds: list[str], labels: list[int], scores: list[float]) -> tuple[Path, Path]:
    manifest, saved = tmp_path / "val.jsonl", tmp_path / "scores.json"
    manifest.write_text("".join(json.dumps({"image": f"{i}.png", "label": label, "kind": kind}) + "\n"
                                for i, (kind, label) in enumerate(zip(kinds, labels))))  # fmt: skip
    saved.write_text(json.dumps({"labels": labels, "scores": scores}))
    return manifest, saved


def test_shares_per_kind_follow_the_thresholds(tmp_path: Path) -> None:
    kinds = ["real", "real", "feathered_splicing", "feathered_splicing", "synthetic"]
    manifest, saved = _write(tmp_path, kinds, [0, 0, 0, 0, 1], [0.1, 0.95, 0.6, 0.2, 0.99])
    # ai-generated from p >= 0.9, needs-review above 0.5
    rates = kind_rates(manifest, saved, VerdictThresholds(ai_probability=0.7, review_band=0.2))
    assert rates["real"] == pytest.approx(
        {"label": 0, "count": 2, "mean": 0.525, "above_half": 0.5, "ai_generated": 0.5, "needs_review": 0.0}
    )
    assert rates["feathered_splicing"]["needs_review"] == 0.5 and rates["feathered_splicing"]["ai_generated"] == 0.0
    assert rates["synthetic"]["ai_generated"] == 1.0
    assert "ai_generated" not in kind_rates(manifest, saved)["real"]  # without thresholds: scores only


def test_scores_of_another_manifest_are_refused(tmp_path: Path) -> None:
    manifest, saved = _write(tmp_path, ["real", "synthetic"], [0, 1], [0.2, 0.8])
    saved.write_text(json.dumps({"labels": [1, 0], "scores": [0.2, 0.8]}))
    with pytest.raises(SystemExit, match="row for row"):
        kind_rates(manifest, saved)


def test_with_mask_evidence_the_manipulated_share_is_decided_as_serving_decides(tmp_path: Path) -> None:
    """Areas at ``manipulated_pixel`` from the saved evidence; an image its AI score calls AI is never manipulated."""
    import numpy as np

    from training.metrics import MaskThresholdEvidence

    kinds, labels, scores = ["real", "splicing", "splicing", "splicing"], [0, 0, 0, 0], [0.1, 0.1, 0.1, 0.95]
    manifest, saved = _write(tmp_path, kinds, labels, scores)
    evidence, clean, zero = MaskThresholdEvidence(), np.zeros((8, 8), np.uint8), np.zeros((8, 8))
    faint, peak = np.full((8, 8), 150, np.uint8), np.zeros((8, 8), np.uint8)
    peak[0, :4] = 250  # 6 % of the tile, confident
    for mask in (faint, faint, peak, peak):
        evidence.add(0, (clean, mask), (zero, zero), np.ones((8, 8), bool), mask[None])
    saved.write_text(json.dumps({"labels": labels, "scores": scores, "masks": evidence.to_dict()}))
    thresholds = VerdictThresholds(ai_probability=0.7, review_band=0.2, manipulated_area=0.05, manipulated_pixel=0.9)
    rates = kind_rates(manifest, saved, thresholds)
    assert rates["real"]["manipulated"] == 0.0  # a wide faint area: nothing above 0.9
    assert rates["splicing"]["manipulated"] == pytest.approx(1 / 3)  # the peak below the band; the AI-scored one not
    at_mask_pixel = kind_rates(manifest, saved, VerdictThresholds(0.7, 0.2, 0.5, 0.05))
    assert at_mask_pixel["real"]["manipulated"] == 1.0


def test_one_scores_file_under_two_checkpoints_is_reported_twice(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The card reads one saved score file under two models' thresholds; neither report may overwrite the other."""
    from types import SimpleNamespace

    from training import kind_rates as module

    manifest, saved = _write(tmp_path, ["real", "real"], [0, 0], [0.1, 0.8])
    thresholds = {"strict": VerdictThresholds(0.9, 0.0), "loose": VerdictThresholds(0.6, 0.0)}
    monkeypatch.setattr(module, "load_checkpoint", lambda path: SimpleNamespace(
        config=SimpleNamespace(thresholds=thresholds[Path(path).name])))  # fmt: skip
    report = module.main([str(manifest), str(saved), str(saved), "--checkpoint", "strict", "--checkpoint", "loose"])
    assert report[f"{saved} @ strict"]["real"]["ai_generated"] == 0.0
    assert report[f"{saved} @ loose"]["real"]["ai_generated"] == 0.5
    with pytest.raises(SystemExit):  # twice without thresholds would say the same thing twice
        module.main([str(manifest), str(saved), str(saved)])
