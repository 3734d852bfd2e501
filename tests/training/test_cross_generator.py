"""training/cross_generator.py: generator families from source ids, the leave-one-out split (a pure function),
and an end-to-end run with the frozen baseline on a tiny manifest folder (skipped without the EfficientNet-Lite0
wheel; seconds)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from tests.training.planted import CASTS, require_frozen_encoder, row, write_image, write_manifest
from training import cross_generator
from training.cross_generator import generator_of

# generator -> (ComfyUI template stem, colour cast); the manifests carry no "generator" field, so it is derived
GENERATORS = {"flux": ("flux_dev_full_text_to_image", "red"), "hidream": ("hidream_i1_dev", "green"),
              "stable-diffusion": ("sdxl_simple_example", "blue")}  # fmt: skip
PER_SPLIT = {"train": (3, 10), "val": (2, 8), "test": (2, 8)}  # (sources per generator, real photos)


@pytest.fixture(scope="module")
def recipe(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("recipe")
    rng = np.random.default_rng(0)
    for split, (per_generator, reals) in PER_SPLIT.items():
        rows = []
        for i in range(reals):
            name = f"{split}-real-{i}"
            rows.append(row(write_image(root, name, rng), 0, "real", f"deb:{name}"))
        for generator, (template, cast) in GENERATORS.items():
            for i in range(per_generator):
                image = write_image(root, f"{generator}-{split}-{i}", rng, CASTS[cast])
                rows.append(row(image, 1, "synthetic", f"comfyui:{template}-{split}{i}"))
        if split == "train":  # an edited real photo: label 1, no generator family; stays in every fold's training
            rows.append(row(write_image(root, "train-inpaint", rng, CASTS["red"]), 1, "inpaint", "deb:train-real-0"))
        write_manifest(root, split, rows)
    return root


def test_families_from_source_ids_and_the_row_field_wins() -> None:
    assert generator_of({"label": 1, "source": "comfyui:flux1_krea_dev-1"}) == "flux"
    assert generator_of({"label": 1, "source": "comfyui:image_flux2_text_to_image_9b-1"}) == "flux"  # FLUX.2 too
    assert generator_of({"label": 1, "source": "comfyui:sd3.5_simple_example-1"}) == "stable-diffusion"
    assert generator_of({"label": 1, "source": "comfyui:hidream_i1_fast-1"}) == "hidream"
    assert generator_of({"label": 1, "source": "comfyui:x", "generator": "sdxl"}) == "stable-diffusion"  # row wins
    assert generator_of({"label": 1, "source": "comfyui:hidream_i1_fast-1", "generator": "qwen"}) == "qwen"
    assert generator_of({"label": 0, "source": "deb:x"}) == ""


def test_leave_one_out_excludes_the_generator_from_training(recipe: Path) -> None:
    rows = cross_generator.load_rows(recipe)
    assert cross_generator.generator_counts(rows)["flux"] == {"rows": 7, "sources": 7}
    assert cross_generator.choose_generators(rows, top=2, min_sources=7) == ["flux", "hidream"]
    assert cross_generator.choose_generators(rows, top=4, min_sources=8) == []
    by_image = {r.sample.image: r for r in rows}
    split = cross_generator.leave_one_out(rows, "hidream")
    learned = split.train + split.val
    assert not any(by_image[s.image].generator == "hidream" for s in learned)
    assert {by_image[s.image].split for s in split.train} == {"train"}
    assert {by_image[s.image].split for s in split.val} == {"val"}
    # every real photo and every other generator's train rows (and the inpainted image) stay in training
    assert sum(1 for s in split.train if s.label == 0) == PER_SPLIT["train"][1]
    assert {by_image[s.image].generator for s in split.train if s.label == 1} == {"flux", "stable-diffusion", ""}
    heldout_ai = [by_image[s.image] for s in split.heldout if s.label == 1]
    assert len(heldout_ai) == 7 and {r.generator for r in heldout_ai} == {"hidream"}
    assert {r.split for r in heldout_ai} == {"train", "val", "test"}
    heldout_real = [by_image[s.image] for s in split.heldout if s.label == 0]
    assert {(r.split, r.kind) for r in heldout_real} == {("test", "real")} and len(heldout_real) == 8
    reference_ai = [by_image[s.image] for s in split.reference if s.label == 1]
    assert {(r.split, r.generator) for r in reference_ai} == {("test", "flux"), ("test", "stable-diffusion")}
    assert not set(split.heldout) & set(learned) and not set(split.reference) & set(learned)
    assert split.counts() == {"train": 10 + 6 + 1, "val": 8 + 4, "heldout_ai": 7, "heldout_real": 8,
                              "reference_ai": 4}  # fmt: skip
    assert cross_generator.leave_one_out(rows, "hidream") == split  # pure: same rows, same answer


def test_end_to_end_with_the_baseline(recipe: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    require_frozen_encoder()
    out = tmp_path / "cross.json"
    cross_generator.main(["--data", str(recipe), "--json", str(out), "--top", "2", "--min-sources", "7", "--coverage",
                          "centre", "--threads", "1", "--no-progress", "--out", str(tmp_path / "runs"), "--baseline",
                          "--independent", str(recipe / "test.jsonl")])  # fmt: skip
    report = json.loads(out.read_text())
    # the ordinary-split baseline rides along on the same feature cache; on the same test set it scores the same
    assert report["baseline"]["counts"]["test"] == report["baseline_independent"]["counts"]["test"]
    assert report["baseline"]["test"]["roc_auc"] == report["baseline_independent"]["test"]["roc_auc"]
    assert report["generators"] == ["flux", "hidream"] and len(report["results"]) == 2
    for entry in report["results"]:
        (learner,) = entry["learners"]  # GAMMA only with --gamma-minutes > 0
        assert learner["learner"] == "baseline"
        assert learner["heldout"]["ai"] == 7 and learner["heldout"]["real"] == 8
        assert learner["reference"]["ai"] == 4 and learner["reference"]["real"] == 8
        assert 0.0 <= learner["heldout"]["roc_auc"] <= 1.0 and 0.0 <= learner["reference"]["roc_auc"] <= 1.0
    assert not (tmp_path / "runs").exists()
    printed = capsys.readouterr().out
    assert "held-out ROC-AUC" in printed and "hidream" in printed


def test_gamma_only_folds_write_the_report_after_every_fold(
    recipe: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``--no-fold-baseline`` runs no frozen encoder at all, and a stopped run keeps the folds it finished: when the
    second fold starts, the JSON on disk already holds the first (``complete: false``). GAMMA's training is replaced
    by a recorder here; its Trainer has its own tests."""
    out = tmp_path / "cross.json"
    seen: list[tuple[str, int, dict]] = []

    def fake_run_gamma(split: cross_generator.LeaveOut, folder: Path, **kwargs: object) -> dict:
        on_disk = json.loads(out.read_text()) if out.exists() else None
        seen.append((split.generator, len(split.train), on_disk))
        report = {"roc_auc": 0.5, "balanced_accuracy_at_threshold": 0.5, "fpr_at_threshold": 0.0}
        return {"learner": "gamma", "minutes": kwargs["minutes"], "threshold": 0.5, "heldout": report,
                "reference": report}  # fmt: skip

    def no_encoder(*args: object, **kwargs: object) -> None:
        raise AssertionError("a GAMMA-only run must not build the frozen feature extractor")

    monkeypatch.setattr(cross_generator, "run_gamma", fake_run_gamma)
    monkeypatch.setattr(cross_generator.baseline, "FeatureExtractor", no_encoder)
    report = cross_generator.main(["--data", str(recipe), "--json", str(out), "--top", "2", "--min-sources", "7",
                                   "--gamma-minutes", "0.5", "--no-fold-baseline", "--no-progress",
                                   "--out", str(tmp_path / "runs")])  # fmt: skip
    assert [generator for generator, _, _ in seen] == ["flux", "hidream"]
    assert seen[0][2] is None  # nothing written before the first fold ends
    first_on_disk = seen[1][2]
    assert first_on_disk is not None and first_on_disk["complete"] is False
    assert [entry["generator"] for entry in first_on_disk["results"]] == ["flux"]
    final = json.loads(out.read_text())
    assert final["complete"] is True and final == json.loads(json.dumps(report, default=float))
    assert final["settings"]["fold_baseline"] is False
    assert [[learner["learner"] for learner in entry["learners"]] for entry in final["results"]] == [["gamma"]] * 2
    assert not out.with_name(out.name + ".partial").exists()


