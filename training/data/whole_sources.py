"""Manifests of a built recipe's source pictures, whole and as they ship:
``python -m training.data.whole_sources [--recipe DIR] [--out DIR]``.

Every recipe view fits one serving tile (at most 400 px), so the recipe alone cannot measure what contract v2 does
with a large image: several tiles, their aggregation into one score, ``five`` against ``full`` coverage. The
sources themselves can: the camera photographs are 0.3–19 MP and many generated images exceed one tile. For each
split this writes ``<out>/<split>.jsonl`` (:func:`training.data.datasets.manifest` layout) with one row per source
of that split of the recipe, the file at its own path, untouched: a real photograph is ``kind`` ``real`` (class 0),
a generated image ``synthetic`` (class 1, AI mask all ones). The split of each source is read from the recipe's
own manifests, so nothing crosses splits and the validation rows can choose while the test rows only report.

Photos stored turned (:attr:`~training.data.sources.SourceImage.rotate`) are listed as stored.

Caveat for readers of any number on these manifests: the classes also differ in size (the photographs are larger)
and file format, so use them to compare contract choices on one model, not as a detection score.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from PIL import Image

from training.data.local_recipe import DEFAULT_OUT as RECIPE_DIR
from training.data.sources import SourceImage, all_sources, generator_of

SPLITS = ("val", "test")
KIND_OF_LABEL = {0: "real", 1: "synthetic"}


def recipe_sources(recipe: Path, split: str) -> list[str]:
    """The source ids of ``split`` in a built recipe, sorted."""
    path = Path(recipe) / f"{split}.jsonl"
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: build the recipe first (make train-data)")
    lines = path.read_text().splitlines()
    return sorted({json.loads(line)["source"] for line in lines if line.strip()})


def _recipe_settings(recipe: Path) -> dict[str, Any]:
    path = Path(recipe) / "recipe.json"
    return json.loads(path.read_text()).get("settings", {}) if path.is_file() else {}


def uses_archived_photos(recipe: Path) -> bool:
    """Whether the recipe was built with the photos fetched from package archives (recipe v4), per its recipe.json."""
    return bool(_recipe_settings(recipe).get("archived_photos", False))


def source_row(source: SourceImage) -> dict[str, Any]:
    with Image.open(source.path) as image:
        width, height = image.size
    return {
        "image": str(Path(source.path).resolve()),
        "label": source.label,
        "ai_mask": "all" if source.label == 1 else "none",
        "manipulation_mask": "all" if source.label == 1 else "none",
        "kind": KIND_OF_LABEL[source.label],
        "source": source.source_id,
        "generator": generator_of(source) if source.label == 1 else "",
        "width": width,
        "height": height,
    }


def build(
    recipe: Path = RECIPE_DIR,
    out: Path | None = None,
    splits: tuple[str, ...] = SPLITS,
    sources: tuple[SourceImage, ...] | None = None,
) -> dict[str, dict[str, int]]:
    """Writes ``<out>/<split>.jsonl`` for each split; returns per split the images per class and tiles' worth of
    pixels. ``sources`` defaults to every source found on this machine (:func:`all_sources`)."""
    out = Path(out) if out is not None else Path(f"{recipe}-whole")
    if sources is None and _recipe_settings(recipe).get("video_frames", False):
        raise ValueError(f"{recipe} has video frames (recipe v5): a frame is not a whole file; use recipe v3 or v4")
    if sources is None:
        sources = all_sources(
            archived=uses_archived_photos(recipe), demo=_recipe_settings(recipe).get("demo_photos", False)
        )
    by_id = {s.source_id: s for s in sources}
    out.mkdir(parents=True, exist_ok=True)
    summary: dict[str, dict[str, int]] = {}
    for split in splits:
        ids = recipe_sources(recipe, split)
        missing = [i for i in ids if i not in by_id]
        if missing:
            raise FileNotFoundError(
                f"{len(missing)} {split} source(s) of {recipe} are not on this machine (first: {missing[0]}); "
                "install the photo packages (make train-data)"
            )
        rows = [source_row(by_id[i]) for i in ids]
        (out / f"{split}.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
        summary[split] = {
            "real": sum(r["label"] == 0 for r in rows),
            "ai": sum(r["label"] == 1 for r in rows),
            "megapixels": round(sum(r["width"] * r["height"] for r in rows) / 1e6, 1),
        }
    return summary


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--recipe", type=Path, default=RECIPE_DIR, help="a built recipe (its split manifests)")
    parser.add_argument("--out", type=Path, default=None, help="default: <recipe>-whole")
    parser.add_argument("--split", action="append", choices=("train", *SPLITS), help="default: val and test")
    args = parser.parse_args(argv)
    try:
        summary = build(args.recipe, args.out, tuple(args.split or SPLITS))
    except FileNotFoundError as exc:
        sys.exit(f"whole_sources: {exc}")
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
