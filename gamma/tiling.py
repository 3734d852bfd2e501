"""Contract v2's geometry: which tiles of an image the model sees, and how tile outputs become image outputs.

The model never sees resampled pixels. An image is cut into tiles of at most ``TILE_SIZE`` x ``TILE_SIZE`` at its
own resolution; a side shorter than that is used whole, cut down to a multiple of the encoder's stride (``STRIDE``:
at most 31 px, taken evenly from both ends; the same holds for a side at most 31 px longer than a tile). Padding
instead would show the model borders it never saw in training, and upsizing would create the interpolation traces
detectors key on. Below ``MIN_SIDE`` an image is
refused (``too-small``): see :data:`MIN_SIDE` for the measurement.

Which tiles are seen is the *coverage*:

- ``centre``: the one tile in the middle (contract v1's view, without its upsizing);
- ``five``: the centre and the four corner tiles (as B-Free does); every tile when the grid has at most five;
- ``full``: the whole grid, which covers every pixel but the stride cut above (and <= 3 px at the right/bottom
  edges, where the last tile's origin is rounded down to the 4-px mask grid).

The grid along a side of ``L`` pixels with tile ``t`` has ``n = ceil((L - o) / (t - o))`` tiles for a minimum overlap
``o`` (``MIN_OVERLAP``), spread evenly from one end to the other; every tile origin is on the masks' 4-px grid, so
tile masks stitch into one full-image mask exactly. The classification head's image probability aggregates its
tiles' probabilities (:data:`AGGREGATION`); the stitched masks take the maximum where tiles overlap, and are zero
where no tile looked. The image's score, judged against the thresholds, is that probability or its fusion with
the AI mask (:data:`IMAGE_SCORE`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum

import numpy as np

from gamma.verdict import mask_level

__all__ = [
    "AGGREGATION", "DEFAULT_COVERAGE", "IMAGE_SCORE", "IMAGE_SCORES", "MASK_STRIDE", "MAX_MASK_SIDE", "MIN_OVERLAP",
    "MIN_SIDE", "STRIDE", "TILE_SIZE", "Box", "Coverage", "TileOutputs", "TilePlan", "aggregate_probability",
    "combine_tiles", "image_probability", "parse_coverage", "plan_tiles", "stitch_masks", "tile_area",
]  # fmt: skip

Box = tuple[int, int, int, int]  # left, top, right, bottom (right/bottom exclusive)

TILE_SIZE = 512
STRIDE = 32  # the encoder's output stride: tile sides are multiples of it, so every stage divides evenly
MASK_STRIDE = 4  # the decoders predict at 1/4 resolution; masks cross the wire and are stored at that stride
MIN_OVERLAP = 32  # one stage-4 cell: a trace cut by one tile's edge lies whole inside its neighbour
# Measured (training/contract_choices.py, 440 validation images cut to their centre s x s, shipped version 3):
# ROC-AUC 0.61 at 32 px, 0.69 at 64, 0.79 at 96, 0.85 at 128, 0.89 at 192, 0.90 whole (version 2: 0.54 at 32, at
# chance). Under 64 px the stage-4 map is a single cell and the score is near chance, so such images are refused.
MIN_SIDE = 64
MAX_MASK_SIDE = 2048  # stitched masks above this side are max-pooled down by an integer factor (8192-px images)


class Coverage(StrEnum):
    CENTRE = "centre"
    FIVE = "five"
    FULL = "full"


# Chosen from cost vs detection: on the test split's 27 source pictures, whole (training/data/whole_sources.py; 11.2
# tiles each under ``full``) the three modes score the same (ROC-AUC 0.889 each), so cost decides: ``five`` bounds
# any photo at 5 tiles (a 12 MP one: 5 vs 63 for ``full``, README's coverage bench) while looking at its corners;
# ``full`` is a per-scan choice.
DEFAULT_COVERAGE = Coverage.FIVE

# How tile probabilities become the image's (see aggregate_probability). The recipe's views are one tile each, so
# it is measured on the validation split's 43 source pictures, whole (15 span several tiles): mean logit 0.889 vs
# max 0.839 ROC-AUC. One odd tile of a large real photo decides a max, not a mean.
AGGREGATION = "mean-logit"
AGGREGATIONS = ("mean-logit", "max")
# The image score (training/contract_choices.py measures each on validation): ``classifier``, the classification
# head's aggregated probability (the paper's); ``fused``, the mean of its logit and the logit of the AI mask's mean
# over the seen pixels (a region edit moves a few mask pixels much and the pooled classification token little).
IMAGE_SCORES = ("classifier", "fused")
IMAGE_SCORE = "classifier"


def parse_coverage(value: str | Coverage | None) -> Coverage:
    """A coverage mode from its name (``None`` or ``""``: the default); ValueError naming the choices otherwise."""
    if value is None or value == "":
        return DEFAULT_COVERAGE
    try:
        return Coverage(str(value).strip().lower())
    except ValueError:
        choices = "|".join(c.value for c in Coverage)
        raise ValueError(f"unknown coverage {value!r} (choose {choices})") from None


def tile_side(length: int) -> int:
    """The tile's extent along an image side of ``length`` px: TILE_SIZE, or the side cut to the stride."""
    return min(TILE_SIZE, length // STRIDE * STRIDE)


def _grid_positions(length: int, tile: int) -> list[int]:
    """Tile origins along one side: evenly spread from 0 to ``length - tile``, on the 4-px mask grid."""
    if length - tile < STRIDE:  # one tile: a side cut to the stride keeps its centre
        offset = (length - tile) // 2
        return [offset - offset % MASK_STRIDE]
    count = max(2, math.ceil((length - MIN_OVERLAP) / (tile - MIN_OVERLAP)))
    last = length - tile
    return [round(i * last / (count - 1)) // MASK_STRIDE * MASK_STRIDE for i in range(count)]


@dataclass(frozen=True)
class TilePlan:
    """The tiles of one upright ``width`` x ``height`` image under a coverage mode.

    ``boxes`` are the tiles the model sees (all ``tile_width`` x ``tile_height``); ``grid`` counts the tiles that
    cover the whole image (what ``full`` sees), so ``len(boxes)`` of ``grid`` is how much was looked at.
    """

    width: int
    height: int
    tile_width: int
    tile_height: int
    boxes: tuple[Box, ...]
    grid: int
    coverage: Coverage

    @property
    def tiles_seen(self) -> int:
        return len(self.boxes)

    @property
    def mask_shape(self) -> tuple[int, int]:
        """(rows, columns) of the full-image masks at MASK_STRIDE."""
        return math.ceil(self.height / MASK_STRIDE), math.ceil(self.width / MASK_STRIDE)

    def seen(self) -> np.ndarray:
        """Bool (rows, columns) at MASK_STRIDE: the mask pixels some tile covered."""
        seen = np.zeros(self.mask_shape, dtype=bool)
        for left, top, right, bottom in self.boxes:
            seen[top // MASK_STRIDE : bottom // MASK_STRIDE, left // MASK_STRIDE : right // MASK_STRIDE] = True
        return seen

    def seen_fraction(self) -> float:
        """The share of the image's pixels inside some seen tile."""
        return float(self.seen().mean())


def plan_tiles(width: int, height: int, coverage: Coverage | str = DEFAULT_COVERAGE) -> TilePlan:
    """The tiles of an upright image; ValueError below MIN_SIDE (preprocessing refuses those first)."""
    coverage = parse_coverage(coverage)
    if min(width, height) < MIN_SIDE:
        raise ValueError(f"{width}x{height} is below the {MIN_SIDE}-px minimum side")
    tile_w, tile_h = tile_side(width), tile_side(height)
    xs, ys = _grid_positions(width, tile_w), _grid_positions(height, tile_h)
    grid = [(x, y) for y in ys for x in xs]
    centre = (width - tile_w) // 2 // MASK_STRIDE * MASK_STRIDE, (height - tile_h) // 2 // MASK_STRIDE * MASK_STRIDE
    if coverage is Coverage.FULL or len(grid) == 1 or (coverage is Coverage.FIVE and len(grid) <= 5):
        origins = grid
    elif coverage is Coverage.FIVE:
        corners = [(xs[0], ys[0]), (xs[-1], ys[0]), (xs[0], ys[-1]), (xs[-1], ys[-1])]
        origins = [centre, *dict.fromkeys(c for c in corners if c != centre)]
    else:
        origins = [centre]
    boxes = tuple((x, y, x + tile_w, y + tile_h) for x, y in origins)
    return TilePlan(width, height, tile_w, tile_h, boxes, len(grid), coverage)


def aggregate_probability(probabilities: Sequence[float] | np.ndarray, rule: str = AGGREGATION) -> float:
    """An image's AI probability from its tiles' probabilities.

    ``mean-logit``: the sigmoid of the mean tile logit (a whole generated image raises every tile; one odd tile
    of a large photo moves the image less than ``max`` would). ``max``: the most suspicious tile.
    """
    p = np.clip(np.asarray(probabilities, dtype=np.float64).reshape(-1), 1e-7, 1 - 1e-7)
    if p.size == 0:
        raise ValueError("no tiles to aggregate")
    if rule == "max":
        return float(p.max())
    if rule == "mean-logit":
        return float(1.0 / (1.0 + np.exp(-np.mean(np.log(p / (1.0 - p))))))
    raise ValueError(f"unknown aggregation {rule!r} (choose {'|'.join(AGGREGATIONS)})")


def _logit(p: float) -> float:
    p = min(max(float(p), 1e-4), 1 - 1e-4)  # a mask mean of exactly 0 or 1 stays finite
    return math.log(p / (1 - p))


def image_probability(head_probability: float, ai_mask_mean: float, rule: str = IMAGE_SCORE) -> float:
    """The image's score from the head's aggregated probability and the AI mask's mean (0..1) over seen pixels."""
    if rule == "classifier":
        return float(head_probability)
    if rule == "fused":
        return 1.0 / (1.0 + math.exp(-(_logit(head_probability) + _logit(ai_mask_mean)) / 2))
    raise ValueError(f"unknown image score {rule!r} (choose {'|'.join(IMAGE_SCORES)})")


def stitch_masks(plan: TilePlan, masks: np.ndarray) -> np.ndarray:
    """Tile masks (N, tile_height/4, tile_width/4) -> one full-image mask (rows, columns) at MASK_STRIDE.

    Overlaps keep the maximum (a region flagged by one tile stays flagged); pixels no tile saw are 0.
    """
    masks = np.asarray(masks)
    expected = (len(plan.boxes), plan.tile_height // MASK_STRIDE, plan.tile_width // MASK_STRIDE)
    if masks.shape != expected:
        raise ValueError(f"tile masks {masks.shape}, plan needs {expected}")
    full = np.zeros(plan.mask_shape, dtype=masks.dtype)
    for (left, top, _, _), mask in zip(plan.boxes, masks):
        row, col = top // MASK_STRIDE, left // MASK_STRIDE
        region = full[row : row + mask.shape[0], col : col + mask.shape[1]]
        np.maximum(region, mask[: region.shape[0], : region.shape[1]], out=region)
    return full


def cap_mask(mask: np.ndarray, max_side: int = MAX_MASK_SIDE) -> np.ndarray:
    """Max-pooled by the smallest integer factor that brings both sides to ``max_side`` or less (kept as is if
    they already are), so a flagged region stays visible in a stored mask of bounded size."""
    factor = math.ceil(max(mask.shape) / max_side)
    if factor <= 1:
        return mask
    rows, cols = math.ceil(mask.shape[0] / factor) * factor, math.ceil(mask.shape[1] / factor) * factor
    padded = np.zeros((rows, cols), dtype=mask.dtype)
    padded[: mask.shape[0], : mask.shape[1]] = mask
    return padded.reshape(rows // factor, factor, cols // factor, factor).max(axis=(1, 3))


@dataclass
class TileOutputs:
    """One image's outputs assembled from its tiles.

    ``probability``: the image's score (:data:`IMAGE_SCORE`), what thresholds judge; ``head_probability``: the
    classification head's aggregated probability; ``ai_mask_mean``: the AI mask's mean over the seen pixels (0..1);
    ``ai_mask``/``manipulation_mask``: uint8 (rows, columns) stitched at MASK_STRIDE (capped at MAX_MASK_SIDE);
    ``ai_area``/``manipulated_area``: the flagged share of the most affected tile (:func:`tile_area`);
    ``tile_probabilities``: the head's, per seen tile, in ``plan.boxes`` order; ``top_tile``: the box of the most
    suspicious tile in image pixels.
    """

    plan: TilePlan
    probability: float
    head_probability: float
    ai_mask_mean: float
    ai_mask: np.ndarray
    manipulation_mask: np.ndarray
    tile_probabilities: np.ndarray
    ai_area: float
    manipulated_area: float
    # per tile (N, h/4, w/4): what ``manipulated_area`` was measured on (the batch's array, not a copy; calibration
    # reads it, since the stitched mask keeps the larger value where tiles overlap)
    tile_manipulation_masks: np.ndarray

    @property
    def top_tile(self) -> Box:
        return self.plan.boxes[int(np.argmax(self.tile_probabilities))]

    def summary(self) -> dict[str, object]:
        """What a result records about coverage: tiles seen of the grid, the seen share, the top tile."""
        return {
            "coverage": self.plan.coverage.value,
            "tiles_seen": self.plan.tiles_seen,
            "tiles_total": self.plan.grid,
            "seen_fraction": round(self.plan.seen_fraction(), 4),
            "top_tile": list(self.top_tile),
        }


def tile_area(masks: np.ndarray, pixel_threshold: float) -> float:
    """The largest flagged share of any one tile's mask (N, h, w) (uint8 0..255 or float 0..1).

    Per tile, not over the whole image: the area thresholds (``manipulated_area``) were set on single crops, and an
    edit confined to one region would otherwise count for less the more of the image is looked at (a 160 px
    splice is 1.3 % of a 512 tile but 0.2 % of a 12 MP photo), so ``full`` would miss what ``centre`` finds there.
    """
    masks = np.asarray(masks)
    flagged = masks > mask_level(pixel_threshold) if masks.dtype == np.uint8 else masks > pixel_threshold
    return float(flagged.reshape(len(flagged), -1).mean(axis=1).max()) if flagged.size else 0.0


def combine_tiles(
    plan: TilePlan,
    probabilities: np.ndarray,
    ai_masks: np.ndarray,
    manipulation_masks: np.ndarray,
    mask_pixel: float,
    rule: str = AGGREGATION,
    manipulated_pixel: float | None = None,
) -> TileOutputs:
    """Per-tile outputs (N,), (N, h/4, w/4) x 2 -> the image's :class:`TileOutputs` (areas per :func:`tile_area`:
    the AI area at ``mask_pixel``, the manipulated area at ``manipulated_pixel``, by default ``mask_pixel``)."""
    probabilities = np.asarray(probabilities, dtype=np.float32).reshape(-1)
    ai, manipulation = stitch_masks(plan, ai_masks), stitch_masks(plan, manipulation_masks)
    head = aggregate_probability(probabilities, rule)
    seen_ai = ai[plan.seen()]
    ai_mean = float(seen_ai.mean()) / (255.0 if ai.dtype == np.uint8 else 1.0) if seen_ai.size else 0.0
    return TileOutputs(
        plan=plan,
        probability=image_probability(head, ai_mean),
        head_probability=head,
        ai_mask_mean=ai_mean,
        ai_mask=cap_mask(ai),
        manipulation_mask=cap_mask(manipulation),
        tile_probabilities=probabilities,
        ai_area=tile_area(ai_masks, mask_pixel),
        manipulated_area=tile_area(manipulation_masks, mask_pixel if manipulated_pixel is None else manipulated_pixel),
        tile_manipulation_masks=np.asarray(manipulation_masks),
    )
