"""The local recipe's bookkeeping on a few synthetic sources, with the neural generators replaced by cheap fakes
(the real ones are exercised by the shortcut audit's build): labels per kind, splits per source, and that a
recipe option adds its samples without changing any other sample."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from training.data import builders, local_recipe
from training.data.local_recipe import LocalRecipe, RecipeSettings
from training.data.sources import SourceImage
from training.labels import label_of


class _FakeESRGAN:
    def __init__(self, model: str) -> None:
        self.model = model

    def regenerate(self, rgb: np.ndarray) -> np.ndarray:
        return (255 - rgb).astype(np.uint8)

    def regenerate_region(self, rgb: np.ndarray, mask: np.ndarray) -> np.ndarray:
        return np.where(mask[..., None], 255 - rgb, rgb).astype(np.uint8)


class _FakeFaces:
    def __init__(self, seed: int = 0) -> None:
        self.rng = np.random.default_rng(seed)

    def sample(self, count: int) -> np.ndarray:
        return self.rng.integers(0, 255, (count, 64, 64, 3), dtype=np.uint8)


@pytest.fixture
def sources(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> list[SourceImage]:
    monkeypatch.setattr(builders, "RealESRGAN", type("R", (_FakeESRGAN,), {"MODELS": builders.RealESRGAN.MODELS}))
    monkeypatch.setattr(builders, "DCGANFaces", _FakeFaces)
    found = []
    for number in range(4):
        rng = np.random.default_rng(number)
        path = tmp_path / "src" / f"photo{number}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 255, (300, 420, 3), dtype=np.uint8)).save(path)
        found.append(SourceImage(f"test:photo{number}", path, 0))
    return found


def _rows(out: Path) -> list[dict]:
    lines = [line for split in local_recipe.SPLITS for line in (out / f"{split}.jsonl").read_text().splitlines()]
    return [json.loads(line) for line in lines]


def _build(out: Path, sources: list[SourceImage], **options: bool) -> list[dict]:
    settings = RecipeSettings(split_fractions=(1.0, 0.0, 0.0), x4plus_fraction=0.0, **options)
    LocalRecipe(settings, out).run(sources, progress=False)
    return _rows(out)


def test_feathered_splices_add_class_zero_pastes_and_change_nothing_else(
    tmp_path: Path, sources: list[SourceImage]
) -> None:
    plain = _build(tmp_path / "v5", sources)
    feathered = _build(tmp_path / "v6", sources, feathered_splices=True)

    added = [row for row in feathered if row["kind"] == "feathered_splicing"]
    # one per edited view that has a donor: the first source of a split has none
    assert len(added) == (len(sources) - 1) * RecipeSettings().views_per_source
    assert all(row["label"] == 0 and row["ai_mask"] == "none" for row in added)
    assert all(row["manipulation_mask"].startswith("masks/") for row in added)
    assert {row["kind"]: row["label"] for row in feathered} == {
        kind: label_of(kind).cls for kind in Counter(row["kind"] for row in feathered)
    }

    def kept(rows: list[dict], root: Path) -> dict[str, bytes]:
        return {row["image"]: (root / row["image"]).read_bytes() for row in rows if row["kind"] != "feathered_splicing"}

    # every other sample is byte for byte what the recipe without the option writes
    assert kept(plain, tmp_path / "v5") == kept(feathered, tmp_path / "v6")


def test_the_command_line_passes_every_recipe_option_through(
    tmp_path: Path, sources: list[SourceImage], monkeypatch: pytest.MonkeyPatch
) -> None:
    asked: dict[str, bool] = {}

    def fake_sources(**options: bool) -> tuple[SourceImage, ...]:
        asked.update(options)
        return tuple(sources)

    monkeypatch.setattr(local_recipe, "all_sources", fake_sources)
    out = tmp_path / "v6"
    local_recipe.main(["--out", str(out), "--archived-photos", "--video-frames", "--demo-photos",
                       "--feathered-splices", "--threads", "1"])  # fmt: skip
    assert asked == {"archived": True, "video": True, "demo": True}
    settings = json.loads((out / "recipe.json").read_text())["settings"]
    assert settings["demo_photos"] and settings["feathered_splices"] and settings["video_frames"]
    assert any(row["kind"] == "feathered_splicing" for row in _rows(out))
