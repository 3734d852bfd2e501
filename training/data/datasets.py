"""Loaders for the paper's data layouts, all producing :class:`Sample` lists, and the torch dataset that turns
samples into training tensors through the serving contract (:mod:`gamma.preprocess`).

Layouts (``<stem>`` pairs an image with its mask; masks are PNG, non-zero = foreground):
- COCO real: every image under a folder -> ``real``.
- COCO-Inpaint: ``<root>/inpainted/<stem>.*`` + ``<root>/masks/<stem>.png`` -> ``inpaint`` (AI mask all ones);
  with ``blended=True`` the images come from ``<root>/blended/`` (made by ``builders.blend_inpainted``).
- TampCOCO: ``<root>/{cm,sp}_images/<stem>.*`` + ``<root>/{cm,sp}_masks/<stem>.png`` -> ``copy_move`` / ``splicing``.
- JSONL manifest: one ``{"image", "label", "ai_mask", "manipulation_mask"}`` object per line; masks are a path
  (relative to the manifest), ``"all"`` or ``"none"``; extra keys (``kind``, ``source``) are kept as the group.
- GenImage (evaluation): ``<root>/<generator>/{train,val}/{ai,nature}/*``.
- Plain evaluation folders: ``<root>/real/``, ``<root>/ai/`` and optionally ``<root>/masks/<stem>.png`` (AI masks).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from gamma import preprocess as contract
from gamma.tiling import MIN_SIDE, TILE_SIZE, Coverage, parse_coverage, plan_tiles
from training.augment import Augment, content_only
from training.labels import label_of

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff", ".gif"}
MaskRef = Path | str  # a file, or "all" / "none"


@dataclass(frozen=True)
class Sample:
    """One image and its three targets. ``group`` names where it came from (generator, kind) for per-group metrics."""

    image: Path
    label: int
    ai_mask: MaskRef = "none"
    manipulation_mask: MaskRef = "none"
    group: str = ""


def image_files(folder: Path) -> list[Path]:
    return sorted(p for p in Path(folder).rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())


def _by_stem(folder: Path) -> dict[str, Path]:
    return {p.stem: p for p in image_files(folder)} if Path(folder).is_dir() else {}


def _kind_sample(image: Path, kind: str, region: MaskRef | None, group: str) -> Sample:
    label = label_of(kind)

    def ref(spec: str) -> MaskRef:
        if spec == "region":
            if region is None:
                raise FileNotFoundError(f"{image}: no mask for a {kind} sample")
            return region
        return spec

    return Sample(image, label.cls, ref(label.ai_spec), ref(label.manipulation_spec), group or kind)


def coco_real(root: Path) -> list[Sample]:
    return [_kind_sample(p, "real", None, "coco_real") for p in image_files(root)]


def coco_inpaint(root: Path, blended: bool = False) -> list[Sample]:
    kind = "inpaint_blended" if blended else "inpaint"
    masks = _by_stem(Path(root) / "masks")
    images = image_files(Path(root) / ("blended" if blended else "inpainted"))
    return [_kind_sample(p, kind, masks.get(p.stem), kind) for p in images]


def tampcoco(root: Path) -> list[Sample]:
    out = []
    for prefix, kind in (("cm", "copy_move"), ("sp", "splicing")):
        masks = _by_stem(Path(root) / f"{prefix}_masks")
        out += [_kind_sample(p, kind, masks.get(p.stem), kind) for p in image_files(Path(root) / f"{prefix}_images")]
    return out


def _manifest_mask(value: str, base: Path) -> MaskRef:
    return value if value in ("all", "none") else base / value


def manifest(path: Path) -> list[Sample]:
    """Samples of a JSONL manifest; paths are relative to the manifest's folder."""
    path, out = Path(path), []
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        row = json.loads(line)
        try:
            out.append(Sample(
                path.parent / row["image"],
                int(row["label"]),
                _manifest_mask(row.get("ai_mask", "none"), path.parent),
                _manifest_mask(row.get("manipulation_mask", "none"), path.parent),
                str(row.get("kind") or row.get("group") or ""),
            ))  # fmt: skip
        except (KeyError, ValueError) as exc:
            raise ValueError(f"{path}:{number}: bad manifest row ({exc})") from exc
    return out


