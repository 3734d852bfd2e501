"""Tensor names, dtypes and shapes on the wire between a client and the served model.

Imported by the exporter, the Triton config writer and every client: renaming a tensor is a one-line change.
"""

from __future__ import annotations

from dataclasses import dataclass

from gamma.preprocess import CROP_SIZE

# The decoders predict at stride 4; masks cross the wire at that native resolution as uint8 probabilities
# (0..255): two float32 512x512 masks per image would be 32x more bytes for no information.
MASK_STRIDE = 4
MASK_SIZE = CROP_SIZE // MASK_STRIDE


@dataclass(frozen=True)
class TensorSpec:
    name: str
    dtype: str  # numpy dtype name
    triton_dtype: str  # Triton's TYPE_* suffix
    shape: tuple[int, ...]  # without the batch axis


IMAGES = TensorSpec("images", "uint8", "UINT8", (3, CROP_SIZE, CROP_SIZE))
PROBABILITY = TensorSpec("probability", "float32", "FP32", (1,))
AI_MASK = TensorSpec("ai_mask", "uint8", "UINT8", (1, MASK_SIZE, MASK_SIZE))
MANIPULATION_MASK = TensorSpec("manipulation_mask", "uint8", "UINT8", (1, MASK_SIZE, MASK_SIZE))

INPUTS: tuple[TensorSpec, ...] = (IMAGES,)
OUTPUTS: tuple[TensorSpec, ...] = (PROBABILITY, AI_MASK, MANIPULATION_MASK)
