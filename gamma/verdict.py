"""From model outputs to a verdict: ``real``, ``ai-generated``, ``manipulated``, ``needs-review``.

The thresholds live here and nowhere else; a checkpoint's config carries the values it was validated with,
so the worker, ``evaluate`` and the report all decide the same way.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

import numpy as np


class Verdict(StrEnum):
    REAL = "real"
    AI_GENERATED = "ai-generated"
    MANIPULATED = "manipulated"
    NEEDS_REVIEW = "needs-review"
    ERROR = "error"  # the image could not be judged; the reason travels with the result


@dataclass(frozen=True)
class VerdictThresholds:
    """Decision thresholds.

    ``ai_probability``: image probability at or above which an image is AI-generated.
    ``review_band``: half-width of the uncertainty band around ``ai_probability``; inside it, ``needs-review``.
    ``mask_pixel``: per-pixel probability above which a mask pixel counts as flagged (drawn masks, ``ai_area``).
    ``manipulated_area``: fraction of manipulation-mask pixels above ``manipulated_pixel`` beyond which a non-AI image
    is manipulated.
    ``manipulated_pixel``: the per-pixel probability that ``manipulated_area`` counts from; ``None`` (checkpoints
    calibrated before it existed): ``mask_pixel``. It is its own threshold because the pixel value that draws the
    best mask (pixel F1) is not the one that best tells an edited photo from a plain one: a confident peak does that
    far better than a wide, faint area (training/calibrate.py).
    """

    ai_probability: float = 0.5
    review_band: float = 0.1
    mask_pixel: float = 0.5
    manipulated_area: float = 0.01
    manipulated_pixel: float | None = None

    def __post_init__(self) -> None:
        for name in ("ai_probability", "mask_pixel", "manipulated_area", "manipulated_pixel"):
            value = getattr(self, name)
            if value is None and name == "manipulated_pixel":
                continue
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"threshold {name}={value} outside [0, 1]")
        if not 0.0 <= self.review_band < 0.5:
            raise ValueError(f"review_band={self.review_band} outside [0, 0.5)")

    @property
    def manipulated_pixel_threshold(self) -> float:
        """The per-pixel probability ``manipulated_area`` is measured at."""
        return self.mask_pixel if self.manipulated_pixel is None else self.manipulated_pixel

    def to_dict(self) -> dict[str, float | None]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> VerdictThresholds:
        return cls(**data)


@dataclass(frozen=True)
class Judgement:
    """One image's verdict with the numbers behind it."""

    verdict: Verdict
    probability: float
    ai_area: float
    manipulated_area: float

    def to_dict(self) -> dict[str, Any]:
        return {
            "verdict": self.verdict.value,
            "probability": self.probability,
            "ai_area": self.ai_area,
            "manipulated_area": self.manipulated_area,
        }


def mask_level(pixel_threshold: float) -> int:
    """The uint8 mask value above which a pixel counts as flagged (masks cross the wire and are stored as uint8)."""
    return round(pixel_threshold * 255)


def mask_area(mask_probability: np.ndarray, pixel_threshold: float) -> float:
    """Fraction of pixels whose probability exceeds ``pixel_threshold``; accepts float [0,1] or uint8 [0,255]."""
    mask = np.asarray(mask_probability)
    if mask.dtype == np.uint8:
        flagged = mask > mask_level(pixel_threshold)
    else:
        flagged = mask > pixel_threshold
    return float(flagged.mean()) if flagged.size else 0.0


def judge(
    probability: float,
    ai_mask: np.ndarray,
    manipulation_mask: np.ndarray,
    thresholds: VerdictThresholds | None = None,
) -> Judgement:
    """Verdict for one image from its AI probability and its two mask probability maps (H,W)."""
    t = thresholds or VerdictThresholds()
    manipulated = mask_area(manipulation_mask, t.manipulated_pixel_threshold)
    return decide(probability, mask_area(ai_mask, t.mask_pixel), manipulated, t)


def decide(
    probability: float, ai_area: float, manipulated_area: float, thresholds: VerdictThresholds | None = None
) -> Judgement:
    """Verdict from the AI probability and the flagged shares of the two masks (over the pixels the model saw)."""
    t = thresholds or VerdictThresholds()
    probability = float(probability)
    # the band's edges as sums, not abs(p - centre) < band: 0.6 - 0.5 is 0.0999..., which would put p = 0.6 inside
    # a band that ends at 0.5 + 0.1 == 0.6
    if probability >= t.ai_probability + t.review_band:
        verdict = Verdict.AI_GENERATED
    elif probability > t.ai_probability - t.review_band:
        verdict = Verdict.NEEDS_REVIEW
    elif manipulated_area > t.manipulated_area:
        verdict = Verdict.MANIPULATED
    else:
        verdict = Verdict.REAL
    return Judgement(verdict, probability, ai_area, manipulated_area)
