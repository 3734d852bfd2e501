"""Encoder weights from HF and NVlabs layouts reproduce transformers' SegformerModel; GAMMA checkpoints round-trip."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from gamma.config import preset
from gamma.model import GammaModel
from gamma.weights import (
    WeightsError,
    convert_encoder_state,
    load_checkpoint,
    load_encoder_weights,
    save_checkpoint,
)

transformers = pytest.importorskip("transformers")


def _hf_model(preset_name: str) -> torch.nn.Module:
    config = preset(preset_name)
    hf_config = transformers.SegformerConfig(
        num_channels=3,
        num_encoder_blocks=4,
        depths=list(config.depths),
        sr_ratios=list(config.sr_ratios),
        hidden_sizes=list(config.hidden_sizes),
        patch_sizes=list(config.patch_sizes),
        strides=list(config.strides),
        num_attention_heads=list(config.num_attention_heads),
        mlp_ratios=[config.mlp_ratio] * 4,
        hidden_act="gelu",
        drop_path_rate=0.0,
    )
    torch.manual_seed(0)
    model = transformers.SegformerModel(hf_config).eval()
    with torch.no_grad():  # random, not default-initialised, so LayerNorm/bias mistakes cannot hide
        for parameter in model.parameters():
            parameter.add_(torch.randn_like(parameter) * 0.02)
    return model


def _hf_stage_outputs(model: torch.nn.Module, pixels: torch.Tensor) -> list[torch.Tensor]:
    with torch.no_grad():
        out = model(pixel_values=pixels, output_hidden_states=True)
    return list(out.hidden_states)


def _to_nvlabs(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Write our encoder keys the NVlabs way (fused kv), to test that loader path."""
    out: dict[str, torch.Tensor] = {}
    parts = {"attn.sr_norm": "attn.norm", "ffn.": "mlp."}
    for key, value in state.items():
        m = re.fullmatch(r"stages\.(\d)\.(.+)", key)
        assert m
        stage, rest = int(m[1]) + 1, m[2]
        if rest.startswith("patch_embed."):
            out[f"patch_embed{stage}.{rest[len('patch_embed.') :]}"] = value
        elif rest.startswith("norm."):
            out[f"norm{stage}.{rest[len('norm.') :]}"] = value
        else:
            b = re.fullmatch(r"blocks\.(\d+)\.(.+)", rest)
            assert b
            inner = b[2]
            for ours, theirs in parts.items():
                inner = inner.replace(ours, theirs)
            inner = inner.replace("mlp.dwconv.", "mlp.dwconv.dwconv.")
            out[f"block{stage}.{b[1]}.{inner}"] = value
    for key in [k for k in out if ".attn.k." in k]:
        v_key = key.replace(".attn.k.", ".attn.v.")
        out[key.replace(".attn.k.", ".attn.kv.")] = torch.cat([out.pop(key), out.pop(v_key)])
    out["head.weight"] = torch.zeros(1000, 4)  # ImageNet classifier: must be ignored
    return out


@pytest.mark.parametrize("saved_as", ["save_pretrained", "state_dict"])
@pytest.mark.parametrize("preset_name", ["gamma-b0", "gamma-b2"])
def test_hf_segformer_weights_give_identical_stage_outputs(tmp_path: Path, preset_name: str, saved_as: str) -> None:
    """save_pretrained writes the hub's (transformers 4) names; the in-memory state dict has transformers 5 names."""
    hf = _hf_model(preset_name)
    if saved_as == "save_pretrained":
        hf.save_pretrained(tmp_path)
    else:
        save_file({k: v.contiguous() for k, v in hf.state_dict().items()}, str(tmp_path / "model.safetensors"))
    ours = GammaModel(preset(preset_name)).eval()
    load_encoder_weights(ours, tmp_path / "model.safetensors")

    pixels = torch.randn(2, 3, 128, 160)
    expected = _hf_stage_outputs(hf, pixels)
    with torch.no_grad():
        actual = ours.encoder(pixels)
    assert len(actual) == len(expected) == 4
    for ours_stage, hf_stage in zip(actual, expected):
        assert ours_stage.shape == hf_stage.shape
        torch.testing.assert_close(ours_stage, hf_stage, atol=1e-5, rtol=0)


