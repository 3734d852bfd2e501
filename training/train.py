"""Train a GAMMA detector: ``python training/train.py --preset local-effl0|paper-b2 [--data D] [--out O] [--resume]``.

The paper's recipe: L = 2 (BCE cls + BCE AI mask) + BCE manipulation mask; AdamW lr 1e-4; batch 16 (by gradient
accumulation); every epoch a fresh random share of the data; early stopping on validation accuracy (min delta 0.01,
patience 5); RandomCrop with 1-px padding for training, CenterCrop for validation, after the serving contract's
JPEG-96 alignment; Wang-2020 augmentations. On CUDA: bf16 autocast and channels_last. Under ``torchrun`` it
runs DDP (NCCL on GPUs, gloo on CPU).

Outputs in ``--out``: ``last.pt`` (resumable state, every epoch), ``best/`` (best weights so far),
``checkpoint/`` (the final model: ``gamma.weights.save_checkpoint`` with metadata), ``metrics.json``, and with
``keep_epochs`` every epoch's validated weights in ``epochs/<n>/`` (to average a trajectory with ``training/soup.py``).

Two optional deviations for short fine-tuning runs (presets set them; both off by default): a cosine learning-rate
decay over ``max_epochs`` (``lr_schedule``), and an exponential moving average of the weights (``weight_average``,
torch's ``AveragedModel``) that validation, early stopping and the saved model use instead of the raw weights.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import sys
import time
import warnings
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np
import torch
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
from tqdm import tqdm

from gamma.config import preset as model_preset
from gamma.model import GammaModel
from gamma.weights import load_checkpoint, load_encoder_weights, save_checkpoint
from training import distributed
from training.config import TrainConfig, data_table, load_splits
from training.data.datasets import GammaDataset, Sample
from training.losses import gamma_loss
from training.metrics import PixelCounts, image_metrics

STATE_FILE = "last.pt"
EPOCHS_DIR = "epochs"  # with keep_epochs: epochs/01, epochs/02, ... (one checkpoint folder per epoch)


def _autocast(device: torch.device) -> contextlib.AbstractContextManager:
    return torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else contextlib.nullcontext()


def _loader(dataset: GammaDataset, indices: list[int], config: TrainConfig) -> torch.utils.data.DataLoader:
    return torch.utils.data.DataLoader(
        dataset, batch_size=config.micro_batch, sampler=indices, num_workers=config.num_workers,
        pin_memory=torch.cuda.is_available(), drop_last=False,
    )  # fmt: skip


def freeze_norm_statistics(module: torch.nn.Module) -> None:
    """Put every BatchNorm layer under ``module`` in inference mode (running statistics used, not updated); the
    rest of ``module`` keeps its mode."""
    for layer in module.modules():
        if isinstance(layer, torch.nn.modules.batchnorm._BatchNorm):  # BatchNorm1d/2d/3d and SyncBatchNorm
            layer.eval()


def _to_device(batch: list[torch.Tensor], device: torch.device) -> list[torch.Tensor]:
    images, *rest = (t.to(device, non_blocking=True) for t in batch)
    if device.type == "cuda":
        images = images.contiguous(memory_format=torch.channels_last)
    return [images, *rest]


@torch.no_grad()
def evaluate(
    model: GammaModel, dataset: GammaDataset, config: TrainConfig, info: distributed.DistInfo
) -> dict[str, Any]:
    """Image metrics and AI/manipulation-mask pixel F1/IoU over ``dataset``, computed from all ranks' shares.

    Pixel scores are taken at the decoders' stride 4 against area-averaged targets (>= 0.5 is foreground):
    the same pixels the loss sees, at 1/16 of the cost of upsampling every mask.
    """
    model.eval()
    indices = list(range(len(dataset)))[info.rank :: info.world_size]
    scores, labels = [], []
    pixel = torch.zeros(6, dtype=torch.float64)  # tp, fp, fn for AI then manipulation
    for batch in _loader(dataset, indices, config):
        images, y, ai, mani = _to_device(batch, info.device)
        with _autocast(info.device):
            out = model(images)
        scores.append(torch.sigmoid(out.image_logit.float()).cpu())
        labels.append(y.cpu())
        for offset, (logits, target) in enumerate(((out.ai_mask_logits, ai), (out.manipulation_mask_logits, mani))):
            counts = PixelCounts()
            target = torch.nn.functional.adaptive_avg_pool2d(target, logits.shape[-2:])
            counts.update(torch.sigmoid(logits.float()).cpu().numpy(), target.cpu().numpy())
            pixel[3 * offset : 3 * offset + 3] += torch.tensor([counts.tp, counts.fp, counts.fn], dtype=torch.float64)
    score_t = torch.cat(scores) if scores else torch.zeros(0)
    label_t = torch.cat(labels) if labels else torch.zeros(0)
    score_t = distributed.all_gather_arrays(score_t.to(info.device), info).cpu()
    label_t = distributed.all_gather_arrays(label_t.to(info.device), info).cpu()
    pixel = distributed.all_reduce_sum(pixel.to(info.device), info).cpu()
    result: dict[str, Any] = image_metrics(label_t.numpy(), score_t.numpy())
    for offset, name in ((0, "ai_mask"), (3, "manipulation_mask")):
        counts = PixelCounts(*(int(v) for v in pixel[offset : offset + 3]))
        result[f"{name}_f1"], result[f"{name}_iou"] = counts.f1, counts.iou
    return result


class Trainer:
    """One training run: model, optimiser, data, and the early-stopping state that ``last.pt`` preserves."""

    def __init__(self, config: TrainConfig, splits: dict[str, list[Sample]], out: Path, info: distributed.DistInfo,
                 preset_name: str, progress: bool = True) -> None:  # fmt: skip
        self.config, self.splits, self.out, self.info = config, splits, out, info
        self.preset_name, self.progress = preset_name, progress and info.is_main
        self.initialised_from: str | None = None  # a checkpoint this run fine-tunes (recorded in its metadata)
        torch.manual_seed(config.seed)
        self.model = GammaModel(model_preset(config.model))
        if config.encoder_init:
            load_encoder_weights(self.model, config.encoder_init)
        self.model.to(info.device)
        if info.device.type == "cuda":
            self.model.to(memory_format=torch.channels_last)
        self.ddp: torch.nn.parallel.DistributedDataParallel | None = None
        if info.enabled:
            device_ids = [info.device] if info.device.type == "cuda" else None
            self.ddp = torch.nn.parallel.DistributedDataParallel(self.model, device_ids=device_ids)
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
        self.accumulation = config.accumulation(info.world_size)
        self.train_set = GammaDataset(
            splits["train"], config.train_crop, train=True, augment=config.augment, seed=config.seed,
            crop_labels=config.crop_labels, content_only_prob=config.content_only_prob,
        )  # fmt: skip
        self.val_set = GammaDataset(splits["val"], config.val_crop, crop_labels=config.crop_labels)
        self.epoch, self.best_accuracy, self.bad_epochs, self.elapsed = 0, -math.inf, 0, 0.0
        self.step = 0  # optimiser steps taken (the cosine schedule's clock)
        self.history: list[dict[str, Any]] = []
        # the weight average starts from the weights training starts from, so it is made in fit() (after
        # --init-from) or by load_state(); None while weight_average is 0
        self.average: AveragedModel | None = None

    @property
    def served(self) -> GammaModel:
        """The model that is validated and saved: the weight average when there is one, else the raw weights."""
        return self.average.module if self.average is not None else self.model  # type: ignore[return-value]

    def _start_average(self) -> None:
        if self.config.weight_average > 0 and self.average is None:
            decay = get_ema_multi_avg_fn(self.config.weight_average)
            self.average = AveragedModel(self.model, multi_avg_fn=decay, use_buffers=True)

    def epoch_size(self) -> int:
        """Training images drawn per epoch (all ranks together)."""
        size = len(self.train_set)
        return min(size, max(self.config.batch_size, round(self.config.epoch_fraction * size)))

    def steps_per_epoch(self) -> int:
        """Optimiser steps in one epoch on this rank (what :meth:`train_epoch` runs, unless a deadline cuts it)."""
        per_rank = -(-self.epoch_size() // self.info.world_size)  # distributed.shard pads every rank to one count
        return per_rank // (self.config.micro_batch * self.accumulation)

    def learning_rate(self, step: int) -> float:
        """The learning rate of optimiser step ``step`` (0-based) under ``lr_schedule``."""
        if self.config.lr_schedule == "constant":
            return self.config.lr
        total = max(1, self.config.max_epochs * self.steps_per_epoch())
        return self.config.lr * 0.5 * (1.0 + math.cos(math.pi * min(step, total) / total))

    # --- state ---------------------------------------------------------------------------------------------

    def save_state(self) -> None:
        if not self.info.is_main:
            return
        state = {
            "model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(), "epoch": self.epoch,
            "best_accuracy": self.best_accuracy, "bad_epochs": self.bad_epochs, "elapsed": self.elapsed,
            "history": json.dumps(self.history), "preset": self.preset_name, "step": self.step,
        }  # fmt: skip
        if self.average is not None:
            state["average"] = self.average.state_dict()
        tmp = self.out / (STATE_FILE + ".tmp")
        torch.save(state, tmp)
        tmp.replace(self.out / STATE_FILE)

    def init_from(self, name_or_path: str) -> None:
        """The weights of an existing checkpoint of the same model preset (refused on any key or shape mismatch)."""
        checkpoint = load_checkpoint(name_or_path, self.info.device)
        if checkpoint.config.name != self.model.config.name:
            have, want = checkpoint.config.name, self.model.config.name
            raise ValueError(f"{name_or_path} is a {have} model; this preset trains {want}")
        self.model.load_state_dict(checkpoint.model.state_dict())
        self.initialised_from = f"{checkpoint.name} v{checkpoint.version} ({name_or_path})"
        if checkpoint.metadata.get("train_config", {}).get("seed") == self.config.seed:
            # epoch subsets and augmentations are drawn from (seed, epoch): this run would open by replaying, in
            # order, what the checkpoint's own run trained on (seen here: a first half-epoch at half the usual loss)
            warnings.warn(
                f"{name_or_path} was trained with seed {self.config.seed} too: this run replays its epochs' "
                "data in order; pass --set seed=N for fresh draws",
                stacklevel=2,
            )

    def load_state(self) -> bool:
        path = self.out / STATE_FILE
        if not path.is_file():
            return False
        state = torch.load(path, map_location=self.info.device, weights_only=True)
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.epoch, self.best_accuracy = int(state["epoch"]), float(state["best_accuracy"])
        self.bad_epochs, self.elapsed = int(state["bad_epochs"]), float(state["elapsed"])
        self.history = json.loads(state["history"])
        self.step = int(state.get("step", 0))
        if ("average" in state) != (self.config.weight_average > 0):
            # best/ and best_accuracy were measured on one kind of weights: the other cannot continue their race
            had = "a weight average" if "average" in state else "no weight average"
            raise ValueError(f"{path} was trained with {had}: resume it with the same weight_average")
        if "average" in state:
            self._start_average()
            assert self.average is not None
            self.average.load_state_dict(state["average"])
        return True

    # --- one epoch -----------------------------------------------------------------------------------------

    def epoch_indices(self) -> list[int]:
        """A fresh random share of the training set (the same on every rank), then this rank's part of it."""
        chosen = np.random.default_rng([self.config.seed, self.epoch]).choice(
            len(self.train_set), self.epoch_size(), replace=False
        )
        return distributed.shard([int(i) for i in chosen], self.info)

    def train_epoch(self, deadline: float) -> dict[str, float]:
        model = self.ddp or self.model
        model.train()
        if self.config.frozen_encoder_norm:
            freeze_norm_statistics(self.model.encoder)
        self.train_set.set_epoch(self.epoch)
        indices = self.epoch_indices()
        steps = len(indices) // (self.config.micro_batch * self.accumulation)
        indices = indices[: steps * self.config.micro_batch * self.accumulation]
        totals = {"loss": 0.0, "cls": 0.0, "ai_mask": 0.0, "manipulation_mask": 0.0}
        bar = tqdm(
            total=steps, desc=f"epoch {self.epoch}", disable=not self.progress, dynamic_ncols=True, file=sys.stdout
        )
        micro = 0
        for micro, batch in enumerate(_loader(self.train_set, indices, self.config), 1):
            images, labels, ai, mani = _to_device(batch, self.info.device)
            sync = micro % self.accumulation == 0
            context = self.ddp.no_sync() if self.ddp is not None and not sync else contextlib.nullcontext()
            with context, _autocast(self.info.device):
                loss, parts = gamma_loss(model(images), labels, ai, mani)
                (loss / self.accumulation).backward()
            totals["loss"] += float(loss.detach())
            for key, value in parts.items():
                totals[key] += float(value)
            if sync:
                for group in self.optimizer.param_groups:
                    group["lr"] = self.learning_rate(self.step)
                self.optimizer.step()
                self.optimizer.zero_grad(set_to_none=True)
                self.step += 1
                if self.average is not None:
                    self.average.update_parameters(self.model)
                bar.update(1)
                bar.set_postfix(loss=f"{totals['loss'] / micro:.3f}")
                stop = torch.tensor([float(time.time() > deadline)], device=self.info.device)
                if distributed.all_reduce_sum(stop, self.info).item() > 0:  # every rank stops at the same step
                    break
        bar.close()
        return {key: value / max(micro, 1) for key, value in totals.items()}

    def improved(self, accuracy: float) -> bool:
        """Early stopping as Keras defines it: only a gain above ``min_delta`` counts, and resets the patience.
        ``accuracy`` is the monitored metric (``TrainConfig.monitor``); ``best_accuracy`` keeps its old name so
        ``last.pt`` files stay resumable."""
        if accuracy > self.best_accuracy + self.config.min_delta or self.best_accuracy == -math.inf:
            self.best_accuracy, self.bad_epochs = accuracy, 0
            return True
        self.bad_epochs += 1
        return False

    def fit(self) -> dict[str, Any]:
        started = time.time() - self.elapsed
        budget = self.config.max_minutes * 60 if self.config.max_minutes > 0 else math.inf
        deadline = started + budget
        self._start_average()
        while self.epoch < self.config.max_epochs and self.bad_epochs < self.config.patience:
            if time.time() >= deadline:
                break
            train_stats = self.train_epoch(deadline)
            distributed.broadcast_buffers(self.model, self.info)
            if self.average is not None:  # each rank averaged its own BatchNorm statistics: validate one model
                distributed.broadcast_buffers(self.served, self.info)
            val = evaluate(self.served, self.val_set, self.config, self.info)
            better = self.improved(val[self.config.monitor])
            if better and self.info.is_main:
                save_checkpoint(self.served, self.out / "best")
            if self.config.keep_epochs and self.info.is_main:
                save_checkpoint(self.served, self.out / EPOCHS_DIR / f"{self.epoch + 1:02d}")
            self.epoch += 1
            self.elapsed = time.time() - started
            last_lr = self.learning_rate(max(self.step - 1, 0))  # the rate of the epoch's last step
            record = {"epoch": self.epoch, "train": train_stats, "val": val, "improved": better,
                      "minutes": round(self.elapsed / 60, 2), "lr": last_lr}  # fmt: skip
            self.history.append(record)
            if self.info.is_main:
                line = {"epoch": self.epoch, "loss": train_stats["loss"], "val_accuracy": val["accuracy"],
                        "val_ap": val["ap"], "val_roc_auc": val["roc_auc"], f"best_{self.config.monitor}":
                        self.best_accuracy, "minutes": record["minutes"]}  # fmt: skip
                print(json.dumps({k: round(v, 4) for k, v in line.items()}), flush=True)
            self.save_state()
            distributed.barrier(self.info)
        reason = "patience" if self.bad_epochs >= self.config.patience else (
            "max_epochs" if self.epoch >= self.config.max_epochs else "time budget")  # fmt: skip
        return {"epochs": self.epoch, "stopped_by": reason, "minutes": round(self.elapsed / 60, 2)}

    def finish(self, run: dict[str, Any]) -> dict[str, Any]:
        """Reloads the best weights, measures them on val (and test), writes ``checkpoint/`` and ``metrics.json``."""
        distributed.barrier(self.info)
        best = self.out / "best" / "model.safetensors"
        if best.is_file():
            from safetensors.torch import load_file

            self.served.load_state_dict(load_file(str(best), device=str(self.info.device)))
        metrics: dict[str, Any] = {"val": evaluate(self.served, self.val_set, self.config, self.info)}
        if self.splits.get("test"):
            test_set = GammaDataset(self.splits["test"], self.config.val_crop, crop_labels=self.config.crop_labels)
            metrics["test"] = evaluate(self.served, test_set, self.config, self.info)
        summary = {
            "name": self.config.name,
            "version": 1,
            "preset": self.preset_name,
            "model_preset": self.config.model,
            "train_config": {k: v for k, v in asdict(self.config).items() if k != "data"},
            "data": self.config.data,
            "data_counts": {split: len(samples) for split, samples in self.splits.items()},
            "run": run,
            "metrics": metrics,
            "eval_crop": self.config.val_crop,
            "initialised_from": self.initialised_from,
            "world_size": self.info.world_size,
        }
        if self.info.is_main:
            save_checkpoint(self.served, self.out / "checkpoint", summary)
            (self.out / "metrics.json").write_text(json.dumps({**summary, "history": self.history}, indent=2) + "\n")
        return summary


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Train a GAMMA detector (see training/MODEL_CARD.md).")
    parser.add_argument("--preset", default="local-effl0", help="training/presets/<name>.toml, or a path to a TOML")
    parser.add_argument("--data", type=Path, default=None, help="manifest folder or data root (overrides the preset)")
    parser.add_argument("--out", type=Path, default=None, help="run folder (default runs/<preset>)")
    parser.add_argument("--resume", action="store_true", help="continue from <out>/last.pt")
    parser.add_argument(
        "--init-from",
        default=None,
        metavar="CHECKPOINT",
        help="start from this GAMMA checkpoint's weights (name or folder; same model preset), "
        "with a fresh optimiser and early stopping: fine-tuning, e.g. to a new contract",
    )
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads per process")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a [train] value, e.g. --set max_minutes=5")  # fmt: skip
    parser.add_argument("--no-progress", action="store_true")
    return parser.parse_args(argv)


