"""The GAMMA detector: encoder (MiT or EfficientNet-Lite), two all-MLP decoders, classification head, reverse
cross-attention."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from gamma.config import IMAGENET_MEAN, IMAGENET_STD, INPUT_STRIDE, MIT, GammaConfig
from gamma.model.attention import ReverseCrossAttention
from gamma.model.decoder import AllMLPDecoder
from gamma.model.efficientnet_lite import EfficientNetLiteEncoder
from gamma.model.encoder import MiTEncoder


class InvalidInput(ValueError):
    """The image batch does not fit the model's contract (shape, channels, dtype, size)."""


@dataclass
class GammaOutput:
    """Named outputs of :class:`GammaModel`.

    image_logit: (B,) logit that the image is AI-generated (class 1).
    ai_mask_logits: (B, 1, H/4, W/4) per-pixel logits that the pixel was synthesised by a network.
    manipulation_mask_logits: (B, 1, H/4, W/4) per-pixel logits that the pixel was manipulated in any way.
    Masks stay at the decoders' native stride 4; :func:`upsample_mask` brings them to the input size.
    """

    image_logit: torch.Tensor
    ai_mask_logits: torch.Tensor
    manipulation_mask_logits: torch.Tensor


def upsample_mask(mask: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bilinear upsampling of (B, 1, h, w) mask logits or probabilities to (B, 1, *size)."""
    return F.interpolate(mask, size=size, mode="bilinear", align_corners=False)


def validate_images(images: torch.Tensor) -> None:
    """Raise :class:`InvalidInput` with a readable message unless ``images`` is (B, 3, H, W), H, W % 32 == 0."""
    if not isinstance(images, torch.Tensor):
        raise InvalidInput(f"expected a torch.Tensor, got {type(images).__name__}")
    if images.dtype != torch.uint8 and not images.is_floating_point():
        raise InvalidInput(f"expected uint8 or floating-point images, got dtype {images.dtype}")
    if images.ndim != 4:
        raise InvalidInput(f"expected a batch (B, 3, H, W), got shape {tuple(images.shape)}")
    batch, channels, height, width = images.shape
    if channels != 3:
        raise InvalidInput(f"expected 3 RGB channels in dim 1, got {channels} (shape {tuple(images.shape)})")
    if batch == 0 or height == 0 or width == 0:
        raise InvalidInput(f"empty batch or image: shape {tuple(images.shape)}")
    if height % INPUT_STRIDE or width % INPUT_STRIDE:
        raise InvalidInput(f"height and width must be multiples of {INPUT_STRIDE}, got {height}x{width}")


def build_encoder(config: GammaConfig) -> nn.Module:
    """The encoder ``config.encoder`` names: pixels (B, 3, H, W) -> four features at strides 4, 8, 16, 32."""
    if config.encoder == MIT:
        return MiTEncoder(config)
    return EfficientNetLiteEncoder(config.encoder, config.drop_path_rate)


class GammaModel(nn.Module):
    """GAMMA: images (B, 3, H, W) -> :class:`GammaOutput`.

    Input is uint8 in [0, 255] or float in [0, 1]; ImageNet normalisation happens here (both encoders were
    pre-trained with the same ImageNet mean/std), so a served model is fed uint8 and clients send 4x fewer bytes.
    """

    def __init__(self, config: GammaConfig) -> None:
        super().__init__()
        self.config = config
        self.encoder = build_encoder(config)
        stage_widths = config.hidden_sizes
        self.ai_decoder = AllMLPDecoder(stage_widths, config.decoder_hidden_size, config.decoder_dropout_prob)
        self.manipulation_decoder = AllMLPDecoder(stage_widths, config.decoder_hidden_size, config.decoder_dropout_prob)
        self.cls_projection = nn.Linear(stage_widths[-1], config.cls_hidden_size)
        self.ai_attention = ReverseCrossAttention(
            config.decoder_hidden_size, config.cls_hidden_size, config.reverse_attention_heads
        )
        self.manipulation_attention = ReverseCrossAttention(
            config.decoder_hidden_size, config.cls_hidden_size, config.reverse_attention_heads
        )
        self.cls_head = nn.Linear(config.cls_hidden_size, 1)
        self.register_buffer("pixel_mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1) * 255, persistent=False)
        self.register_buffer("pixel_std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1) * 255, persistent=False)

    def normalise(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 [0, 255] or float [0, 1] -> ImageNet-normalised float."""
        pixels = images.float() if images.dtype == torch.uint8 else images.float() * 255.0
        return (pixels - self.pixel_mean) / self.pixel_std

    def forward(self, images: torch.Tensor) -> GammaOutput:
        if not (torch.jit.is_tracing() or torch.compiler.is_compiling()):
            validate_images(images)
        features = self.encoder(self.normalise(images))
        ai_features, ai_logits = self.ai_decoder(features)
        manipulation_features, manipulation_logits = self.manipulation_decoder(features)

        cls_tokens = self.cls_projection(features[-1].flatten(2).transpose(1, 2))  # (B, N4, D_cls)
        cls_feature = cls_tokens.mean(dim=1)  # == Linear(GAP(F4))
        cls_feature = cls_feature + self.ai_attention(ai_features.flatten(2).transpose(1, 2), cls_tokens)
        cls_feature = cls_feature + self.manipulation_attention(
            manipulation_features.flatten(2).transpose(1, 2), cls_tokens
        )
        return GammaOutput(
            image_logit=self.cls_head(cls_feature).squeeze(-1),
            ai_mask_logits=ai_logits,
            manipulation_mask_logits=manipulation_logits,
        )
