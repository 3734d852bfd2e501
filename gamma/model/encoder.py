"""Mix Transformer (MiT) encoder of SegFormer (Xie et al. 2021), the backbone of GAMMA.

Four stages; each is an overlapping patch embedding followed by transformer blocks of efficient
self-attention (keys/values spatially reduced) and Mix-FFN (a depth-wise 3x3 conv between the two linears,
which gives position information without position embeddings). Stage outputs F1..F4 have strides 4, 8, 16, 32.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from gamma.config import GammaConfig


def split_heads(tokens: torch.Tensor, num_heads: int) -> torch.Tensor:
    """(B, N, C) -> (B, heads, N, C / heads), the layout scaled_dot_product_attention expects."""
    batch, length, channels = tokens.shape
    return tokens.reshape(batch, length, num_heads, channels // num_heads).transpose(1, 2)


class OverlapPatchEmbed(nn.Module):
    """Strided conv with kernel > stride, so neighbouring patches overlap.

    (B, C_in, H, W) -> tokens (B, H'*W', C) with H' = ceil(H / stride), plus (H', W').
    """

    def __init__(self, in_channels: int, hidden_size: int, patch_size: int, stride: int, eps: float) -> None:
        super().__init__()
        self.proj = nn.Conv2d(in_channels, hidden_size, patch_size, stride, padding=patch_size // 2)
        self.norm = nn.LayerNorm(hidden_size, eps=eps)

    def forward(self, pixels: torch.Tensor) -> tuple[torch.Tensor, int, int]:
        features = self.proj(pixels)
        height, width = features.shape[-2:]
        tokens = self.norm(features.flatten(2).transpose(1, 2))
        return tokens, height, width


class EfficientSelfAttention(nn.Module):
    """Multi-head self-attention whose keys and values come from a sequence reduced by ``sr_ratio``.

    Reduction is a conv with kernel = stride = ``sr_ratio`` followed by LayerNorm: cost O(N^2 / R^2).
    tokens (B, N, C) -> (B, N, C).
    """

    def __init__(self, hidden_size: int, num_heads: int, sr_ratio: int, eps: float) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.q = nn.Linear(hidden_size, hidden_size)
        self.k = nn.Linear(hidden_size, hidden_size)
        self.v = nn.Linear(hidden_size, hidden_size)
        self.proj = nn.Linear(hidden_size, hidden_size)
        self.sr_ratio = sr_ratio
        if sr_ratio > 1:
            self.sr = nn.Conv2d(hidden_size, hidden_size, sr_ratio, sr_ratio)
            self.sr_norm = nn.LayerNorm(hidden_size, eps=eps)

    def forward(self, tokens: torch.Tensor, height: int, width: int) -> torch.Tensor:
        batch, length, channels = tokens.shape
        context = tokens
        if self.sr_ratio > 1:
            grid = tokens.transpose(1, 2).reshape(batch, channels, height, width)
            context = self.sr_norm(self.sr(grid).flatten(2).transpose(1, 2))
        attended = F.scaled_dot_product_attention(
            split_heads(self.q(tokens), self.num_heads),
            split_heads(self.k(context), self.num_heads),
            split_heads(self.v(context), self.num_heads),
        )
        return self.proj(attended.transpose(1, 2).reshape(batch, length, channels))


class MixFFN(nn.Module):
    """fc1 -> depth-wise 3x3 conv -> GELU -> fc2, expansion ``mlp_ratio``. tokens (B, N, C) -> (B, N, C)."""

    def __init__(self, hidden_size: int, mlp_ratio: int, dropout: float) -> None:
        super().__init__()
        inner = hidden_size * mlp_ratio
        self.fc1 = nn.Linear(hidden_size, inner)
        self.dwconv = nn.Conv2d(inner, inner, 3, 1, 1, groups=inner)
        self.fc2 = nn.Linear(inner, hidden_size)
        self.dropout = nn.Dropout(dropout)

    def forward(self, tokens: torch.Tensor, height: int, width: int) -> torch.Tensor:
        hidden = self.fc1(tokens)
        batch, _, channels = hidden.shape
        grid = hidden.transpose(1, 2).reshape(batch, channels, height, width)
        hidden = F.gelu(self.dwconv(grid).flatten(2).transpose(1, 2))
        return self.dropout(self.fc2(self.dropout(hidden)))


class DropPath(nn.Module):
    """Stochastic depth: drops a sample's whole residual branch with probability ``p`` during training."""

    def __init__(self, p: float) -> None:
        super().__init__()
        self.p = p

    def forward(self, branch: torch.Tensor) -> torch.Tensor:
        if self.p == 0.0 or not self.training:
            return branch
        keep = 1.0 - self.p
        mask = branch.new_empty((branch.shape[0],) + (1,) * (branch.ndim - 1)).bernoulli_(keep)
        return branch * mask / keep

    def extra_repr(self) -> str:
        return f"p={self.p}"