def _overrides(config: TrainConfig, pairs: list[str]) -> TrainConfig:
    import dataclasses

    changes: dict[str, Any] = {}
    for pair in pairs:
        key, _, value = pair.partition("=")
        current = getattr(config, key)  # AttributeError names an unknown key
        if isinstance(current, bool):  # bool("false") is True: spell it out
            if value.lower() not in ("true", "false"):
                raise ValueError(f"--set {key}= takes true or false, got {value!r}")
            changes[key] = value.lower() == "true"
        else:
            changes[key] = type(current)(value) if not isinstance(current, str) else value
    return dataclasses.replace(config, **changes)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    info = distributed.setup()
    try:
        config = _overrides(TrainConfig.named(args.preset), args.set)
        out = args.out or Path("runs") / Path(args.preset).stem
        out.mkdir(parents=True, exist_ok=True)
        # the checkpoint records the data it was trained on, not the preset's default (--data overrides it)
        config = replace(config, data=data_table(config, args.data))
        splits = load_splits(config)
        if info.is_main:
            print(json.dumps({"preset": args.preset, "counts": {k: len(v) for k, v in splits.items()},
                              "device": str(info.device), "world_size": info.world_size}), flush=True)  # fmt: skip
        trainer = Trainer(config, splits, out, info, Path(args.preset).stem, progress=not args.no_progress)
        if args.init_from and not (args.resume and (out / STATE_FILE).is_file()):
            trainer.init_from(args.init_from)
        elif args.init_from:  # resumed: the weights come from last.pt, the provenance stays the same
            trainer.initialised_from = args.init_from
        if args.resume and trainer.load_state() and info.is_main:
            print(f"resumed from {out / STATE_FILE} at epoch {trainer.epoch}", flush=True)
        return trainer.finish(trainer.fit())
    finally:
        distributed.cleanup(info)


if __name__ == "__main__":
    main()
