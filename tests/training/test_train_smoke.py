"""train.py end to end on a tiny synthetic set: it learns, it resumes, and it writes a loadable checkpoint."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from gamma.weights import load_checkpoint
from tests.training.synthetic import write_pattern_set
from training import train

# 64-px crops, one micro-batch per step, no early stop; lr 3e-4 (the recipe's 1e-4 needs ~3x the steps)
FAST = ["--set", "train_crop=64", "--set", "val_crop=64", "--set", "micro_batch=16", "--set", "num_workers=0",
        "--set", "patience=50", "--set", "lr=0.0003", "--set", "max_minutes=0", "--no-progress"]  # fmt: skip


@pytest.fixture(scope="module")
def pattern_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_pattern_set(tmp_path_factory.mktemp("pattern"))


def test_training_learns_the_artefact(pattern_data: Path, tmp_path: Path) -> None:
    torch.set_num_threads(2)
    # no wall-clock bound here: speed belongs in bench/, the suite must pass on a busy machine
    summary = train.main(["--preset", "local-b0", "--data", str(pattern_data), "--out", str(tmp_path / "run"),
                          "--set", "max_epochs=14", *FAST])  # fmt: skip
    history = json.loads((tmp_path / "run" / "metrics.json").read_text())["history"]
    first, last = history[0]["train"]["loss"], min(h["train"]["loss"] for h in history[-3:])
    assert last < 0.8 * first, f"training loss did not drop: {first:.3f} -> {last:.3f}"
    val = summary["metrics"]["val"]
    assert val["accuracy"] >= 0.75, f"val accuracy {val['accuracy']:.2f} (chance 0.5)"
    assert val["roc_auc"] >= 0.85
    checkpoint = load_checkpoint(tmp_path / "run" / "checkpoint")
    assert checkpoint.version == 1 and checkpoint.metadata["preset"] == "local-b0"
    assert checkpoint.metadata["data_counts"] == {"train": 48, "val": 24}


def test_resume_continues_from_the_saved_epoch(pattern_data: Path, tmp_path: Path) -> None:
    tiny = ["--preset", "local-b0", "--data", str(pattern_data), "--out", str(tmp_path / "run"), *FAST,
            "--set", "epoch_fraction=0.35"]  # fmt: skip
    train.main([*tiny, "--set", "max_epochs=1"])
    state = torch.load(tmp_path / "run" / train.STATE_FILE, weights_only=True)
    assert state["epoch"] == 1
    train.main([*tiny, "--set", "max_epochs=2", "--resume"])
    history = json.loads((tmp_path / "run" / "metrics.json").read_text())["history"]
    assert [h["epoch"] for h in history] == [1, 2]  # epoch 1 was not trained again


def test_init_from_starts_at_a_checkpoints_weights_and_refuses_another_model(
    pattern_data: Path, tmp_path: Path
) -> None:
    """--init-from fine-tunes: the run starts at the given checkpoint's weights (not the preset's initialisation),
    records where it started, and refuses a checkpoint of another model preset."""
    from gamma.config import preset
    from gamma.model import GammaModel
    from gamma.weights import save_checkpoint
    from training.config import TrainConfig, load_splits

    torch.manual_seed(123)
    source = GammaModel(preset("gamma-b0"))
    save_checkpoint(source, tmp_path / "start", {"name": "start", "version": 3})
    config = TrainConfig.named("local-b0")
    splits = load_splits(config, pattern_data)
    info = train.distributed.setup()
    trainer = train.Trainer(config, splits, tmp_path / "run", info, "local-b0", progress=False)
    trainer.init_from(str(tmp_path / "start"))
    for name, value in source.state_dict().items():
        assert torch.equal(trainer.model.state_dict()[name], value), name
    assert trainer.initialised_from is not None and "v3" in trainer.initialised_from
    save_checkpoint(GammaModel(preset("gamma-effl0")), tmp_path / "other", {"name": "other", "version": 1})
    with pytest.raises(ValueError, match="gamma-effl0"):
        trainer.init_from(str(tmp_path / "other"))
