"""The served form of GAMMA: uint8 images in, the wire outputs of :mod:`gamma.wire` out.

The exporter traces this module and the in-process backend runs it, so both paths compute the same
probability and the same quantised masks.
"""

from __future__ import annotations

import torch
from torch import nn

from gamma.model.detector import GammaModel


def quantise_probability(logits: torch.Tensor) -> torch.Tensor:
    """Logits -> probabilities as uint8 0..255 (a mask pixel needs no more precision than its threshold)."""
    return torch.round(torch.sigmoid(logits) * 255.0).to(torch.uint8)


class ServingModel(nn.Module):
    """images uint8 (B, 3, H, W) -> (probability float32 (B, 1), ai_mask uint8 (B, 1, H/4, W/4),
    manipulation_mask uint8 (B, 1, H/4, W/4))."""

    def __init__(self, model: GammaModel) -> None:
        super().__init__()
        self.model = model

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        output = self.model(images)
        return (
            torch.sigmoid(output.image_logit).unsqueeze(-1),
            quantise_probability(output.ai_mask_logits),
            quantise_probability(output.manipulation_mask_logits),
        )