class MiTBlock(nn.Module):
    """Pre-norm transformer block: x + DropPath(Attn(LN(x))), then x + DropPath(MixFFN(LN(x)))."""

    def __init__(self, config: GammaConfig, stage: int, drop_path: float) -> None:
        super().__init__()
        width, eps = config.hidden_sizes[stage], config.layer_norm_eps
        self.norm1 = nn.LayerNorm(width, eps=eps)
        self.attn = EfficientSelfAttention(width, config.num_attention_heads[stage], config.sr_ratios[stage], eps)
        self.norm2 = nn.LayerNorm(width, eps=eps)
        self.ffn = MixFFN(width, config.mlp_ratio, config.hidden_dropout_prob)
        self.attn_dropout = nn.Dropout(config.hidden_dropout_prob)
        self.drop_path = DropPath(drop_path)

    def forward(self, tokens: torch.Tensor, height: int, width: int) -> torch.Tensor:
        tokens = tokens + self.drop_path(self.attn_dropout(self.attn(self.norm1(tokens), height, width)))
        return tokens + self.drop_path(self.ffn(self.norm2(tokens), height, width))


class MiTStage(nn.Module):
    """Patch embedding -> ``depth`` MiT blocks -> LayerNorm; returns the stage feature map (B, C, H', W')."""

    def __init__(self, config: GammaConfig, stage: int, drop_paths: list[float]) -> None:
        super().__init__()
        in_channels = config.num_channels if stage == 0 else config.hidden_sizes[stage - 1]
        width = config.hidden_sizes[stage]
        self.patch_embed = OverlapPatchEmbed(
            in_channels, width, config.patch_sizes[stage], config.strides[stage], config.layer_norm_eps
        )
        self.blocks = nn.ModuleList(MiTBlock(config, stage, p) for p in drop_paths)
        self.norm = nn.LayerNorm(width, eps=config.layer_norm_eps)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        tokens, height, width = self.patch_embed(features)
        for block in self.blocks:
            tokens = block(tokens, height, width)
        tokens = self.norm(tokens)
        return tokens.transpose(1, 2).reshape(tokens.shape[0], -1, height, width)


class MiTEncoder(nn.Module):
    """Normalised pixels (B, 3, H, W) -> [F1 (B, C1, H/4, W/4), F2 (/8), F3 (/16), F4 (/32)].

    Drop-path rates rise linearly from 0 to ``drop_path_rate`` over all blocks, as in SegFormer.
    """

    def __init__(self, config: GammaConfig) -> None:
        super().__init__()
        total = sum(config.depths)
        rates = [config.drop_path_rate * i / max(total - 1, 1) for i in range(total)]
        self.stages = nn.ModuleList()
        start = 0
        for stage, depth in enumerate(config.depths):
            self.stages.append(MiTStage(config, stage, rates[start : start + depth]))
            start += depth

    def forward(self, pixels: torch.Tensor) -> list[torch.Tensor]:
        features = []
        hidden = pixels
        for stage in self.stages:
            hidden = stage(hidden)
            features.append(hidden)
        return features
