"""gamma/samples.py: the demo's sample images arrive from the installed packages, the contract accepts them, and
none of them was seen in training or validation."""

from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image

from gamma import samples
from gamma.preprocess import preprocess
from gamma.tiling import MIN_SIDE, STRIDE, TILE_SIZE, Coverage


@pytest.fixture(scope="module")
def collected(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[Path]]:
    try:
        sample_sources = samples.sample_sources()
    except SystemExit as missing:
        pytest.skip(f"sample packages not installed: {missing} (make setup installs them)")
    dest = tmp_path_factory.mktemp("samples")
    return dest, samples.collect(dest), sample_sources


def test_collect_copies_the_real_photos_and_the_ai_images(collected) -> None:
    dest, written, sources = collected
    assert sorted(p.name for p in (dest / "real").iterdir()) == sorted(p.name for p in sources["real"])
    assert sorted(p.name for p in (dest / "ai").iterdir()) == sorted(p.name for p in sources["ai"])
    assert len(sources["real"]) == 7 and len(sources["ai"]) == 6
    assert sorted(written) == sorted([*(dest / "real").iterdir(), *(dest / "ai").iterdir()])


def test_no_sample_was_trained_or_validated_on(collected) -> None:
    """Each sample is a test-split source of the recipe (split by hash of its source id) or an independent one."""
    from training.data.local_recipe import RecipeSettings, split_of
    from training.data.sources import all_sources

    _, _, sources = collected
    by_path = {source.path.resolve(): source for source in all_sources()}
    independent = {"grace_hopper.jpg"}  # matplotlib's sample data: reserved for independent evaluation
    for path in [*sources["real"], *sources["ai"]]:
        if path.name in independent:
            assert path.resolve() not in by_path
            continue
        source = by_path.get(path.resolve())
        assert source is not None, f"{path} is not a recipe source"
        assert split_of(source.source_id, RecipeSettings().split_fractions) == "test", path
        assert source.label == (1 if path in sources["ai"] else 0)


def test_every_sample_is_an_image_the_contract_accepts(collected) -> None:
    """Each sample is tiled at its own resolution in every coverage mode (no sample is refused as too small)."""
    _, written, _ = collected
    for path in written:
        with Image.open(path) as image:
            image.verify()  # a real image file, not an LFS pointer or an empty copy
        data = path.read_bytes()
        for coverage in Coverage:
            tiles = preprocess(data, coverage=coverage)
            width, height = tiles.plan.width, tiles.plan.height
            tile = (min(TILE_SIZE, height // STRIDE * STRIDE), min(TILE_SIZE, width // STRIDE * STRIDE))
            assert min(width, height) >= MIN_SIDE and tiles.pixels.shape[1:] == (3, *tile), path
            seen = {"centre": 1, "five": min(5, tiles.plan.grid), "full": tiles.plan.grid}[coverage.value]
            assert len(tiles) == seen or (coverage is Coverage.FIVE and len(tiles) == 3), path  # 3: one-row panorama
