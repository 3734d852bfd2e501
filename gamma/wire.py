"""Tensor names, dtypes and shapes on the wire between a client and the served model.

Imported by the exporter, the Triton config writer and every client: renaming a tensor is a one-line change.
"""

from __future__ import annotations

from dataclasses import dataclass

from gamma.tiling import MASK_STRIDE

# Tiles are any multiple of the encoder's stride up to gamma.tiling.TILE_SIZE on each side (-1: dynamic), one shape
# per request batch. The decoders predict at MASK_STRIDE; masks cross the wire at that native resolution as uint8
# probabilities (0..255): two float32 full-size masks per tile would be 32x more bytes for no information.
DYNAMIC = -1


@dataclass(frozen=True)
class TensorSpec:
    name: str
    dtype: str  # numpy dtype name
    triton_dtype: str  # Triton's TYPE_* suffix
    shape: tuple[int, ...]  # without the batch axis; DYNAMIC where the size varies

    def concrete(self, height: int, width: int) -> tuple[int, ...]:
        """The shape (without batch) for tiles of ``height`` x ``width`` pixels."""
        scale = 1 if self is IMAGES else MASK_STRIDE
        return tuple(d if d != DYNAMIC else (height if i == len(self.shape) - 2 else width) // scale
                     for i, d in enumerate(self.shape))  # fmt: skip


IMAGES = TensorSpec("images", "uint8", "UINT8", (3, DYNAMIC, DYNAMIC))
PROBABILITY = TensorSpec("probability", "float32", "FP32", (1,))
AI_MASK = TensorSpec("ai_mask", "uint8", "UINT8", (1, DYNAMIC, DYNAMIC))
MANIPULATION_MASK = TensorSpec("manipulation_mask", "uint8", "UINT8", (1, DYNAMIC, DYNAMIC))

INPUTS: tuple[TensorSpec, ...] = (IMAGES,)
OUTPUTS: tuple[TensorSpec, ...] = (PROBABILITY, AI_MASK, MANIPULATION_MASK)
