"""Contract v2's geometry (gamma/tiling.py) and the tiling, batching and stitching path through Detector.

The geometry tests check the documented guarantees on many image sizes: which pixels a coverage mode looks at,
tile sides, origins on the mask grid, the five-tile rule, aggregation, stitched masks in full-image coordinates.
The end-to-end tests run real preprocessing, :func:`gamma.inference.infer_tiles` and :class:`Detector` with
deterministic fake backends (no model), so what they check is the code around the model: a manipulated corner is
found where a coverage mode looks and missed where it does not, tiles of many images are batched to the right
image, small images reach the backend at their own resolution, and images under 64 px are refused.
"""

from __future__ import annotations

import io
import itertools
import math

import numpy as np
import pytest
from PIL import Image

from gamma import tiling
from gamma.inference import BatchOutputs, Detector, infer_tiles
from gamma.preprocess import align_format, decode_rgb, preprocess
from gamma.tiling import (
    AGGREGATION,
    AGGREGATIONS,
    DEFAULT_COVERAGE,
    MASK_STRIDE,
    MAX_MASK_SIDE,
    MIN_OVERLAP,
    MIN_SIDE,
    STRIDE,
    TILE_SIZE,
    Coverage,
    TilePlan,
    aggregate_probability,
    cap_mask,
    combine_tiles,
    parse_coverage,
    plan_tiles,
    stitch_masks,
)
from gamma.verdict import Verdict, VerdictThresholds

# Sizes with something to say: the minimum, stride edges, one tile exactly, one tile plus the stride cut, two
# tiles just, grids of 2..5 and over 5 per side, phone and camera photos, panoramas, the largest stored masks.
EDGE_SIZES = [
    (64, 64), (64, 1000), (95, 97), (96, 96), (100, 70), (200, 300), (511, 511), (512, 512), (543, 543),
    (544, 544), (545, 900), (992, 992), (1000, 700), (1023, 1025), (1024, 768), (1600, 1200), (2000, 1500),
    (3000, 520), (4032, 3024), (4000, 3000), (8192, 600), (640, 5000),
]  # fmt: skip


def random_sizes(count: int, seed: int = 0) -> list[tuple[int, int]]:
    rng = np.random.default_rng(seed)
    return [(int(w), int(h)) for w, h in rng.integers(MIN_SIDE, 5000, (count, 2))]


RANDOM_SIZES = random_sizes(300)


def axis_origins(plan: TilePlan) -> tuple[list[int], list[int]]:
    """The distinct tile origins along x and y, sorted."""
    return sorted({box[0] for box in plan.boxes}), sorted({box[1] for box in plan.boxes})


def bounding_box(plan: TilePlan) -> tuple[int, int, int, int]:
    boxes = np.array(plan.boxes)
    return (*boxes[:, :2].min(axis=0).tolist(), *boxes[:, 2:].max(axis=0).tolist())


def covered(length: int, origins: list[int], tile: int) -> np.ndarray:
    """Bool per pixel along one side: inside some tile (computed independently of TilePlan.seen)."""
    mask = np.zeros(length, dtype=bool)
    for origin in origins:
        mask[origin : origin + tile] = True
    return mask


# ---------------------------------------------------------------------------------------------- plan geometry


