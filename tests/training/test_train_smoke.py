"""train.py end to end on a tiny synthetic set: it learns, it resumes, and it writes a loadable checkpoint."""

from __future__ import annotations

import itertools
import json
import math
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
    assert checkpoint.metadata["data"] == {"manifest_dir": str(pattern_data)}  # --data, not the preset's folder


def test_resume_continues_from_the_saved_epoch(pattern_data: Path, tmp_path: Path) -> None:
    tiny = ["--preset", "local-b0", "--data", str(pattern_data), "--out", str(tmp_path / "run"), *FAST,
            "--set", "epoch_fraction=0.35"]  # fmt: skip
    train.main([*tiny, "--set", "max_epochs=1"])
    state = torch.load(tmp_path / "run" / train.STATE_FILE, weights_only=True)
    assert state["epoch"] == 1
    train.main([*tiny, "--set", "max_epochs=2", "--resume"])
    history = json.loads((tmp_path / "run" / "metrics.json").read_text())["history"]
    assert [h["epoch"] for h in history] == [1, 2]  # epoch 1 was not trained again


def test_keep_epochs_saves_every_epochs_validated_weights_as_a_checkpoint(pattern_data: Path, tmp_path: Path) -> None:
    from gamma.weights import load_checkpoint

    run = tmp_path / "run"
    train.main(["--preset", "local-b0", "--data", str(pattern_data), "--out", str(run), *FAST,
                "--set", "epoch_fraction=0.35", "--set", "max_epochs=2", "--set", "keep_epochs=true"])  # fmt: skip
    epochs = sorted(p.name for p in (run / train.EPOCHS_DIR).iterdir())
    assert epochs == ["01", "02"]
    last = torch.load(run / train.STATE_FILE, weights_only=True)["model"]
    kept = load_checkpoint(run / train.EPOCHS_DIR / "02").model.state_dict()
    assert all(torch.equal(kept[k], v) for k, v in last.items())  # epoch 2's folder holds the weights it ended with
    first = load_checkpoint(run / train.EPOCHS_DIR / "01").model.state_dict()
    assert any(not torch.equal(first[k], v) for k, v in last.items())


def test_init_from_starts_at_a_checkpoints_weights_and_refuses_another_model(
    pattern_data: Path, tmp_path: Path
) -> None:
    """--init-from fine-tunes: the run starts at the given checkpoint's weights (not the preset's initialisation),
    records where it started, and refuses a checkpoint of another model preset."""
    import dataclasses

    from gamma.config import preset
    from gamma.model import GammaModel
    from gamma.weights import save_checkpoint
    from training.config import TrainConfig, load_splits

    torch.manual_seed(123)
    source = GammaModel(preset("gamma-b0"))
    save_checkpoint(source, tmp_path / "start", {"name": "start", "version": 3, "train_config": {"seed": 7}})
    config = TrainConfig.named("local-b0")
    splits = load_splits(config, pattern_data)
    info = train.distributed.setup()
    trainer = train.Trainer(config, splits, tmp_path / "run", info, "local-b0", progress=False)
    trainer.init_from(str(tmp_path / "start"))
    for name, value in source.state_dict().items():
        assert torch.equal(trainer.model.state_dict()[name], value), name
    assert trainer.initialised_from is not None and "v3" in trainer.initialised_from
    same_seed = train.Trainer(
        dataclasses.replace(config, seed=7), splits, tmp_path / "r7", info, "local-b0", progress=False
    )
    with pytest.warns(UserWarning, match="replays"):  # its epochs would open with the start's own draws
        same_seed.init_from(str(tmp_path / "start"))
    save_checkpoint(GammaModel(preset("gamma-effl0")), tmp_path / "other", {"name": "other", "version": 1})
    with pytest.raises(ValueError, match="gamma-effl0"):
        trainer.init_from(str(tmp_path / "other"))


