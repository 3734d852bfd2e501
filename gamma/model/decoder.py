"""SegFormer's all-MLP decoder: GAMMA has two, one for the AI mask and one for the manipulation mask."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class AllMLPDecoder(nn.Module):
    """Per-stage linear projection to ``hidden_size``, upsample to stride 4, concatenate, 1x1 conv fuse
    (+BN, ReLU), dropout, then a 1x1 conv to one mask logit.

    Input: [F1..F4] with strides 4..32. Output: (fused features (B, D, H/4, W/4), mask logits (B, 1, H/4, W/4)).
    The fused features are also the Query tokens of the reverse cross-attention.
    """

    def __init__(self, in_channels: tuple[int, ...], hidden_size: int, dropout: float) -> None:
        super().__init__()
        self.projections = nn.ModuleList(nn.Linear(channels, hidden_size) for channels in in_channels)
        self.fuse = nn.Conv2d(hidden_size * len(in_channels), hidden_size, 1, bias=False)
        self.fuse_norm = nn.BatchNorm2d(hidden_size)
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Conv2d(hidden_size, 1, 1)

    def forward(self, features: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        target = features[0].shape[-2:]
        projected = []
        # Reverse order (coarsest first) as SegFormer concatenates; the fuse conv's weights depend on it.
        for feature, projection in zip(reversed(features), reversed(self.projections)):
            tokens = projection(feature.flatten(2).transpose(1, 2))
            grid = tokens.transpose(1, 2).reshape(feature.shape[0], -1, *feature.shape[-2:])
            if grid.shape[-2:] != target:
                grid = F.interpolate(grid, size=target, mode="bilinear", align_corners=False)
            projected.append(grid)
        fused = F.relu(self.fuse_norm(self.fuse(torch.cat(projected, dim=1))))
        return fused, self.classifier(self.dropout(fused))
