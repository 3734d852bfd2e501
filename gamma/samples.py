"""Sample images for the demo, copied from packages a fresh machine installs (nothing is downloaded).

Real photographs: scikit-learn's ``china.jpg``/``flower.jpg`` and scikit-image's ``astronaut``/``coffee``/``chelsea``.
AI-generated: text-to-image outputs from the PyPI package ``comfyui-workflow-templates-media-image``; only files
whose names mark a text-to-image workflow (``text_to_image`` or ``t2i``) and the first output of each, so UI cards,
edit inputs and video stills are left out.

    python -m gamma.samples DEST
"""

from __future__ import annotations

import importlib.util
import shutil
import sys
from pathlib import Path

REAL_FILES = {
    "sklearn.datasets": ["images/china.jpg", "images/flower.jpg"],
    "skimage.data": ["astronaut.png", "coffee.png", "chelsea.png"],
}
AI_PACKAGE = "comfyui_workflow_templates_media_image"
AI_NAME_MARKERS = ("text_to_image", "t2i")
AI_COUNT = 5


def _package_dir(module: str) -> Path:
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit(f"package {module} is not installed (run `make setup`)")
    return Path(next(iter(spec.submodule_search_locations)))


def ai_generated_candidates() -> list[Path]:
    templates = _package_dir(AI_PACKAGE) / "templates"
    return sorted(
        p
        for p in templates.glob("*-1.webp")
        if any(marker in p.stem.lower() for marker in AI_NAME_MARKERS) and "video" not in p.stem.lower()
    )


def collect(dest: Path) -> list[Path]:
    """Copy the sample images into ``dest/real`` and ``dest/ai``; returns the files written."""
    written = []
    for module, files in REAL_FILES.items():
        root = _package_dir(module)
        for name in files:
            target = dest / "real" / Path(name).name
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(root / name, target)
            written.append(target)
    for source in ai_generated_candidates()[:AI_COUNT]:
        target = dest / "ai" / source.name
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