def check_full_coverage(size: tuple[int, int]) -> None:
    """Tiles are at most 512, multiples of 32, never larger than the image; origins on the 4-px grid; the full grid
    covers every pixel except the stride cut (<= 31 px along a side that is one tile, taken from both ends) or, along
    a side of several tiles, <= 3 px at the right/bottom edge; neighbours overlap by at least MIN_OVERLAP."""
    width, height = size
    plan = plan_tiles(width, height, Coverage.FULL)
    assert (plan.width, plan.height, plan.coverage) == (width, height, Coverage.FULL)
    for side, tile in ((width, plan.tile_width), (height, plan.tile_height)):
        assert tile % STRIDE == 0 and STRIDE * 2 <= tile <= min(TILE_SIZE, side)
        assert tile == TILE_SIZE or tile == side // STRIDE * STRIDE  # a side under 512 runs whole, cut to 32
    for left, top, right, bottom in plan.boxes:
        assert (right - left, bottom - top) == (plan.tile_width, plan.tile_height)
        assert 0 <= left and 0 <= top and right <= width and bottom <= height
        assert left % MASK_STRIDE == 0 and top % MASK_STRIDE == 0
    xs, ys = axis_origins(plan)
    assert len(plan.boxes) == len(xs) * len(ys) == plan.grid  # the whole grid, each tile once
    for side, origins, tile in ((width, xs, plan.tile_width), (height, ys, plan.tile_height)):
        seen = covered(side, origins, tile)
        first, last = int(np.argmax(seen)), side - int(np.argmax(seen[::-1]))
        assert seen[first:last].all()  # no hole between tiles
        before, after = first, side - last
        if len(origins) == 1:
            assert before + after == side - tile <= STRIDE - 1
            assert abs(before - after) < 2 * MASK_STRIDE  # centred, up to the 4-px grid
        else:
            assert before == 0 and after <= MASK_STRIDE - 1
            assert min(a + tile - b for a, b in itertools.pairwise(origins)) >= MIN_OVERLAP
            # as few tiles as the minimum overlap allows: one fewer could not cover the side
            assert (len(origins) - 1) * (tile - MIN_OVERLAP) + MIN_OVERLAP < side
    # TilePlan.seen (what the areas are measured over) agrees with the per-axis computation
    rows = covered(height, ys, plan.tile_height)[::MASK_STRIDE]
    cols = covered(width, xs, plan.tile_width)[::MASK_STRIDE]
    assert np.array_equal(plan.seen(), rows[:, None] & cols[None, :])
    assert plan.mask_shape == (math.ceil(height / 4), math.ceil(width / 4))


def check_five_and_centre(size: tuple[int, int]) -> None:
    """five = the centre tile and the grid's four corner tiles when the grid has more than five, else the grid;
    centre = the one tile in the middle."""
    width, height = size
    full, five, centre = (plan_tiles(width, height, c) for c in (Coverage.FULL, Coverage.FIVE, Coverage.CENTRE))
    assert full.grid == five.grid == centre.grid == len(full.boxes)  # tiles_total: the grid whatever the mode
    assert len({(plan.tile_width, plan.tile_height) for plan in (full, five, centre)}) == 1
    tw, th = full.tile_width, full.tile_height
    # centre: one tile, in the middle (floor, then down to the 4-px grid)
    cx, cy = (width - tw) // 2 // 4 * 4, (height - th) // 2 // 4 * 4
    assert centre.boxes == ((cx, cy, cx + tw, cy + th),) and centre.tiles_seen == 1
    if full.grid <= 5:  # a small grid: five looks at all of it
        assert five.boxes == full.boxes
        return
    xs, ys = axis_origins(full)
    corners = {(x, y, x + tw, y + th) for x in (xs[0], xs[-1]) for y in (ys[0], ys[-1])}
    assert five.boxes[0] == centre.boxes[0]
    assert set(five.boxes[1:]) == corners - {centre.boxes[0]} and len(set(five.boxes)) == len(five.boxes)
    assert len(five.boxes) == (5 if len(xs) > 1 and len(ys) > 1 else 3)  # a one-row panorama has two corners
    # the corner tiles reach as far into the image's corners as the full grid does
    assert bounding_box(five) == bounding_box(full)


@pytest.mark.parametrize("size", EDGE_SIZES, ids=[f"{w}x{h}" for w, h in EDGE_SIZES])
def test_plan_geometry_on_edge_sizes(size: tuple[int, int]) -> None:
    check_full_coverage(size)
    check_five_and_centre(size)


def test_plan_geometry_on_random_sizes() -> None:
    for size in RANDOM_SIZES:
        try:
            check_full_coverage(size)
            check_five_and_centre(size)
        except AssertionError as failure:
            raise AssertionError(f"{size[0]}x{size[1]}: {failure}") from failure


def test_grid_counts_on_known_photos() -> None:
    """Spelled out for sizes people know, so a change of the grid rule shows up as numbers."""
    expected = {  # (width, height): (tile width, tile height, columns, rows)
        (64, 64): (64, 64, 1, 1),
        (100, 70): (96, 64, 1, 1),
        (200, 300): (192, 288, 1, 1),
        (543, 600): (512, 512, 1, 2),
        (1000, 700): (512, 512, 3, 2),
        (1600, 1200): (512, 512, 4, 3),
        (4032, 3024): (512, 512, 9, 7),
    }
    for (width, height), (tw, th, columns, rows) in expected.items():
        plan = plan_tiles(width, height, "full")
        xs, ys = axis_origins(plan)
        assert (plan.tile_width, plan.tile_height, len(xs), len(ys)) == (tw, th, columns, rows), (width, height)
        assert plan_tiles(width, height, "five").tiles_seen == min(5, columns * rows)
    assert axis_origins(plan_tiles(1600, 1200, "full")) == ([0, 360, 724, 1088], [0, 344, 688])


