"""GAMMA's multi-task loss: L = 2 * (L_cls + L_segAI) + L_segMa, all binary cross-entropy.

The paper found the (2, 2, 1) weighting best (93.2 vs 91.1 accuracy for (2, 1, 1)): the AI mask teaches the
same question as the classifier, pixel by pixel, while the manipulation mask is auxiliary. Mask logits come at
stride 4; targets are area-averaged down to them (soft targets at region borders) rather than upsampling logits,
which would cost 16x the memory for no extra information.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from gamma.model import GammaOutput


@dataclass(frozen=True)
class LossWeights:
    cls: float = 2.0
    ai_mask: float = 2.0
    manipulation_mask: float = 1.0


def _mask_bce(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    if target.shape[-2:] != logits.shape[-2:]:
        target = F.adaptive_avg_pool2d(target, logits.shape[-2:])
    return F.binary_cross_entropy_with_logits(logits.float(), target.float())


def gamma_loss(
    output: GammaOutput, labels: torch.Tensor, ai_masks: torch.Tensor, manipulation_masks: torch.Tensor,
    weights: LossWeights = LossWeights(),
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:  # fmt: skip
    """Total loss and its detached parts (``cls``, ``ai_mask``, ``manipulation_mask``) for logging."""
    parts = {
        "cls": F.binary_cross_entropy_with_logits(output.image_logit.float(), labels.float()),
        "ai_mask": _mask_bce(output.ai_mask_logits, ai_masks),
        "manipulation_mask": _mask_bce(output.manipulation_mask_logits, manipulation_masks),
    }
    total = weights.cls * parts["cls"] + weights.ai_mask * parts["ai_mask"]
    total = total + weights.manipulation_mask * parts["manipulation_mask"]
    return total, {k: v.detach() for k, v in parts.items()}