def genimage(root: Path, split: str = "val") -> list[Sample]:
    """GenImage: per generator, ``ai`` -> 1 (AI mask all ones), ``nature`` -> 0; group = generator."""
    out = []
    for generator in sorted(p for p in Path(root).iterdir() if (p / split).is_dir()):
        for sub, label in (("nature", 0), ("ai", 1)):
            ai = "all" if label else "none"
            out += [Sample(p, label, ai, ai, generator.name) for p in image_files(generator / split / sub)]
    return out


def real_ai_folders(root: Path) -> list[Sample]:
    """``real/`` (0) and ``ai/`` (1); an AI image with ``masks/<stem>.png`` gets it as its AI mask."""
    masks = _by_stem(Path(root) / "masks")
    out = [Sample(p, 0, "none", "none", "real") for p in image_files(Path(root) / "real")]
    for p in image_files(Path(root) / "ai"):
        mask: MaskRef = masks.get(p.stem, "all")
        out.append(Sample(p, 1, mask, mask, "ai"))
    return out


def is_genimage(root: Path) -> bool:
    return any((p / "val" / "ai").is_dir() or (p / "train" / "ai").is_dir() for p in Path(root).iterdir())


# --- tensors -------------------------------------------------------------------------------------------------


def has_region(ref: MaskRef) -> bool:
    """Whether a mask reference is a region (a file), not the whole image (``"all"``) or nothing (``"none"``)."""
    return ref not in ("all", "none")


def load_mask(ref: MaskRef, height: int, width: int) -> np.ndarray:
    """(H, W) uint8 in {0, 255}; a mask file of another size is resized (nearest) to the image."""
    if ref == "none":
        return np.zeros((height, width), np.uint8)
    if ref == "all":
        return np.full((height, width), 255, np.uint8)
    with Image.open(ref) as im:
        mask = im.convert("L")
        if mask.size != (width, height):
            mask = mask.resize((width, height), Image.Resampling.NEAREST)
        return np.where(np.asarray(mask) > 127, 255, 0).astype(np.uint8)


