"""gamma/samples.py: the demo's sample images arrive from the installed packages, and the contract accepts them."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
from PIL import Image

from gamma import samples
from gamma.preprocess import CROP_SIZE, preprocess

REAL_NAMES = {Path(name).name for files in samples.REAL_FILES.values() for name in files}


def _installed(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:  # the parent package of a dotted name is missing
        return False


@pytest.fixture(scope="module")
def collected(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[Path]]:
    missing = [m for m in (*samples.REAL_FILES, samples.AI_PACKAGE) if not _installed(m)]
    if missing:
        pytest.skip(f"sample packages not installed: {missing} (make setup installs them)")
    dest = tmp_path_factory.mktemp("samples")
    return dest, samples.collect(dest)


def test_collect_copies_five_real_photos_and_some_ai_images(collected: tuple[Path, list[Path]]) -> None:
    dest, written = collected
    assert REAL_NAMES == {"china.jpg", "flower.jpg", "astronaut.png", "coffee.png", "chelsea.png"}
    assert {p.name for p in (dest / "real").iterdir()} == REAL_NAMES
    ai = sorted((dest / "ai").iterdir())
    assert 1 <= len(ai) <= samples.AI_COUNT
    for path in ai:  # text-to-image outputs only: no UI cards, edit inputs or video stills
        stem = path.stem.lower()
        assert any(marker in stem for marker in samples.AI_NAME_MARKERS) and "video" not in stem
    assert sorted(written) == sorted([*(dest / "real").iterdir(), *ai])


def test_every_sample_is_an_image_the_contract_accepts(collected: tuple[Path, list[Path]]) -> None:
    _, written = collected
    for path in written:
        with Image.open(path) as image:
            image.verify()  # a real image file, not an LFS pointer or an empty copy
        assert preprocess(path.read_bytes()).shape == (3, CROP_SIZE, CROP_SIZE)