@pytest.mark.parametrize("size", [(63, 100), (100, 63), (1, 1), (8, 8), (0, 500)])
def test_plan_refuses_sides_under_the_minimum(size: tuple[int, int]) -> None:
    with pytest.raises(ValueError, match="64"):
        plan_tiles(*size, Coverage.CENTRE)


def test_parse_coverage() -> None:
    assert parse_coverage(None) is parse_coverage("") is DEFAULT_COVERAGE
    assert parse_coverage(" FULL ") is Coverage.FULL and parse_coverage(Coverage.CENTRE) is Coverage.CENTRE
    with pytest.raises(ValueError, match="centre\\|five\\|full"):
        parse_coverage("center")
    assert plan_tiles(1600, 1200).coverage is DEFAULT_COVERAGE


def test_seen_fraction_by_mode() -> None:
    plans = {c: plan_tiles(1600, 1200, c) for c in Coverage}
    assert plans[Coverage.FULL].seen_fraction() == 1.0  # 1600 and 1200 are multiples of 4: not one pixel missed
    assert plans[Coverage.CENTRE].seen_fraction() == pytest.approx(512 * 512 / (1600 * 1200))
    assert plans[Coverage.CENTRE].seen_fraction() < plans[Coverage.FIVE].seen_fraction() < 1.0


# ------------------------------------------------------------------------------------------------ aggregation


def test_aggregation_rules() -> None:
    assert AGGREGATION in AGGREGATIONS
    logit = np.log(np.array([0.9, 0.2, 0.6]) / (1 - np.array([0.9, 0.2, 0.6])))
    assert aggregate_probability([0.9, 0.2, 0.6], "mean-logit") == pytest.approx(1 / (1 + np.exp(-logit.mean())))
    assert aggregate_probability([0.9, 0.1], "mean-logit") == pytest.approx(0.5)
    assert aggregate_probability([0.9, 0.2, 0.6], "max") == pytest.approx(0.9)
    assert aggregate_probability([0.3], "mean-logit") == pytest.approx(0.3) == aggregate_probability([0.3], "max")
    # saturated tiles are clipped, not inf/nan: one certain tile does not make the mean certain
    assert 0.5 < aggregate_probability([1.0, 0.5, 0.5, 0.5], "mean-logit") < 1.0
    assert np.isfinite(aggregate_probability([0.0, 1.0], "mean-logit"))
    with pytest.raises(ValueError, match="no tiles"):
        aggregate_probability([])
    with pytest.raises(ValueError, match="mean-logit"):
        aggregate_probability([0.5], "median")


# ---------------------------------------------------------------------------------------------- stitched masks


