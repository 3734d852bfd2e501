"""GAMMA model: encoder, decoders, reverse cross-attention and the assembled detector."""

from gamma.model.detector import GammaModel, GammaOutput, InvalidInput, upsample_mask, validate_images

__all__ = ["GammaModel", "GammaOutput", "InvalidInput", "upsample_mask", "validate_images"]
