"""Source images that need no download: real photographs from Debian packages and Python packages, and
fully AI-generated images from the ComfyUI template package. Everything is found on this machine at build time.

Real photographs (class 0), rule:
1. Debian wallpaper/doc packages (``mate-backgrounds``, ``plasma-workspace-wallpapers``, ``lomiri-wallpapers-16.04``,
   ``opencv-doc``): files listed by ``dpkg -L`` that are JPEG (the PNG wallpapers in these packages are vector art
   and renders), decode to 3-channel colour (greyscale calibration shots are out), have a short side >= 256, and
   are not under the HTML documentation (figures, screenshots). Plasma ships each wallpaper at many sizes: only the
   largest is kept, so one scene is one source.
2. Then a reviewed deny-list, :data:`NOT_PHOTOGRAPHS`, removes what passes 1 but is not a camera photograph
   (paintings, renders, vector art, synthetically blurred or already-manipulated images). Each entry says why.
3. Plus named colour photographs bundled with scikit-image and scikit-learn (:data:`PACKAGE_PHOTOS`).

AI images (class 1), rule: ComfyUI workflow-template thumbnails whose template name says text-to-image
(``t2i``, ``text_to_image``, ``image_generation``, ``image_create`` or a named plain-generation example) and says
nothing of an input image (``edit``, ``inpaint``, ``outpaint``, ``control``, ``upscale``, ``relight``, ``style``,
``reference``, ``video``, ``3d``, ``svg``/``vector``, ``app`` UI cards...). Those thumbnails are the generator's
output; the others show UI cards, edit inputs, or results of edits on real photos, whose labels we cannot know.
"""

from __future__ import annotations

import importlib.util
import re
import subprocess
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import numpy as np
from PIL import Image

DEBIAN_PACKAGES = ("mate-backgrounds", "plasma-workspace-wallpapers", "lomiri-wallpapers-16.04", "opencv-doc")
MIN_SIDE = 256

# Passed the automatic rule, yet not a camera photograph (checked by eye on a contact sheet of every candidate).
NOT_PHOTOGRAPHS: dict[str, str] = {
    "analogpattern_by_Peter_Nerlich.jpg": "abstract texture, not a scene",
    "Elephants.jpg": "painting (every size of it)",
    "GreenTraditional.jpg": "logo on a flat background",
    "umang_by_Abhishek_Mudgal.jpg": "colour gradient",
    "Blender_Suzanne1.jpg": "3D render",
    "Blender_Suzanne2.jpg": "3D render",
    "blox.jpg": "3D render",
    "ela_modified.jpg": "spliced image (error-level-analysis example)",
    "starry_night.jpg": "painting",
    "text_defocus.jpg": "synthetically blurred",
    "text_motion.jpg": "synthetically blurred",
    "aloeR.jpg": "other view of a kept stereo pair (one scene in two splits would leak)",
    "right.jpg": "other view of a kept stereo pair",
    "leuvenB.jpg": "other view of a kept scene",
    "aero3.jpg": "other view of a kept scene",
    "plasma:Autumn": "digital painting",
    "plasma:ColorfulCups": "3D render",
    "plasma:Flow": "vector art",
    "plasma:Honeywave": "vector art",
    "plasma:PastelHills": "vector art",
    "plasma:SafeLanding": "illustration",
    "plasma:Shell": "vector art",
    "plasma:Volna": "3D render",
}

# scikit-image / scikit-learn colour photographs (telescope, microscopy and fundus images left out: not scenes).
PACKAGE_PHOTOS = (
    "skimage:astronaut.png",
    "skimage:chelsea.png",
    "skimage:coffee.png",
    "skimage:motorcycle_left.png",
    "skimage:rocket.jpg",
    "sklearn:china.jpg",
    "sklearn:flower.jpg",
)
# motorcycle_right is the other half of a stereo pair: the same scene, so it would leak across splits.

_T2I = re.compile(
    r"(t2i|text_to_image|image_generation|image_create|^flux_schnell-|^flux1_krea_dev|^flux_dev_checkpoint_example"
    r"|^hidream_i1_|^image_hidream_o1|^image_z_image(_turbo)?-|^image_qwen_image-|^image_flux2(_fp8)?-|^image_anima_"
    r"|^image_ernie_image|^sd3\.5_simple_example|^sdxl_simple_example|^sdxlturbo_example)"
)
_NOT_T2I = re.compile(
    r"edit|inpaint|outpaint|control|canny|depth|upscale|relight|style|reference|remix|video|t2v"
    r"|i2v|3d|model|svg|vector|\.app|audio|speech|expand|fill|redux|kontext|variation"
)


