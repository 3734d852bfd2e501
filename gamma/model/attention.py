"""Reverse cross-attention: the segmentation features ask the classification tokens.

Our reading of the paper (it has no public code), stated once here:
- Query: a decoder's fused feature map as tokens, (B, H/4 * W/4, D_dec).
- Key = Value: the classification tokens, i.e. the stage-4 tokens after the classification Linear and
  before pooling, (B, H/32 * W/32, D_cls). A single pooled vector as Key/Value would make the softmax over
  one key trivially 1 and the "attention" a constant copy of the value.
- Output: mean over the queries, (B, D_cls), added residually to the pooled classification feature.
  GAMMA does this once with the AI-mask decoder and once with the manipulation-mask decoder, then a Linear
  gives the image logit. Because the classification Linear is affine, mean-pooling its tokens equals
  Linear(GAP(F4)): the paper's "GAP(F4) -> Linear" feature is kept exactly.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from gamma.model.encoder import split_heads


class ReverseCrossAttention(nn.Module):
    """Multi-head attention, Query from segmentation tokens, Key/Value from classification tokens.

    queries (B, Nq, D_q), context (B, Nk, D_c) -> pooled (B, D_c).
    """

    def __init__(self, query_size: int, context_size: int, num_heads: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.q = nn.Linear(query_size, context_size)
        self.k = nn.Linear(context_size, context_size)
        self.v = nn.Linear(context_size, context_size)
        self.proj = nn.Linear(context_size, context_size)

    def forward(self, queries: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        attended = F.scaled_dot_product_attention(
            split_heads(self.q(queries), self.num_heads),
            split_heads(self.k(context), self.num_heads),
            split_heads(self.v(context), self.num_heads),
        )
        # Pool before the output projection: it is affine, so mean(proj(x)) == proj(mean(x)), at 1/Nq the cost.
        pooled = attended.mean(dim=2)  # (B, heads, D_c / heads)
        return self.proj(pooled.reshape(pooled.shape[0], -1))
