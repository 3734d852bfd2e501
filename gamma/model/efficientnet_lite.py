"""EfficientNet-Lite encoder (Tan & Le 2019; the "Lite" variant of TensorFlow's edge models), the ImageNet-initialised
alternative to MiT when no MiT weights exist.

Lite differs from EfficientNet-B*: ReLU6 instead of swish, no squeeze-excitation, and stem (32 channels) and head
(1280) fixed whatever the width multiplier, as are the repeats of the first and last block groups. GAMMA takes four
feature maps, the outputs of the block groups that end at strides 4, 8, 16 and 32, and feeds them to the same
decoders, classification head and reverse cross-attention as MiT's F1..F4. The ImageNet head (1280-channel 1x1 conv
and the classifier) is not part of the encoder.

"Same" padding as TensorFlow: a stride-1 conv pads (k - 1) / 2 each side; a stride-2 conv on an even-sized input pads
(k - 2) // 2 before and the rest after. GAMMA's inputs are multiples of 32, so every stride-2 conv sees an even size
and the padding is a constant: the traced/ONNX graph needs no shape arithmetic and equals TF's dynamic rule exactly.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from gamma.config import EFFICIENTNET_FEATURE_GROUPS, STEM_CHANNELS, scaled_efficientnet_groups
from gamma.model.encoder import DropPath

BN_EPS = 1e-3
BN_MOMENTUM = 0.01  # TensorFlow's decay 0.99 in PyTorch's convention


class SameConv2d(nn.Conv2d):
    """Conv2d with TensorFlow "same" padding for even-sized inputs (module docstring)."""

    def __init__(self, in_channels: int, out_channels: int, kernel: int, stride: int = 1, groups: int = 1) -> None:
        super().__init__(in_channels, out_channels, kernel, stride, padding=0, groups=groups, bias=False)
        total = kernel - 1 if stride == 1 else max(kernel - stride, 0)
        self.same_padding = (total // 2, total - total // 2)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        before, after = self.same_padding
        if before or after:
            features = F.pad(features, (before, after, before, after))
        return super().forward(features)


def _norm(channels: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(channels, eps=BN_EPS, momentum=BN_MOMENTUM)


class MBConvBlock(nn.Module):
    """Inverted bottleneck: 1x1 expand (+BN, ReLU6) -> kxk depth-wise (+BN, ReLU6) -> 1x1 project (+BN),
    plus the identity when stride is 1 and widths match (with stochastic depth on the branch).

    (B, C_in, H, W) -> (B, C_out, H / stride, W / stride).
    """

    def __init__(
        self, in_channels: int, out_channels: int, kernel: int, stride: int, expand: int, drop_path: float
    ) -> None:
        super().__init__()
        inner = in_channels * expand
        self.expand_conv = SameConv2d(in_channels, inner, 1) if expand != 1 else None
        self.expand_norm = _norm(inner) if expand != 1 else None
        self.depthwise_conv = SameConv2d(inner, inner, kernel, stride, groups=inner)
        self.depthwise_norm = _norm(inner)
        self.project_conv = SameConv2d(inner, out_channels, 1)
        self.project_norm = _norm(out_channels)
        self.residual = stride == 1 and in_channels == out_channels
        self.drop_path = DropPath(drop_path)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        hidden = features
        if self.expand_conv is not None and self.expand_norm is not None:
            hidden = F.relu6(self.expand_norm(self.expand_conv(hidden)))
        hidden = F.relu6(self.depthwise_norm(self.depthwise_conv(hidden)))
        hidden = self.project_norm(self.project_conv(hidden))
        return features + self.drop_path(hidden) if self.residual else hidden


class EfficientNetLiteEncoder(nn.Module):
    """Normalised pixels (B, 3, H, W), H and W multiples of 32 -> [F1 (B, C1, H/4, W/4), F2 (/8), F3 (/16), F4 (/32)].

    Block ``i`` of ``n`` drops its branch with probability ``drop_path_rate * i / n``, as EfficientNet does.
    Parameter names mirror the reference PyTorch port without its underscores (``gamma.weights`` maps them).
    """

    def __init__(self, variant: str, drop_path_rate: float = 0.2) -> None:
        super().__init__()
        self.variant = variant
        groups = scaled_efficientnet_groups(variant)
        self.stem_conv = SameConv2d(3, STEM_CHANNELS, 3, stride=2)
        self.stem_norm = _norm(STEM_CHANNELS)
        total = sum(group.repeats for group in groups)
        self.blocks = nn.ModuleList()
        self.feature_blocks: list[int] = []  # index of the last block of each feature group
        for index, group in enumerate(groups):
            for repeat in range(group.repeats):
                self.blocks.append(
                    MBConvBlock(
                        group.in_channels if repeat == 0 else group.out_channels,
                        group.out_channels,
                        group.kernel,
                        group.stride if repeat == 0 else 1,
                        group.expand,
                        drop_path_rate * len(self.blocks) / total,
                    )
                )
            if index in EFFICIENTNET_FEATURE_GROUPS:
                self.feature_blocks.append(len(self.blocks) - 1)

    def forward(self, pixels: torch.Tensor) -> list[torch.Tensor]:
        hidden = F.relu6(self.stem_norm(self.stem_conv(pixels)))
        features = []
        for index, block in enumerate(self.blocks):
            hidden = block(hidden)
            if index in self.feature_blocks:
                features.append(hidden)
        return features
