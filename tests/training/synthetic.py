"""A tiny fixed data set with a learnable trace: class 1 images carry a colour cast (+R, -B, as a miscalibrated
generator might leave), class 0 images are smooth scenes of the same distribution without it. The smoke test proves
that the training loop learns, not forensic skill, so the trace is one a from-scratch model picks up in ~20 steps.
(A 2-px checkerboard was tried first: random crops flip its phase and validation's center crop fixes it, so a
model trained for a minute learns one sign and scores below chance.) Images are 512x512 PNGs so the contract does
not resize them; the cast survives the JPEG-96 alignment and the jitter augmentation."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image


def _scene(rng: np.random.Generator) -> np.ndarray:
    grey = rng.integers(50, 206, (6, 6, 1))
    coarse = np.clip(grey + rng.integers(-12, 13, (6, 6, 3)), 0, 255).astype(np.uint8)  # muted colours
    return np.asarray(Image.fromarray(coarse).resize((512, 512), Image.Resampling.BICUBIC)).astype(np.int16)


def write_pattern_set(root: Path, n_train: int = 48, n_val: int = 24, cast: int = 24, seed: int = 0) -> Path:
    """Writes ``images/`` and ``train.jsonl``/``val.jsonl`` manifests (balanced classes) under ``root``."""
    rng = np.random.default_rng(seed)
    (root / "images").mkdir(parents=True, exist_ok=True)
    tint = np.array([cast, 0, -cast], dtype=np.int16)
    for split, count in (("train", n_train), ("val", n_val)):
        rows = []
        for i in range(count):
            label = i % 2
            pixels = _scene(rng) + (tint if label else 0)
            name = f"images/{split}-{i:03d}.png"
            Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(root / name)
            mask = "all" if label else "none"
            rows.append({"image": name, "label": label, "ai_mask": mask, "manipulation_mask": mask})
        (root / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return root
