"""Whole-source manifests: one row per source of a recipe split, the untouched file, the split read from the recipe."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from training.data import datasets, whole_sources
from training.data.sources import SourceImage


def _picture(path: Path, width: int, height: int) -> Path:
    Image.fromarray(np.full((height, width, 3), 90, np.uint8)).save(path)
    return path


@pytest.fixture
def recipe(tmp_path: Path) -> tuple[Path, tuple[SourceImage, ...]]:
    sources = (
        SourceImage("deb:big.jpg", _picture(tmp_path / "big.jpg", 1300, 700), 0),
        SourceImage("deb:small.jpg", _picture(tmp_path / "small.jpg", 300, 200), 0),
        SourceImage("comfyui:flux1_dev_t2i-1", _picture(tmp_path / "flux1_dev_t2i-1.png", 400, 400), 1),
        SourceImage("deb:unused.jpg", _picture(tmp_path / "unused.jpg", 64, 64), 0),
    )
    folder = tmp_path / "recipe"
    folder.mkdir()
    views = {  # two views of one source must give one row
        "val": [("deb:big.jpg", 0), ("deb:big.jpg", 1), ("comfyui:flux1_dev_t2i-1", 1)],
        "test": [("deb:small.jpg", 0)],
    }
    for split, rows in views.items():
        lines = [json.dumps({"image": f"images/v{i}.jpg", "label": label, "source": source})
                 for i, (source, label) in enumerate(rows)]  # fmt: skip
        (folder / f"{split}.jsonl").write_text("\n".join(lines) + "\n")
    return folder, sources


def test_one_row_per_source_of_each_split_with_the_file_untouched(recipe, tmp_path: Path) -> None:
    folder, sources = recipe
    summary = whole_sources.build(folder, tmp_path / "whole", sources=sources)
    assert summary["val"] == {"real": 1, "ai": 1, "megapixels": 1.1}
    assert summary["test"] == {"real": 1, "ai": 0, "megapixels": 0.1}

    val = [json.loads(line) for line in (tmp_path / "whole" / "val.jsonl").read_text().splitlines()]
    assert [r["source"] for r in val] == ["comfyui:flux1_dev_t2i-1", "deb:big.jpg"]
    generated, photo = val
    assert (generated["label"], generated["kind"], generated["ai_mask"], generated["generator"]) == (
        1, "synthetic", "all", "flux")  # fmt: skip
    assert (photo["label"], photo["kind"], photo["ai_mask"], photo["width"], photo["height"]) == (
        0, "real", "none", 1300, 700)  # fmt: skip
    assert Path(photo["image"]).read_bytes() == (tmp_path / "big.jpg").read_bytes()

    # the manifest loader (and so evaluate.py and contract_choices.py) reads it as written
    samples = datasets.manifest(tmp_path / "whole" / "val.jsonl")
    assert [(s.label, s.ai_mask, s.group) for s in samples] == [(1, "all", "synthetic"), (0, "none", "real")]
    assert samples[1].image == (tmp_path / "big.jpg").resolve()


def test_a_source_missing_on_this_machine_is_a_clear_error(recipe, tmp_path: Path) -> None:
    folder, sources = recipe
    with pytest.raises(FileNotFoundError, match=r"1 val source.*not on this machine"):
        whole_sources.build(folder, tmp_path / "whole", sources=sources[1:])
    with pytest.raises(SystemExit, match="build the recipe first"):
        whole_sources.main(["--recipe", str(tmp_path / "nowhere")])
