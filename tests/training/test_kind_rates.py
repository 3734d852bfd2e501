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