def test_cosine_schedule_falls_to_zero_over_max_epochs(pattern_data: Path, tmp_path: Path) -> None:
    import dataclasses

    from training.config import TrainConfig, load_splits

    config = dataclasses.replace(TrainConfig.named("local-b0"), lr=1e-3, lr_schedule="cosine", max_epochs=4,
                                 micro_batch=8, batch_size=16, epoch_fraction=0.5)  # fmt: skip
    splits = load_splits(config, pattern_data)
    trainer = train.Trainer(config, splits, tmp_path / "run", train.distributed.setup(), "local-b0", progress=False)
    steps = trainer.steps_per_epoch()
    assert steps == len(trainer.epoch_indices()) // 16 and steps > 0
    total = 4 * steps
    assert trainer.learning_rate(0) == pytest.approx(1e-3)
    assert trainer.learning_rate(total // 2) == pytest.approx(0.5e-3, rel=0.05)
    assert trainer.learning_rate(total) == pytest.approx(0.0, abs=1e-12)
    assert trainer.learning_rate(10 * total) == pytest.approx(0.0, abs=1e-12)  # never rises again
    rates = [trainer.learning_rate(s) for s in range(total + 1)]
    assert all(a >= b for a, b in itertools.pairwise(rates))
    constant = train.Trainer(dataclasses.replace(config, lr_schedule="constant"), splits, tmp_path / "c",
                             train.distributed.setup(), "local-b0", progress=False)  # fmt: skip
    assert constant.learning_rate(total) == 1e-3
    with pytest.raises(ValueError, match="lr_schedule"):
        dataclasses.replace(config, lr_schedule="step")


def test_weight_average_is_what_is_validated_saved_and_resumed(pattern_data: Path, tmp_path: Path) -> None:
    """With weight_average the saved model is the moving average, not the last raw weights: it lies between the
    start and the raw weights, the run's optimiser sets the scheduled rate, and a resumed run continues the
    average instead of restarting it from the raw weights."""
    from safetensors.torch import load_file

    run = tmp_path / "run"
    args = ["--preset", "local-b0", "--data", str(pattern_data), "--out", str(run), *FAST,
            "--set", "weight_average=0.9", "--set", "lr_schedule=cosine"]  # fmt: skip
    train.main([*args, "--set", "max_epochs=1"])
    state = torch.load(run / train.STATE_FILE, weights_only=True)
    assert state["step"] > 0 and "average" in state
    raw, averaged = state["model"], state["average"]
    saved = load_file(str(run / "checkpoint" / "model.safetensors"))
    weights = [k for k in saved if k.endswith("weight") and saved[k].dtype == torch.float32]
    assert all(torch.equal(saved[k], averaged[f"module.{k}"]) for k in weights)
    assert sum(not torch.equal(saved[k], raw[k]) for k in weights) > len(weights) // 2  # the average lags the raw
    counted = int(averaged["n_averaged"])
    assert counted == state["step"]
    with pytest.raises(ValueError, match="same weight_average"):  # best/ was raced on averaged weights
        train.main([*args, "--set", "max_epochs=2", "--set", "weight_average=0", "--resume"])
    train.main([*args, "--set", "max_epochs=2", "--resume"])
    resumed = torch.load(run / train.STATE_FILE, weights_only=True)
    assert int(resumed["average"]["n_averaged"]) == resumed["step"] > counted  # continued, not restarted
    # the optimiser ran the schedule: its last step (of `step`, all in one epoch of max_epochs=1) used the cosine rate
    last = state["step"] - 1
    used = state["optimizer"]["param_groups"][0]["lr"]
    assert used == pytest.approx(3e-4 * 0.5 * (1 + math.cos(math.pi * last / state["step"]))) and used < 3e-4


def test_frozen_encoder_norm_keeps_the_encoders_statistics_and_trains_the_rest(
    pattern_data: Path, tmp_path: Path
) -> None:
    """With frozen_encoder_norm the encoder's BatchNorm statistics stay those it started with (a fresh layer's
    zeros and ones here) while its weights and the decoders' BatchNorm statistics still move; without it, they move."""
    from safetensors.torch import load_file

    def trained(frozen: bool) -> dict[str, torch.Tensor]:
        out = tmp_path / f"frozen-{frozen}"
        train.main(["--preset", "local-b0", "--data", str(pattern_data), "--out", str(out), *FAST,
                    "--set", "model=gamma-effl0", "--set", "encoder_init=", "--set", "epoch_fraction=0.35",
                    "--set", "max_epochs=1", "--set", f"frozen_encoder_norm={str(frozen).lower()}"])  # fmt: skip
        return load_file(str(out / "checkpoint" / "model.safetensors"))

    frozen, free = trained(True), trained(False)
    encoder_means = [k for k in frozen if k.startswith("encoder.") and k.endswith("running_mean")]
    decoder_means = [k for k in frozen if k.startswith("ai_decoder.") and k.endswith("running_mean")]
    assert encoder_means and decoder_means
    assert all(torch.equal(frozen[k], torch.zeros_like(frozen[k])) for k in encoder_means)
    assert all(torch.equal(frozen[k.replace("mean", "var")], torch.ones_like(frozen[k])) for k in encoder_means)
    assert all(not torch.equal(frozen[k], torch.zeros_like(frozen[k])) for k in decoder_means)
    assert all(not torch.equal(free[k], torch.zeros_like(free[k])) for k in encoder_means)
    # the frozen layers' affine weights (a fresh layer's ones) were still learned
    scales = [frozen[k.replace("running_mean", "weight")] for k in encoder_means]
    assert any(not torch.equal(scale, torch.ones_like(scale)) for scale in scales)