def _resize_masks(masks: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Masks follow the image's upsizing (nearest, so they stay binary)."""
    if (masks.shape[1], masks.shape[0]) == size:
        return masks
    return np.stack(
        [np.asarray(Image.fromarray(m).resize(size, Image.Resampling.NEAREST)) for m in masks.transpose(2, 0, 1)], -1
    )


def _pad_to(both: np.ndarray, size: int) -> np.ndarray:
    """Zero padding (bottom/right) up to ``size`` on each side, never resampling: a batch needs one shape. Only
    images smaller than a training crop are padded (none in the local recipe, whose short sides are >= 200)."""
    height, width = both.shape[:2]
    if height >= size and width >= size:
        return both
    return np.pad(both, ((0, max(size - height, 0)), (0, max(size - width, 0)), (0, 0)))


CONTENT_ONLY_SIZE = 64  # the content-only control's short side (training/evaluate.py --content-size default)


class GammaDataset(torch.utils.data.Dataset):
    """Sample -> (image (3,S,S) uint8, label float, AI mask (1,S,S) float, manipulation mask (1,S,S) float).

    The pipeline is the serving contract (v2: no resampling) with training's crop: decode -> [augment | degrade]
    -> align_format (JPEG-96) -> a random ``S`` crop (1-px padding) for training, the centre ``S`` crop for
    training-time validation. Images smaller than ``S`` are zero-padded, never upsized (a batch needs one shape).
    :meth:`tiles` gives what serving sees instead: the coverage's native-resolution tiles of the whole image, which
    is how :mod:`training.evaluate` and :mod:`training.calibrate` score. Augmentations (and evaluation's fixed
    ``degrade``) run before alignment: they stand for what happened to an image before it reached us. ``degrade``
    may change the image size; masks follow.

    ``crop_labels``: a crop of a sample whose AI mask is a region (a local edit) takes its class from the pixels it
    holds: if none of the region is in the crop, it is class 0, because by the label table's definition class 1
    means some pixel was made by a network, and no such pixel is there. Without it a 192-px crop of a 384-px view
    that misses a pasted face still says "AI", which teaches the classifier that plain real content is AI. Samples
    whose AI mask is all ones or none keep their class.

    ``content_only_prob`` (training only): the chance that a sample is shown as its content-only version (the
    content-only control's shrink to a 64-px short side and back, :func:`training.augment.content_only`, before
    alignment) with class target 0.5: its content stays, its pixel-level traces are gone, so it says nothing about
    whether a network made the pixels. Training then cannot lower its loss by reading the class from content alone
    (the scene, the style), which is what the content-only control measures. Masks keep their targets. A separate
    random stream decides, so at 0 every other draw is as before.
    """

    def __init__(
        self, samples: Sequence[Sample], crop: int = TILE_SIZE, train: bool = False,
        augment: Augment | None = None, seed: int = 0, padding: int = 1,
        degrade: Callable[[np.ndarray], np.ndarray] | None = None, crop_labels: bool = False,
        content_only_prob: float = 0.0,
    ) -> None:  # fmt: skip
        self.samples = list(samples)
        self.crop, self.train, self.augment, self.seed, self.padding = crop, train, augment, seed, padding
        self.degrade = degrade
        self.crop_labels = crop_labels
        if not 0.0 <= content_only_prob <= 1.0:
            raise ValueError(f"content_only_prob={content_only_prob} outside [0, 1]")
        self.content_only_prob = content_only_prob
        self._content_only = content_only(CONTENT_ONLY_SIZE)
        self.epoch = 0

    def __len__(self) -> int:
        return len(self.samples)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _rng(self, index: int) -> np.random.Generator:
        return np.random.default_rng([self.seed, self.epoch, index])

    def shows_content_only(self, index: int) -> bool:
        """Whether this epoch shows sample ``index`` as its content-only version (training only)."""
        if not (self.train and self.content_only_prob > 0.0):
            return False
        return bool(np.random.default_rng([self.seed, self.epoch, index, 1]).random() < self.content_only_prob)

    def load(self, index: int) -> tuple[np.ndarray, np.ndarray, int]:
        """Aligned full image (H, W, 3) and its masks (H, W, 2) before cropping, and the label."""
        sample = self.samples[index]
        rgb = contract.decode_rgb(Path(sample.image).read_bytes())
        height, width = rgb.shape[:2]
        masks = np.stack(
            [load_mask(sample.ai_mask, height, width), load_mask(sample.manipulation_mask, height, width)], -1
        )
        if self.train and self.augment is not None:
            rgb, masks = self.augment(rgb, masks, self._rng(index))
        if self.degrade is not None:
            rgb = np.ascontiguousarray(self.degrade(rgb))
        if self.shows_content_only(index):
            rgb = np.ascontiguousarray(self._content_only(rgb))
        if masks.shape[:2] != rgb.shape[:2]:  # a degrade that changed the size: masks follow (nearest)
            masks = _resize_masks(masks, (rgb.shape[1], rgb.shape[0]))
        return contract.align_format(rgb), masks, sample.label

    def tiles(self, index: int, coverage: Coverage | str | None = None) -> tuple[contract.Tiles, np.ndarray, int]:
        """Serving's view of sample ``index``: its :class:`~gamma.preprocess.Tiles` under ``coverage``, the
        full-image masks (H, W, 2) uint8 and the label. Raises ImageRejected (``too-small``) as serving would."""
        rgb, masks, label = self.load(index)
        height, width = rgb.shape[:2]
        if min(height, width) < MIN_SIDE:
            raise contract.ImageRejected("too-small", f"{width}x{height} image")
        return contract.cut_tiles(rgb, plan_tiles(width, height, parse_coverage(coverage))), masks, label

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        rgb, masks, label = self.load(index)
        both = _pad_to(np.concatenate([rgb, masks], -1), self.crop)
        if self.train:
            both = contract.random_crop(both, self.crop, self._rng(index), padding=self.padding)
        else:
            both = contract.center_crop(both, self.crop)
        if self.crop_labels and label == 1 and has_region(self.samples[index].ai_mask) and not both[..., 3].any():
            label = 0  # the crop missed the edited region: every pixel in it is real
        target = 0.5 if self.shows_content_only(index) else float(label)
        chw = torch.from_numpy(np.ascontiguousarray(both.transpose(2, 0, 1)))
        masks_t = chw[3:].float() / 255.0
        return chw[:3].contiguous(), torch.tensor(target), masks_t[:1], masks_t[1:]