def test_hf_legacy_hub_layout_loads(tmp_path: Path) -> None:
    """``nvidia/mit-b0``-style keys (transformers 4 names, ``segformer.`` prefix, torch pickle)."""
    ours = GammaModel(preset("gamma-b0")).eval()
    reference = GammaModel(preset("gamma-b0")).eval()
    legacy = {}
    names = {
        "norm1": "layer_norm_1",
        "norm2": "layer_norm_2",
        "attn.q": "attention.self.query",
        "attn.k": "attention.self.key",
        "attn.v": "attention.self.value",
        "attn.proj": "attention.output.dense",
        "attn.sr_norm": "attention.self.layer_norm",
        "attn.sr": "attention.self.sr",
        "ffn.fc1": "mlp.dense1",
        "ffn.dwconv": "mlp.dwconv.dwconv",
        "ffn.fc2": "mlp.dense2",
    }
    for key, value in reference.encoder.state_dict().items():
        m = re.fullmatch(r"stages\.(\d)\.(.+)", key)
        assert m
        rest = m[2]
        if rest.startswith("patch_embed."):
            new = f"encoder.patch_embeddings.{m[1]}." + rest[len("patch_embed.") :].replace("norm.", "layer_norm.")
        elif rest.startswith("norm."):
            new = f"encoder.layer_norm.{m[1]}.{rest[len('norm.') :]}"
        else:
            b = re.fullmatch(r"blocks\.(\d+)\.(.+)", rest)
            assert b
            inner = b[2]
            for ours_name, theirs in names.items():
                if inner.startswith(ours_name + "."):
                    inner = theirs + inner[len(ours_name) :]
                    break
            new = f"encoder.block.{m[1]}.{b[1]}.{inner}"
        legacy["segformer." + new] = value
    torch.save(legacy, tmp_path / "pytorch_model.bin")
    load_encoder_weights(ours, tmp_path / "pytorch_model.bin")
    for key, value in reference.encoder.state_dict().items():
        assert torch.equal(ours.encoder.state_dict()[key], value), key


def test_nvlabs_layout_with_fused_kv_loads(tmp_path: Path) -> None:
    hf = _hf_model("gamma-b0")
    hf.save_pretrained(tmp_path / "hf")
    from safetensors.torch import load_file

    ours_state = convert_encoder_state(load_file(str(tmp_path / "hf" / "model.safetensors")))
    torch.save(_to_nvlabs(ours_state), tmp_path / "mit_b0.pth")
    ours = GammaModel(preset("gamma-b0")).eval()
    load_encoder_weights(ours, tmp_path / "mit_b0.pth")
    pixels = torch.randn(1, 3, 64, 96)
    expected = _hf_stage_outputs(hf, pixels)
    with torch.no_grad():
        actual = ours.encoder(pixels)
    for ours_stage, hf_stage in zip(actual, expected):
        torch.testing.assert_close(ours_stage, hf_stage, atol=1e-5, rtol=0)


def test_wrong_preset_weights_are_a_clear_error(tmp_path: Path) -> None:
    hf = _hf_model("gamma-b0")
    hf.save_pretrained(tmp_path)
    with pytest.raises(WeightsError, match="gamma-b2"):
        load_encoder_weights(GammaModel(preset("gamma-b2")), tmp_path / "model.safetensors")


def test_unknown_layout_is_a_clear_error(tmp_path: Path) -> None:
    save_file({"foo.weight": torch.zeros(2)}, str(tmp_path / "x.safetensors"))
    with pytest.raises(WeightsError, match="unrecognised"):
        load_encoder_weights(GammaModel(preset("gamma-b0")), tmp_path / "x.safetensors")


def test_checkpoint_round_trip_by_path_and_by_name(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = preset("gamma-b0").replace(thresholds=preset("gamma-b0").thresholds.__class__(ai_probability=0.7))
    model = GammaModel(config).eval()
    save_checkpoint(model, tmp_path / "my-model", {"version": 3, "name": "my-model"})
    by_path = load_checkpoint(tmp_path / "my-model")
    monkeypatch.setenv("GAMMA_MODEL_PATH", str(tmp_path))
    by_name = load_checkpoint("my-model")
    assert by_path.version == by_name.version == 3
    assert by_name.config.thresholds.ai_probability == 0.7
    images = torch.randint(0, 256, (1, 3, 64, 64), dtype=torch.uint8)
    with torch.no_grad():
        expected = model(images).image_logit
        assert torch.equal(by_name.model(images).image_logit, expected)


def test_missing_checkpoint_names_the_search_path(tmp_path: Path) -> None:
    with pytest.raises(WeightsError, match="searched"):
        load_checkpoint(tmp_path / "nope")


def test_checkpoint_whose_weights_do_not_fit_its_config_is_a_clear_error(tmp_path: Path) -> None:
    save_checkpoint(GammaModel(preset("gamma-b0")), tmp_path / "m")
    preset("gamma-b1").to_json(tmp_path / "m" / "config.json")
    with pytest.raises(WeightsError, match="wrong shape"):
        load_checkpoint(tmp_path / "m")
