"""Sample images for the demo, copied from packages a fresh machine installs (nothing is downloaded).

Every sample is an image the shipped model never trained or was validated on: its source scene or generated image
is in the *test* split of the local recipe (``training/data/local_recipe.py`` draws splits per source by hash;
``tests/unit/test_samples.py`` checks it), or it comes from a source reserved for independent evaluation.

- real photographs: test-split scenes of the Debian packages ``mate-backgrounds`` and ``lomiri-wallpapers-16.04``
  (``make setup`` installs both) and scikit-image's ``motorcycle_left``; plus matplotlib's ``grace_hopper.jpg``
  (a reserved, independent source);
- AI-generated: the test-split images of ``comfyui-workflow-templates-media-image`` (generators the model saw
  other images of: Ideogram, FLUX.1, Anima, Krea 2, Qwen-Image).

    python -m gamma.samples DEST
"""

from __future__ import annotations

import importlib.util
import shutil
import sys
from pathlib import Path

# folder (an absolute path, or a Python package whose folder holds the files) -> files
REAL_FILES = {
    "/usr/share/backgrounds/mate/nature": ["Aqua.jpg", "FreshFlower.jpg", "YellowFlower.jpg"],
    "/usr/share/backgrounds": ["seeding_by_Clements_Engelhardt.jpg", "sunset_by_Aitzol_Berasategi.jpg"],
    "skimage.data": ["motorcycle_left.png"],
    "matplotlib": ["mpl-data/sample_data/grace_hopper.jpg"],
}
AI_PACKAGE = "comfyui_workflow_templates_media_image"
AI_FILES = [
    "templates/api_ideogram_v4_t2i-1.webp",
    "templates/flux1_dev_uso_reference_image_gen-1.webp",
    "templates/image_anima_base_v1-1.webp",
    "templates/image_anima_preview-1.webp",
    "templates/image_krea2_turbo_t2i-1.webp",
    "templates/image_qwen_Image_2512_controlnet-1.webp",
]


def _folder(where: str) -> Path:
    if where.startswith("/"):
        if not Path(where).is_dir():
            raise SystemExit(f"{where} is missing (run `make setup`: it installs the Debian wallpaper packages)")
        return Path(where)
    spec = importlib.util.find_spec(where)
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit(f"package {where} is not installed (run `make setup`)")
    return Path(next(iter(spec.submodule_search_locations)))


def sample_sources() -> dict[str, list[Path]]:
    """``{"real": [...], "ai": [...]}``: the files the samples are copied from."""
    real = [_folder(where) / name for where, names in REAL_FILES.items() for name in names]
    ai = [_folder(AI_PACKAGE) / name for name in AI_FILES]
    return {"real": real, "ai": ai}


def collect(dest: Path) -> list[Path]:
    """Copy the sample images into ``dest/real`` and ``dest/ai``; returns the files written."""
    written = []
    for kind, sources in sample_sources().items():
        for source in sources:
            target = dest / kind / source.name
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(source, target)
            written.append(target)
    return written


def main() -> None:
    dest = Path(sys.argv[1] if len(sys.argv) > 1 else "samples")
    for path in collect(dest):
        print(path)


if __name__ == "__main__":
    main()
