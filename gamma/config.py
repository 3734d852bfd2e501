"""GAMMA model configuration and the SegFormer MiT presets ``gamma-b0`` … ``gamma-b5``.

One place for the architecture facts: the model, the weight loaders, training and export read them here.
A checkpoint carries its config (``config.json`` beside ``model.safetensors``), thresholds included, so a
served model always decides with the thresholds it was validated with.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gamma.verdict import VerdictThresholds

# ImageNet statistics the MiT encoder was pre-trained with; the model normalises inside forward().
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# Input side lengths must be multiples of the encoder's total stride.
INPUT_STRIDE = 32


@dataclass(frozen=True)
class GammaConfig:
    """Architecture of one GAMMA detector.

    Encoder fields follow SegFormer's MiT (Xie et al. 2021); ``decoder_hidden_size`` is the all-MLP decoder
    embedding (256 for b0/b1, 768 from b2 up); ``cls_hidden_size`` the classification feature width.
    """

    name: str = "gamma-b2"
    num_channels: int = 3
    hidden_sizes: tuple[int, ...] = (64, 128, 320, 512)
    depths: tuple[int, ...] = (3, 4, 6, 3)
    num_attention_heads: tuple[int, ...] = (1, 2, 5, 8)
    sr_ratios: tuple[int, ...] = (8, 4, 2, 1)
    patch_sizes: tuple[int, ...] = (7, 3, 3, 3)
    strides: tuple[int, ...] = (4, 2, 2, 2)
    mlp_ratio: int = 4
    drop_path_rate: float = 0.1
    hidden_dropout_prob: float = 0.0
    layer_norm_eps: float = 1e-5
    decoder_hidden_size: int = 768
    decoder_dropout_prob: float = 0.1
    cls_hidden_size: int = 768
    reverse_attention_heads: int = 8
    thresholds: VerdictThresholds = field(default_factory=VerdictThresholds)

    def __post_init__(self) -> None:
        lengths = {len(self.hidden_sizes), len(self.depths), len(self.num_attention_heads), len(self.sr_ratios)}
        if lengths != {4}:
            raise ValueError(f"{self.name}: MiT has exactly four stages, got per-stage lengths {sorted(lengths)}")
        for width, heads in zip(self.hidden_sizes, self.num_attention_heads):
            if width % heads:
                raise ValueError(f"{self.name}: stage width {width} not divisible by {heads} heads")
        if self.cls_hidden_size % self.reverse_attention_heads:
            raise ValueError(f"{self.name}: cls_hidden_size must divide into reverse_attention_heads")

    @property
    def num_stages(self) -> int:
        return len(self.hidden_sizes)

    def replace(self, **changes: Any) -> GammaConfig:
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["thresholds"] = self.thresholds.to_dict()
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> GammaConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"unknown GammaConfig fields: {sorted(unknown)}")
        values = dict(data)
        for key in ("hidden_sizes", "depths", "num_attention_heads", "sr_ratios", "patch_sizes", "strides"):
            if key in values:
                values[key] = tuple(values[key])
        if "thresholds" in values and not isinstance(values["thresholds"], VerdictThresholds):
            values["thresholds"] = VerdictThresholds.from_dict(values["thresholds"])
        return cls(**values)

    def to_json(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2) + "\n")

    @classmethod
    def from_json(cls, path: str | Path) -> GammaConfig:
        return cls.from_dict(json.loads(Path(path).read_text()))


def _mit(name: str, widths: tuple[int, ...], depths: tuple[int, ...], decoder: int) -> GammaConfig:
    return GammaConfig(
        name=name, hidden_sizes=widths, depths=depths, decoder_hidden_size=decoder, cls_hidden_size=decoder
    )


_WIDE = (64, 128, 320, 512)

PRESETS: dict[str, GammaConfig] = {
    "gamma-b0": _mit("gamma-b0", (32, 64, 160, 256), (2, 2, 2, 2), 256),
    "gamma-b1": _mit("gamma-b1", _WIDE, (2, 2, 2, 2), 256),
    "gamma-b2": _mit("gamma-b2", _WIDE, (3, 4, 6, 3), 768),
    "gamma-b3": _mit("gamma-b3", _WIDE, (3, 4, 18, 3), 768),
    "gamma-b4": _mit("gamma-b4", _WIDE, (3, 8, 27, 3), 768),
    "gamma-b5": _mit("gamma-b5", _WIDE, (3, 6, 40, 3), 768),
}


def preset(name: str) -> GammaConfig:
    """The config of a named preset (``gamma-b0`` … ``gamma-b5``; ``b2`` is accepted for ``gamma-b2``)."""
    key = name if name.startswith("gamma-") else f"gamma-{name}"
    try:
        return PRESETS[key]
    except KeyError:
        raise KeyError(f"unknown preset {name!r}; choose one of {sorted(PRESETS)}") from None
