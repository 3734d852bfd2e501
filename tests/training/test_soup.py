"""training/soup.py: weight-space interpolation of two checkpoints of one architecture."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from gamma.config import GammaConfig
from gamma.model import GammaModel
from gamma.weights import WeightsError, load_checkpoint, save_checkpoint
from tests.fixtures.models import MICRO_CONFIG
from training import soup


def _checkpoint(directory: Path, seed: int, config: GammaConfig = MICRO_CONFIG, version: int = 1) -> Path:
    torch.manual_seed(seed)
    model = GammaModel(config).eval()
    for module in model.modules():  # non-trivial BatchNorm statistics, so they are seen to be mixed too
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.uniform_(-1, 1)
            module.num_batches_tracked.fill_(seed + 1)
    metadata = {"name": "micro", "version": version, "calibration": {"ece": 0.1}, "metrics": {"val": {}}, "seed": seed}
    save_checkpoint(model, directory, metadata)
    return directory


def test_the_mix_is_the_weighted_sum_and_loads_as_a_checkpoint(tmp_path: Path) -> None:
    a, b = _checkpoint(tmp_path / "a", seed=0, version=6), _checkpoint(tmp_path / "b", seed=1, version=7)
    out = soup.main(["--checkpoint", str(a), "--checkpoint", str(b), "--weight", "0.25", "--out", str(tmp_path / "m")])
    sa, sb, sm = (load_file(str(d / "model.safetensors")) for d in (a, b, out))
    floats = [k for k, v in sa.items() if v.is_floating_point()]
    assert any("running_mean" in k for k in floats)
    for key in floats:
        torch.testing.assert_close(sm[key], 0.75 * sa[key] + 0.25 * sb[key], rtol=1e-6, atol=1e-6)
    counters = [k for k in sa if k.endswith("num_batches_tracked")]
    assert counters and all(torch.equal(sm[k], sa[k]) for k in counters)  # integers: the first checkpoint's
    metadata = json.loads((out / "metadata.json").read_text())
    assert "calibration" not in metadata and "metrics" not in metadata  # measured on the first, not on the mix
    assert metadata["seed"] == 0  # the rest of the first checkpoint's provenance stays
    assert [(i["weight"], i["version"]) for i in metadata["soup"]["ingredients"]] == [(0.75, 6), (0.25, 7)]
    mixed = load_checkpoint(out)
    assert mixed.config == load_checkpoint(a).config


def test_the_ends_of_the_line_are_the_checkpoints_themselves(tmp_path: Path) -> None:
    a, b = _checkpoint(tmp_path / "a", seed=0), _checkpoint(tmp_path / "b", seed=1)
    for weight, source in ((0.0, a), (1.0, b)):
        out = soup.soup([a, b], [1.0 - weight, weight], tmp_path / f"w{weight}")
        mixed, original = load_file(str(out / "model.safetensors")), load_file(str(source / "model.safetensors"))
        for key, value in original.items():
            if value.is_floating_point():
                assert torch.equal(mixed[key], value), key


def test_other_architectures_and_bad_weights_are_refused(tmp_path: Path) -> None:
    a = _checkpoint(tmp_path / "a", seed=0)
    wider = _checkpoint(tmp_path / "wide", seed=1, config=MICRO_CONFIG.replace(decoder_hidden_size=32))
    with pytest.raises(WeightsError, match="architecture"):
        soup.soup([a, wider], [0.5, 0.5], tmp_path / "x")
    for weights in ([0.5, 0.6], [float("nan"), 1.0], [-0.5, 1.5]):
        with pytest.raises(ValueError, match="sum to 1"):
            soup.soup([a, a], weights, tmp_path / "y")
    with pytest.raises(SystemExit) as exit_info:  # the command: one line, no traceback
        soup.main(["--checkpoint", str(a), "--checkpoint", str(wider), "--weight", "0.5", "--out", str(tmp_path / "z")])
    assert exit_info.value.code == 2