@dataclass(frozen=True)
class SourceImage:
    """One source picture: a stable id (splits are drawn per id), where it comes from, and its class."""

    source_id: str
    path: Path
    label: int  # 0 real photograph, 1 fully AI-generated

    def load(self) -> np.ndarray:
        """(H, W, 3) uint8 RGB."""
        with Image.open(self.path) as im:
            return np.array(im.convert("RGB"))


def _dpkg_files(package: str) -> list[str]:
    result = subprocess.run(["dpkg", "-L", package], capture_output=True, text=True, check=False)
    return result.stdout.split() if result.returncode == 0 else []


def _deny_key(path: Path) -> str:
    parts = path.parts
    if "wallpapers" in parts and parts.index("wallpapers") + 1 < len(parts):
        return "plasma:" + parts[parts.index("wallpapers") + 1]
    return path.name


def _is_colour_jpeg(path: Path) -> tuple[int, int] | None:
    try:
        with Image.open(path) as im:
            if im.format != "JPEG" or im.mode != "RGB" or min(im.size) < MIN_SIDE:
                return None
            return im.size
    except OSError:
        return None


def debian_photos(packages: tuple[str, ...] = DEBIAN_PACKAGES) -> list[SourceImage]:
    """Real photographs from the installed Debian packages, per the rule in the module docstring."""
    best: dict[str, tuple[int, Path]] = {}
    for package in packages:
        for name in _dpkg_files(package):
            path = Path(name)
            if not re.search(r"\.jpe?g$", name, re.I) or "/html/" in name or not path.is_file():
                continue
            size = _is_colour_jpeg(path)
            key = _deny_key(path)
            unsized = re.sub(r"_\d+x\d+(?=\.)", "", path.name)
            if size is None or key in NOT_PHOTOGRAPHS or unsized in NOT_PHOTOGRAPHS:
                continue
            group = key if key.startswith("plasma:") else re.sub(r"_\d+x\d+(?=\.)", "", str(path))
            area = size[0] * size[1]
            if group not in best or area > best[group][0]:
                best[group] = (area, path)
    return [
        SourceImage(f"deb:{group.removeprefix('/usr/share/')}", path, 0) for group, (_, path) in sorted(best.items())
    ]


def _package_dir(module: str) -> Path | None:
    spec = importlib.util.find_spec(module)
    return Path(spec.origin).parent if spec and spec.origin else None


def package_photos() -> list[SourceImage]:
    """The bundled scikit-image and scikit-learn photographs listed in :data:`PACKAGE_PHOTOS` that are installed."""
    folders = {"skimage": ("skimage.data", ""), "sklearn": ("sklearn.datasets", "images")}
    out = []
    for entry in PACKAGE_PHOTOS:
        package, name = entry.split(":")
        module, sub = folders[package]
        folder = _package_dir(module)
        if folder is not None and (folder / sub / name).is_file():
            out.append(SourceImage(entry, folder / sub / name, 0))
    return out


def comfyui_template_dir() -> Path | None:
    folder = _package_dir("comfyui_workflow_templates_media_image")
    return folder / "templates" if folder else None


def is_text_to_image_template(filename: str) -> bool:
    """The filter rule for ComfyUI thumbnails (module docstring): text-to-image outputs only."""
    stem = filename.rsplit(".", 1)[0]
    return filename.endswith(".webp") and bool(_T2I.search(stem)) and not _NOT_T2I.search(stem.lower())


def comfyui_generated(folder: Path | None = None) -> list[SourceImage]:
    """Fully AI-generated images: the text-to-image thumbnails of the ComfyUI template package."""
    folder = folder or comfyui_template_dir()
    if folder is None or not folder.is_dir():
        return []
    names = sorted(p.name for p in folder.iterdir() if is_text_to_image_template(p.name))
    return [SourceImage(f"comfyui:{name.rsplit('.', 1)[0]}", folder / name, 1) for name in names]


@cache
def all_sources() -> tuple[SourceImage, ...]:
    return tuple(debian_photos() + package_photos() + comfyui_generated())
