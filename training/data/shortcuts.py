"""Shortcut audit: can a trivial classifier tell the classes apart from what should carry no class information?

Two feature sets, each fed to a cross-validated logistic regression (scikit-learn, a dev dependency):
- **format/quantisation**: of the stored file, its container (JPEG/WebP), its JPEG luminance quantisation level
  (0 for WebP) and chroma subsampling; of the *aligned* image the detector sees (contract: upsize + JPEG-96), the
  8x8 blockiness signature: the mean absolute luminance step across column/row boundaries at each of the 8 grid
  offsets, normalised to sum 1, so it shows *where* block edges are (double-compression grids) and not how busy
  the content is.
- **size/upsampling**: stored width, height, aspect, and an upsampling statistic: the share of spectral energy
  above 3/8 cycles per pixel (an image upsampled by s has almost none above 1/(2s)).

If the recipe's size matching and compression randomisation work, both score at chance. Run on a built set:
``python -m training.data.shortcuts training/data/cache/local-v3/train.jsonl``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
from PIL import Image

from gamma import preprocess as contract


def _luma(rgb: np.ndarray) -> np.ndarray:
    return rgb.astype(np.float64) @ np.array([0.299, 0.587, 0.114])


def blockiness_signature(rgb: np.ndarray) -> np.ndarray:
    """16 numbers: per grid offset 0..7, the mean |step| across columns, then across rows, each normalised."""
    y = _luma(rgb)
    cols = np.abs(np.diff(y, axis=1)).mean(0)
    rows = np.abs(np.diff(y, axis=0)).mean(1)
    parts = []
    for steps in (cols, rows):
        per_offset = np.array([steps[offset::8].mean() for offset in range(8)])
        parts.append(per_offset / max(per_offset.sum(), 1e-9))
    return np.concatenate(parts)


def high_frequency_share(rgb: np.ndarray, cutoff: float = 0.375) -> float:
    """Share of non-DC spectral energy at radial frequency above ``cutoff`` cycles/pixel (max 0.5 per axis)."""
    y = _luma(rgb)
    y = y - y.mean()
    power = np.abs(np.fft.rfft2(y * np.outer(np.hanning(y.shape[0]), np.hanning(y.shape[1])))) ** 2
    fy = np.fft.fftfreq(y.shape[0])[:, None]
    fx = np.fft.rfftfreq(y.shape[1])[None, :]
    radius = np.sqrt(fx**2 + fy**2)
    total = power[radius > 0].sum()
    return float(power[radius > cutoff].sum() / total) if total > 0 else 0.0


def format_features(path: Path) -> np.ndarray:
    data = Path(path).read_bytes()
    with Image.open(path) as im:
        is_jpeg = im.format == "JPEG"
        q_level = float(np.mean(im.quantization[0])) if is_jpeg else 0.0
        subsampling = float(getattr(im, "layer", [(0, 1, 1, 0)])[0][1]) if is_jpeg else 2.0
    aligned = contract.align_format(contract.decode_rgb(data))  # the contract never resamples
    return np.concatenate([[float(is_jpeg), q_level, subsampling], blockiness_signature(aligned)])


def size_features(path: Path) -> np.ndarray:
    rgb = contract.decode_rgb(Path(path).read_bytes())
    height, width = rgb.shape[:2]
    return np.array([width, height, width / height, high_frequency_share(rgb)], dtype=np.float64)


def cross_validated_accuracy(features: np.ndarray, labels: np.ndarray, folds: int = 5, seed: int = 0) -> float:
    """Balanced accuracy of a standardised logistic regression, stratified k-fold."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_val_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000))
    splitter = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
    return float(cross_val_score(model, features, labels, cv=splitter, scoring="balanced_accuracy").mean())


def audit(manifest_path: Path, limit: int | None = None, seed: int = 0) -> dict[str, float]:
    rows = [json.loads(line) for line in Path(manifest_path).read_text().splitlines() if line.strip()]
    if limit is not None and len(rows) > limit:
        rows = [rows[i] for i in np.random.default_rng(seed).choice(len(rows), limit, replace=False)]
    paths = [Path(manifest_path).parent / row["image"] for row in rows]
    labels = np.array([int(row["label"]) for row in rows])
    fmt = np.stack([format_features(p) for p in paths])
    size = np.stack([size_features(p) for p in paths])
    return {
        "count": len(rows),
        "format_quantisation": cross_validated_accuracy(fmt, labels, seed=seed),
        "size_upsampling": cross_validated_accuracy(size, labels, seed=seed),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Shortcut audit of a JSONL manifest (chance = 0.5).")
    parser.add_argument("manifest", type=Path)
    parser.add_argument("--limit", type=int, default=None)
    args = parser.parse_args(argv)
    print(json.dumps(audit(args.manifest, args.limit), indent=2))


if __name__ == "__main__":
    main()
