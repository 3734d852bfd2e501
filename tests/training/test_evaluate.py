"""evaluate.py on small folders written here, with a random-weight checkpoint: layouts, report shape, the
contract, the robustness sweep and its plots."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from gamma.preprocess import preprocess
from tests.fixtures.models import make_checkpoint
from training import evaluate
from training.data.builders import ViewSpec
from training.data.datasets import GammaDataset, Sample


def _write(path: Path, seed: int, size: tuple[int, int] = (96, 80)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)).save(path)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("ckpt") / "gamma-eval-test"
    make_checkpoint(directory)
    return directory


def test_report_on_real_ai_folders_with_masks_and_sweep(checkpoint: Path, tmp_path: Path) -> None:
    for i in range(3):
        _write(tmp_path / "data" / "real" / f"r{i}.jpg", i)
        _write(tmp_path / "data" / "ai" / f"a{i}.png", 10 + i)
    mask = np.zeros((80, 96), np.uint8)
    mask[:40] = 255
    (tmp_path / "data" / "masks").mkdir()
    Image.fromarray(mask).save(tmp_path / "data" / "masks" / "a0.png")
    plan = {
        k: v[:1] for k, v in evaluate.sweep_plan(jpeg_levels=(30,), blur_levels=(2.0,), scale_levels=(0.5,)).items()
    }
    report = evaluate.evaluate(str(checkpoint), tmp_path / "data", plan=plan, progress=False, batch_size=3)
    overall = report["clean"]["overall"]
    assert overall["count"] == 6 and overall["real"] == 3 and overall["ai"] == 3
    for key in ("accuracy", "balanced_accuracy", "ap", "roc_auc", "ece", "threshold_fpr_1pct", "ai_mask_f1"):
        assert key in overall
    assert 0.0 <= overall["accuracy"] <= 1.0 and set(report["clean"]) == {"overall", "real", "ai"}
    assert [p["level"] for p in report["robustness"]["jpeg_quality"]] == [30]
    assert set(report["size_matched"]) == set(report["clean"]) and report["size_matched"]["overall"]["count"] == 6
    control = report["content_only"]  # the content-only control is on by default
    assert control["size"] == 64 and control["overall"]["count"] == 6 and "roc_auc" in control["overall"]
    pytest.importorskip("matplotlib")
    plots = evaluate.plot_sweep(report["robustness"], tmp_path / "plots")
    assert {p.name for p in plots} >= {"robustness_accuracy.png", "robustness_ap.png"}
    assert all(p.stat().st_size > 1000 for p in plots)
    json.dumps(report, default=float)  # the report is JSON-serialisable


def test_cli_on_genimage_layout(checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    for generator in ("ADM", "VQDM"):
        _write(tmp_path / "gi" / generator / "val" / "ai" / "1.png", 1)
        _write(tmp_path / "gi" / generator / "val" / "nature" / "2.jpg", 2)
    out = tmp_path / "report.json"
    evaluate.main(["--checkpoint", str(checkpoint), "--data", str(tmp_path / "gi"), "--json", str(out),
                   "--no-robustness", "--threads", "1"])  # fmt: skip
    report = json.loads(out.read_text())
    assert set(report["clean"]) == {"overall", "ADM", "VQDM"}
    assert report["clean"]["ADM"]["count"] == 2 and "robustness" not in report
    assert report["content_only"]["overall"]["count"] == 4
    printed = capsys.readouterr().out
    assert "clean" in printed and "size-matched" in printed and "ROC-AUC" in printed and "content-only" in printed
    for group in ("overall", "ADM", "VQDM"):
        assert sum(line.strip("│ ").startswith(group) for line in printed.splitlines()) == 2  # both tables


def test_degradations_happen_before_the_contract(tmp_path: Path) -> None:
    _write(tmp_path / "x.png", 3, (640, 600))
    sample = Sample(tmp_path / "x.png", 0)
    clean = GammaDataset([sample]).tiles(0)[0].pixels
    assert np.array_equal(clean, preprocess((tmp_path / "x.png").read_bytes()).pixels)
    rgb = np.asarray(Image.open(tmp_path / "x.png"))
    assert evaluate.downscale(0.5)(rgb).shape == (300, 320, 3)
    assert (
        np.abs(evaluate.jpeg(30)(rgb).astype(int) - rgb).mean()
        > np.abs(evaluate.jpeg(100)(rgb).astype(int) - rgb).mean()
    )
    assert evaluate.content_only(64)(rgb).shape == rgb.shape
    halved, masks, _ = GammaDataset([sample], degrade=evaluate.downscale(0.5)).tiles(0)
    assert halved.pixels.shape == (1, 3, 288, 320) and masks.shape == (300, 320, 2)  # 320x300, cut to the stride


def test_limit_per_group_is_balanced() -> None:
    samples = [Sample(Path(f"{g}{label}{i}.png"), label, group=g) for g in "ab" for label in (0, 1) for i in range(5)]
    chosen = evaluate.limit_per_group(samples, 2)
    assert len(chosen) == 8 and sum(s.label for s in chosen) == 4


def test_size_matched_variant_gives_both_classes_one_size_range() -> None:
    """A 12 MP photo and a 1024 px square (GenImage-like) both end up with a short side in the shared range;
    what is already smaller is never upscaled; the draw is a function of the pixels (reproducible reports)."""
    low, high = ViewSpec().short_side
    match = evaluate.size_matched()
    rng = np.random.default_rng(0)
    for height, width in ((3000, 4000), (1024, 1024), (600, 900)):
        rgb = rng.integers(0, 255, (height, width, 3), dtype=np.uint8)
        out = match(rgb)
        assert low <= min(out.shape[:2]) <= high
        assert abs(out.shape[1] / out.shape[0] - width / height) < 0.02  # aspect kept
        assert np.array_equal(match(rgb), out)
    small = rng.integers(0, 255, (200, 240, 3), dtype=np.uint8)
    assert match(small) is small
    targets = {min(match(rng.integers(0, 255, (800, 800, 3), dtype=np.uint8)).shape[:2]) for _ in range(12)}
    assert len(targets) > 3  # a spread of sizes, not one fixed size that would itself be a signature


def test_verdict_rates_follow_the_checkpoints_thresholds() -> None:
    """The report says what the shipped thresholds do: the share of real images called ai-generated (the FPR the
    calibration promises) and the review share per class, with the band's edges as gamma.verdict.decide has them."""
    from gamma.verdict import Verdict, VerdictThresholds, decide

    thresholds = VerdictThresholds(ai_probability=0.5, review_band=0.2)  # ai-generated from 0.7, review above 0.3
    labels = np.array([0, 0, 0, 0, 1, 1, 1, 1])
    scores = np.array([0.1, 0.3, 0.5, 0.7, 0.2, 0.69, 0.7, 0.95])
    rates = evaluate.verdict_rates(labels, scores, thresholds)
    assert rates["real"] == {"count": 4, "ai_generated": 0.25, "needs_review": 0.25}
    assert rates["ai"] == {"count": 4, "ai_generated": 0.5, "needs_review": 0.25}
    for label, score in zip(labels, scores):  # the same edges as the served verdict
        verdict = decide(float(score), 0.0, 0.0, thresholds).verdict
        assert (verdict is Verdict.AI_GENERATED) == (score >= 0.7) and (verdict is Verdict.NEEDS_REVIEW) == (
            0.3 < score < 0.7
        ), (label, score, verdict)


def test_mask_scores_flag_pixels_at_the_checkpoints_mask_threshold(tmp_path: Path) -> None:
    """Mask F1 is measured where serving flags pixels: above the checkpoint's ``mask_pixel`` (calibrated since
    version 8), not at a fixed 0.5."""
    from gamma.verdict import VerdictThresholds

    for i in range(2):
        _write(tmp_path / "data" / "ai" / f"a{i}.png", 20 + i)
        _write(tmp_path / "data" / "real" / f"r{i}.jpg", 30 + i)
    f1 = {}
    for pixel in (0.0, 1.0):  # everything flagged / nothing flagged
        directory = tmp_path / f"m{pixel}"
        loaded = make_checkpoint(directory)
        loaded.config.replace(thresholds=VerdictThresholds(mask_pixel=pixel)).to_json(directory / "config.json")
        report = evaluate.evaluate(str(directory), tmp_path / "data", robustness=False, size_matched_variant=False,
                                   content_control=False, progress=False)  # fmt: skip
        assert report["mask_pixel"] == pixel
        f1[pixel] = report["clean"]["overall"]["ai_mask_f1"]
    assert f1[1.0] == 0.0 < f1[0.0]  # the AI images' masks are "all": flagging every pixel finds them
