"""GAMMA: detector of AI-generated and manipulated images (SegFormer MiT + two all-MLP decoders + reverse
cross-attention), with the one preprocessing contract and the verdict rules used everywhere.

Submodules import lazily so that light users (``gamma.preprocess`` in a worker) do not pay for torch.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "GammaConfig": "gamma.config",
    "PRESETS": "gamma.config",
    "preset": "gamma.config",
    "GammaModel": "gamma.model",
    "GammaOutput": "gamma.model",
    "InvalidInput": "gamma.model",
    "Detector": "gamma.inference",
    "TorchBackend": "gamma.inference",
    "ImageRejected": "gamma.preprocess",
    "PreprocessLimits": "gamma.preprocess",
    "preprocess": "gamma.preprocess",
    "Verdict": "gamma.verdict",
    "VerdictThresholds": "gamma.verdict",
    "judge": "gamma.verdict",
    "load_checkpoint": "gamma.weights",
    "save_checkpoint": "gamma.weights",
    "load_encoder_weights": "gamma.weights",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'gamma' has no attribute {name!r}")