def test_nothing_to_run_is_a_one_line_usage_error(recipe: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as stopped:
        cross_generator.main(["--data", str(recipe), "--no-fold-baseline"])
    assert stopped.value.code == 2
    assert "leaves nothing to run" in capsys.readouterr().err


def test_gamma_learner_trains_on_the_fold_and_scores_through_serving(recipe: Path, tmp_path: Path) -> None:
    """One real GAMMA fold (gamma-effl0 from the ImageNet wheel, one tiny epoch at 64 px): it trains on the fold's
    images only, scores held-in val / held-out / reference through the serving contract, and its run names the
    fold it learned from. Numbers are not asserted: one epoch on a few dozen images learns nothing dependable."""
    require_frozen_encoder()
    out = tmp_path / "cross.json"
    fast = ["--set", "train_crop=64", "--set", "val_crop=64", "--set", "batch_size=8", "--set", "micro_batch=8",
            "--set", "num_workers=0", "--set", "max_epochs=1", "--set", "epoch_fraction=1.0"]  # fmt: skip
    report = cross_generator.main(["--data", str(recipe), "--json", str(out), "--generator", "hidream",
                                   "--gamma-minutes", "10", "--no-fold-baseline", "--threads", "1", "--no-progress",
                                   "--out", str(tmp_path / "runs"), *fast])  # fmt: skip
    (entry,) = report["results"]
    assert entry["counts"]["train"] == 3 * 2 + 10 + 1  # flux and stable-diffusion train images, reals, the inpaint
    (learner,) = entry["learners"]
    assert learner["learner"] == "gamma" and learner["minutes"] == 10
    assert 0.0 <= learner["threshold"] <= 1.0
    assert (learner["heldout"]["ai"], learner["heldout"]["real"]) == (7, 8)
    assert (learner["reference"]["ai"], learner["reference"]["real"]) == (4, 8)
    assert 0.0 <= learner["heldout"]["roc_auc"] <= 1.0 and 0.0 <= learner["reference"]["roc_auc"] <= 1.0
    run = tmp_path / "runs" / "hidream"
    assert (run / "checkpoint" / "model.safetensors").is_file()
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["data"] == {"leave_one_generator_out": "hidream", "manifest_dir": str(recipe)}
    assert metrics["data_counts"] == {"train": 17, "val": 12}
    assert metrics["run"]["epochs"] == 1