@pytest.mark.parametrize("coverage", list(Coverage))
@pytest.mark.parametrize("size", [(1600, 1200), (1000, 700), (543, 600), (200, 300), (3000, 520), (1023, 1025)])
def test_stitched_masks_sit_at_full_image_coordinates(size: tuple[int, int], coverage: Coverage) -> None:
    """Tiles cut from one full-image mask stitch back into exactly that mask where tiles looked, 0 elsewhere."""
    width, height = size
    plan = plan_tiles(width, height, coverage)
    truth = np.random.default_rng(width * height).integers(1, 256, plan.mask_shape, dtype=np.uint8)
    tiles = np.stack([truth[t // 4 : b // 4, left // 4 : r // 4] for left, t, r, b in plan.boxes])
    stitched = stitch_masks(plan, tiles)
    assert stitched.shape == plan.mask_shape and stitched.dtype == np.uint8
    seen = plan.seen()
    assert np.array_equal(stitched[seen], truth[seen]) and not stitched[~seen].any()


def test_stitching_takes_the_max_where_tiles_overlap() -> None:
    plan = plan_tiles(1000, 700, Coverage.FULL)  # tiles at x 0, 244, 488 and y 0, 188
    masks = np.zeros((len(plan.boxes), 128, 128), np.uint8)
    first = plan.boxes.index((0, 0, 512, 512))
    second = plan.boxes.index((244, 0, 756, 512))
    masks[first, 100, 120] = 10  # image pixel (y 400, x 480): inside both tiles
    masks[second, 100, 120 - 61] = 250  # the same pixel in the second tile's coordinates (244 / 4 = 61)
    masks[second, 5, 7] = 77  # image (y 20, x 244 + 28)
    full = stitch_masks(plan, masks)
    assert full[100, 120] == 250 and full[5, 61 + 7] == 77
    assert np.count_nonzero(full) == 2
    masks[first, 100, 120], masks[second, 100, 59] = 250, 10  # order of the tiles does not matter
    assert stitch_masks(plan, masks)[100, 120] == 250
    with pytest.raises(ValueError, match="plan needs"):
        stitch_masks(plan, masks[:, :64])


def test_cap_mask_bounds_the_side_and_keeps_flags() -> None:
    small = np.zeros((MAX_MASK_SIDE, 300), np.uint8)
    assert cap_mask(small) is small  # 8192-px images keep their full mask
    for shape in [(MAX_MASK_SIDE + 1, 10), (3000, 100), (16380, 4096), (5, 9000)]:
        mask = np.zeros(shape, np.uint8)
        mask[-1, -1] = 200  # a flag in the last row and column survives the pooling
        mask[0, 0] = 9
        capped = cap_mask(mask)
        factor = math.ceil(max(shape) / MAX_MASK_SIDE)
        assert max(capped.shape) <= MAX_MASK_SIDE
        assert capped.shape == (math.ceil(shape[0] / factor), math.ceil(shape[1] / factor))  # smallest factor
        assert capped[-1, -1] == 200 and capped[0, 0] == 9 and np.count_nonzero(capped) == 2
    assert cap_mask(np.ones((40, 10), np.uint8), max_side=16).shape == (14, 4)  # factor 3, padded up


def test_combine_tiles_measures_the_manipulated_area_at_its_own_pixel_threshold() -> None:
    plan = plan_tiles(512, 512, Coverage.CENTRE)
    faint = np.full((1, 128, 128), 150, np.uint8)  # 0.59: flagged at 0.5, not at 0.9
    default = combine_tiles(plan, np.array([0.2]), faint, faint, mask_pixel=0.5)
    strict = combine_tiles(plan, np.array([0.2]), faint, faint, mask_pixel=0.5, manipulated_pixel=0.9)
    assert default.manipulated_area == pytest.approx(1.0) and strict.manipulated_area == 0.0
    assert default.ai_area == strict.ai_area == pytest.approx(1.0)


def test_combine_tiles_measures_areas_in_the_most_affected_tile() -> None:
    plan = plan_tiles(1600, 1200, Coverage.CENTRE)
    flagged = np.full((1, 128, 128), 255, np.uint8)
    half = flagged.copy()
    half[:, 64:] = 0
    outputs = combine_tiles(plan, np.array([0.8]), half, flagged, mask_pixel=0.5)
    assert outputs.manipulated_area == pytest.approx(1.0)  # the tile the model saw, not 512^2 / 1.92 MP
    assert outputs.ai_area == pytest.approx(0.5)
    # the same edit in one tile of the full grid counts as much as in a single view: coverage does not dilute it
    full = plan_tiles(1600, 1200, Coverage.FULL)
    quarter = np.zeros((full.tiles_seen, 128, 128), np.uint8)
    quarter[3, :64, :64] = 255
    none = np.zeros_like(quarter)
    wide = combine_tiles(full, np.full(full.tiles_seen, 0.1), none, quarter, mask_pixel=0.5)
    assert wide.manipulated_area == pytest.approx(0.25) and wide.ai_area == 0.0
    assert outputs.manipulation_mask.shape == (300, 400) and outputs.manipulation_mask.sum() == 255 * 128 * 128
    assert outputs.probability == pytest.approx(0.8)
    assert outputs.summary() == {
        "coverage": "centre",
        "tiles_seen": 1,
        "tiles_total": 12,
        "seen_fraction": round(512 * 512 / (1600 * 1200), 4),
        "top_tile": [544, 344, 1056, 856],
    }
    five = plan_tiles(1600, 1200, Coverage.FIVE)
    probabilities = np.array([0.1, 0.2, 0.95, 0.3, 0.4], np.float32)
    zeros = np.zeros((5, 128, 128), np.uint8)
    outputs = combine_tiles(five, probabilities, zeros, zeros, mask_pixel=0.5, rule="max")
    assert outputs.probability == pytest.approx(0.95) and outputs.top_tile == five.boxes[2]
    assert np.array_equal(outputs.tile_probabilities, probabilities)
    assert outputs.summary()["tiles_seen"] == 5 and outputs.summary()["tiles_total"] == 12


# ------------------------------------------------------------------- end to end through Detector (fake backends)


class MagentaBackend:
    """A deterministic stand-in for the model: every tile's AI probability is low, and the manipulation mask marks
    the 4x4 cells (the masks' stride) whose mean colour is saturated magenta, computed from the tile it was given.
    Records the shape of every batch, so tests see how tiles were batched."""

    model_name = "magenta"
    model_version = 1

    def __init__(self, max_batch_size: int = 3, probability: float = 0.05) -> None:
        self.max_batch_size = max_batch_size
        self.thresholds = VerdictThresholds()  # manipulated above 1 % of the most affected tile
        self.probability = probability
        self.batches: list[tuple[int, ...]] = []

    def infer(self, images: np.ndarray) -> BatchOutputs:
        assert images.dtype == np.uint8 and images.ndim == 4 and len(images) <= self.max_batch_size
        self.batches.append(images.shape)
        b, _, h, w = images.shape
        cells = images.reshape(b, 3, h // 4, 4, w // 4, 4).mean(axis=(3, 5))
        magenta = (cells[:, 0] > 200) & (cells[:, 1] < 60) & (cells[:, 2] > 200)
        return BatchOutputs(
            probability=np.full(b, self.probability, np.float32),
            ai_mask=np.zeros((b, h // 4, w // 4), np.uint8),
            manipulation_mask=magenta.astype(np.uint8) * 255,
        )


def photo_like(width: int, height: int, seed: int) -> np.ndarray:
    """Smooth colour gradients and sensor noise, kept far from magenta (red and blue under 190)."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    channels = [90 + 50 * np.sin(x / rng.uniform(40, 300) + p) * np.cos(y / rng.uniform(40, 300)) for p in (0, 1, 2)]
    img = np.stack(channels, axis=-1) + rng.normal(0, 6, (height, width, 3))
    return np.clip(img, 20, 180).astype(np.uint8)


def encode(rgb: np.ndarray, fmt: str) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(rgb).save(buffer, fmt, **({"quality": 92} if fmt == "JPEG" else {}))
    return buffer.getvalue()


# The must-show case: a 1600x1200 photo (grid 4x3) with a 160x160 magenta patch in its bottom-right corner, 16 px
# from both edges: inside the bottom-right corner tile (1088..1600 x 688..1200) only, far from the centre tile
# (544..1056 x 344..856). 160^2 px is 1.3 % of the image: above the 1 % manipulated-area threshold even when every
# pixel is seen. Its sides are on the 16-px MCU grid, so JPEG alignment leaves every 4x4 cell clearly in or out.
CORNER = (1424, 1024, 1584, 1184)  # left, top, right, bottom


@pytest.fixture(scope="module", params=["PNG", "JPEG"])
def corner_image(request: pytest.FixtureRequest) -> bytes:
    rgb = photo_like(1600, 1200, seed=11)
    left, top, right, bottom = CORNER
    rgb[top:bottom, left:right] = (255, 0, 255)
    return encode(rgb, request.param)


@pytest.mark.parametrize("coverage", [Coverage.FULL, Coverage.FIVE])
def test_a_manipulated_corner_is_found_by_full_and_five(corner_image: bytes, coverage: Coverage) -> None:
    backend = MagentaBackend()
    result = Detector(backend, coverage=coverage).classify_bytes([("corner", corner_image)])[0]
    assert result.judgement is not None and result.tiles is not None and result.manipulation_mask is not None
    mask = result.manipulation_mask
    assert mask.shape == (300, 400)  # the full image at stride 4, not a tile
    left, top, right, bottom = (v // MASK_STRIDE for v in CORNER)
    expected = np.zeros(mask.shape, np.uint8)
    expected[top:bottom, left:right] = 255
    # flagged exactly over the patch in full-image coordinates, and nowhere else
    assert np.array_equal(mask, expected)
    # the patch's share of the one tile that holds it whole (160 x 160 px of 512 x 512), whatever the coverage
    assert result.judgement.manipulated_area == pytest.approx(40 * 40 / (128 * 128))
    assert result.judgement.probability == pytest.approx(0.05, abs=1e-6)
    assert result.judgement.verdict is Verdict.MANIPULATED
    summary = result.to_dict()
    assert summary["coverage"] == coverage.value and summary["tiles_total"] == 12
    assert summary["tiles_seen"] == (12 if coverage is Coverage.FULL else 5)
    assert sum(shape[0] for shape in backend.batches) == summary["tiles_seen"]
    assert all(shape[1:] == (3, 512, 512) for shape in backend.batches)


def test_a_manipulated_corner_is_missed_by_centre(corner_image: bytes) -> None:
    """What contract v1's single centre view did, and ``centre`` still does: a corner edit goes unseen."""
    result = Detector(MagentaBackend(), coverage=Coverage.CENTRE).classify_bytes([("corner", corner_image)])[0]
    assert result.judgement is not None and result.manipulation_mask is not None
    left, top, right, bottom = (v // MASK_STRIDE for v in CORNER)
    assert result.manipulation_mask.shape == (300, 400)
    assert not result.manipulation_mask[top:bottom, left:right].any() and not result.manipulation_mask.any()
    assert result.judgement.manipulated_area == 0.0
    assert result.judgement.verdict is Verdict.REAL
    assert result.to_dict()["tiles_seen"] == 1


class EchoBackend:
    """Answers from each tile's own pixels: probability = mean / 255, ai mask = the red channel of each 4x4 cell's
    top-left pixel, manipulation mask = its blue channel. Records every batch (copies) it was given."""

    model_name = "echo"
    model_version = 1

    def __init__(self, max_batch_size: int = 3) -> None:
        self.max_batch_size = max_batch_size
        self.thresholds = VerdictThresholds()
        self.received: list[np.ndarray] = []

    @staticmethod
    def answer(tile: np.ndarray) -> tuple[float, np.ndarray, np.ndarray]:
        return float(tile.mean() / 255), tile[0, ::4, ::4], tile[2, ::4, ::4]

    def infer(self, images: np.ndarray) -> BatchOutputs:
        assert images.dtype == np.uint8 and len(images) <= self.max_batch_size
        assert len({tuple(images.shape[1:])}) == 1
        self.received.append(images.copy())
        answers = [self.answer(tile) for tile in images]
        return BatchOutputs(
            probability=np.array([a[0] for a in answers], np.float32),
            ai_mask=np.stack([a[1] for a in answers]),
            manipulation_mask=np.stack([a[2] for a in answers]),
        )


MIXED = [(600, 520), (100, 70), (1100, 700), (200, 300), (64, 64), (101, 80), (1000, 700), (70, 200)]


def test_tiles_of_images_of_different_shapes_are_batched_to_the_right_image() -> None:
    """Eight images, five tile shapes, batches of at most three tiles of one shape: every image gets its own tiles'
    outputs, in input order, with rejected images in their places; the same as each image run alone."""
    items = [(f"{w}x{h}", encode(photo_like(w, h, seed=i), "PNG")) for i, (w, h) in enumerate(MIXED)]
    items.insert(3, ("tiny", encode(photo_like(40, 300, seed=99), "PNG")))
    items.insert(6, ("junk", b"not an image"))
    backend = EchoBackend(max_batch_size=3)
    detector = Detector(backend, coverage=Coverage.FIVE)
    results = detector.classify_bytes(items)

    assert [r.source for r in results] == [source for source, _ in items]
    assert [r.error.reason if r.error else None for r in results] == [
        None, None, None, "too-small", None, None, "undecodable", None, None, None,
    ]  # fmt: skip
    expected_tiles = 0
    for (source, data), result in zip(items, results):
        if result.error is not None:
            continue
        tiles = preprocess(data, coverage=Coverage.FIVE)
        expected_tiles += len(tiles)
        answers = [EchoBackend.answer(tile) for tile in tiles.pixels]
        want = combine_tiles(
            tiles.plan,
            np.array([a[0] for a in answers], np.float32),
            np.stack([a[1] for a in answers]),
            np.stack([a[2] for a in answers]),
            backend.thresholds.mask_pixel,
        )
        assert result.tiles is not None and result.judgement is not None, source
        assert result.tiles.plan == tiles.plan, source
        assert np.array_equal(result.tiles.tile_probabilities, want.tile_probabilities), source
        assert np.array_equal(result.ai_mask, want.ai_mask) and np.array_equal(
            result.manipulation_mask, want.manipulation_mask
        )
        assert result.judgement.probability == want.probability, source
        alone = Detector(EchoBackend(max_batch_size=1), coverage=Coverage.FIVE).classify_bytes([(source, data)])[0]
        assert alone.judgement == result.judgement and np.array_equal(alone.ai_mask, result.ai_mask), source
    shapes = [batch.shape[2:] for batch in backend.received]
    assert sum(len(batch) for batch in backend.received) == expected_tiles
    assert len(set(shapes)) == 5  # 512x512, 96x64, 192x288, 64x64, 64x192: never mixed within a batch
    assert all(len(batch) <= 3 for batch in backend.received)
    # batching is by shape across images: the 512x512 tiles of three images fill full batches of three
    assert sum(1 for batch in backend.received if batch.shape[2:] == (512, 512)) == math.ceil((2 + 5 + 5) / 3)


def test_infer_tiles_of_nothing_is_nothing() -> None:
    backend = EchoBackend()
    assert infer_tiles(backend, []) == [] and backend.received == []


@pytest.mark.parametrize("size", [(64, 64), (100, 70), (200, 300), (70, 513), (543, 90)])
def test_small_images_reach_the_backend_at_their_own_resolution(size: tuple[int, int]) -> None:
    """No upsampling anywhere: the backend receives the decoded, format-aligned pixels cut to the stride — a tile
    never larger than the image — in every coverage mode, and the masks come back at the image's own size."""
    width, height = size
    data = encode(photo_like(width, height, seed=width), "PNG")
    aligned = align_format(decode_rgb(data))
    tile_w, tile_h = min(TILE_SIZE, width // 32 * 32), min(TILE_SIZE, height // 32 * 32)
    for coverage in Coverage:
        backend = EchoBackend()
        result = Detector(backend, coverage=coverage).classify_bytes([("small", data)])[0]
        assert result.tiles is not None and result.ai_mask is not None
        received = np.concatenate(backend.received)
        assert received.shape[2:] == (tile_h, tile_w) and tile_w <= width and tile_h <= height
        for (left, top, right, bottom), tile in zip(result.tiles.plan.boxes, received, strict=True):
            assert np.array_equal(tile, aligned[top:bottom, left:right].transpose(2, 0, 1))
        assert result.ai_mask.shape == (math.ceil(height / 4), math.ceil(width / 4))


@pytest.mark.parametrize(
    ("size", "fmt"), [((1, 1), "PNG"), ((8, 8), "PNG"), ((8, 8), "JPEG"), ((63, 500), "JPEG"), ((900, 63), "PNG")]
)
def test_images_under_64_px_are_refused_too_small(size: tuple[int, int], fmt: str) -> None:
    data = encode(photo_like(*size, seed=1), fmt)
    backend = EchoBackend()
    result = Detector(backend).classify_bytes([("tiny", data)])[0]
    assert result.judgement is None and result.error is not None
    assert result.to_dict() == {
        "source": "tiny",
        "verdict": "error",
        "reason": "too-small",
        "detail": result.error.detail,
    }
    assert "64" in result.error.detail and backend.received == []


def test_the_image_score_is_the_head_or_its_fusion_with_the_seen_ai_mask() -> None:
    plan = plan_tiles(1024, 512, Coverage.CENTRE)  # one 512 tile seen of a 1024-px-wide image
    side = TILE_SIZE // MASK_STRIDE
    ai = np.zeros((1, side, side), np.uint8)
    ai[0, : side // 2] = 255  # half the seen tile flagged; the unseen half of the image must not dilute it
    result = combine_tiles(plan, np.array([0.3], np.float32), ai, np.zeros_like(ai), mask_pixel=0.5)
    assert result.head_probability == pytest.approx(0.3)
    assert result.ai_mask_mean == pytest.approx(0.5)
    assert result.probability == pytest.approx(tiling.image_probability(0.3, 0.5, tiling.IMAGE_SCORE))
    assert tiling.image_probability(0.3, 0.5, "classifier") == pytest.approx(0.3)
    # fused: the mean of the two logits (logit 0.5 = 0, so the head's logit halves); finite at a mask mean of 0 or 1
    assert tiling.image_probability(0.3, 0.5, "fused") == pytest.approx(1 / (1 + np.exp(-np.log(0.3 / 0.7) / 2)))
    assert 0.0 < tiling.image_probability(0.3, 0.0, "fused") < tiling.image_probability(0.3, 1.0, "fused") < 1.0
    with pytest.raises(ValueError, match="unknown image score"):
        tiling.image_probability(0.3, 0.5, "max-mask")
