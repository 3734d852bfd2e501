"""Wang et al. 2020 (CNNDetection) augmentations, as the GAMMA recipe uses them: Gaussian blur, JPEG
re-compression, colour jitter and horizontal flip, each with its own probability.

They model what happens to an image before it is uploaded (re-saving, resizing blur, filters), so they run on the
decoded image *before* the JPEG-96 format alignment of the contract, and they never move pixels except the flip,
which is applied to the masks too.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageEnhance, ImageFilter


@dataclass(frozen=True)
class Augment:
    """Probabilities and ranges; defaults follow CNNDetection's "Blur+JPEG (0.1)" setting plus jitter and flip."""

    blur_prob: float = 0.1
    blur_sigma: tuple[float, float] = (0.0, 3.0)
    jpeg_prob: float = 0.1
    jpeg_quality: tuple[int, int] = (30, 100)
    jitter_prob: float = 0.1
    jitter_strength: float = 0.2  # brightness, contrast and saturation factors in [1 - s, 1 + s]
    flip_prob: float = 0.5

    def __call__(self, rgb: np.ndarray, masks: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """(H, W, 3) uint8 image and (H, W, C) masks -> augmented copies."""
        img = Image.fromarray(rgb)
        if rng.random() < self.blur_prob:
            img = img.filter(ImageFilter.GaussianBlur(float(rng.uniform(*self.blur_sigma))))
        if rng.random() < self.jitter_prob:
            s = self.jitter_strength
            for enhancer in (ImageEnhance.Brightness, ImageEnhance.Contrast, ImageEnhance.Color):
                img = enhancer(img).enhance(float(rng.uniform(1 - s, 1 + s)))
        if rng.random() < self.jpeg_prob:
            buffer = io.BytesIO()
            img.save(buffer, "JPEG", quality=int(rng.integers(self.jpeg_quality[0], self.jpeg_quality[1] + 1)))
            img = Image.open(buffer)
            img.load()
        out = np.asarray(img.convert("RGB"))
        if rng.random() < self.flip_prob:
            out, masks = out[:, ::-1], masks[:, ::-1]
        return np.ascontiguousarray(out), np.ascontiguousarray(masks)

    @classmethod
    def from_dict(cls, data: dict) -> Augment:
        values = {k: tuple(v) if isinstance(v, list) else v for k, v in data.items()}
        return cls(**values)


def content_only(size: int = 64) -> Callable[[np.ndarray], np.ndarray]:
    """Shrink so the short side is ``size`` px (aspect kept; box pre-reduction + Lanczos), then bicubic back up to
    the original size: content, colour and layout survive, pixel-level traces (noise, demosaicing, upsampling and
    compression grids) do not. An image whose short side is already <= ``size`` is returned unchanged."""

    def apply(rgb: np.ndarray) -> np.ndarray:
        height, width = rgb.shape[:2]
        if min(height, width) <= size:
            return rgb
        scale = size / min(height, width)
        small = (max(size, round(width * scale)), max(size, round(height * scale)))
        image = Image.fromarray(rgb).resize(small, Image.Resampling.LANCZOS, reducing_gap=3.0)
        return np.asarray(image.resize((width, height), Image.Resampling.BICUBIC))

    return apply
