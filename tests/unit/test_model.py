"""The GAMMA model: presets, shapes, named outputs, input contract, reverse cross-attention wiring."""

from __future__ import annotations

import pytest
import torch

from gamma.config import PRESETS, GammaConfig, preset
from gamma.model import GammaModel, InvalidInput
from gamma.model.attention import ReverseCrossAttention
from gamma.model.encoder import DropPath
from gamma.model.serving import ServingModel


def _count(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.fixture(scope="module")
def b0() -> GammaModel:
    torch.manual_seed(0)
    return GammaModel(preset("gamma-b0")).eval()


def test_gamma_b2_has_the_papers_parameter_count() -> None:
    assert _count(GammaModel(preset("gamma-b2"))) / 1e6 == pytest.approx(35.6, abs=0.1)


def test_presets_follow_segformer_mit() -> None:
    assert PRESETS["gamma-b0"].hidden_sizes == (32, 64, 160, 256)
    assert [PRESETS[f"gamma-b{i}"].depths for i in range(6)] == [
        (2, 2, 2, 2),
        (2, 2, 2, 2),
        (3, 4, 6, 3),
        (3, 4, 18, 3),
        (3, 8, 27, 3),
        (3, 6, 40, 3),
    ]
    assert [PRESETS[f"gamma-b{i}"].decoder_hidden_size for i in range(6)] == [256, 256, 768, 768, 768, 768]
    assert all(p.sr_ratios == (8, 4, 2, 1) and p.num_attention_heads == (1, 2, 5, 8) for p in PRESETS.values())
    assert preset("b2") == PRESETS["gamma-b2"]
    with pytest.raises(KeyError, match="gamma-b7"):
        preset("gamma-b7")


def test_config_json_round_trip(tmp_path) -> None:
    config = preset("gamma-b1").replace(drop_path_rate=0.2)
    config.to_json(tmp_path / "c.json")
    assert GammaConfig.from_json(tmp_path / "c.json") == config
    with pytest.raises(ValueError, match="unknown"):
        GammaConfig.from_dict({"name": "x", "bogus": 1})


@pytest.mark.parametrize("size", [(64, 64), (96, 160), (512, 512)])
def test_named_outputs_have_documented_shapes(b0: GammaModel, size: tuple[int, int]) -> None:
    images = torch.randint(0, 256, (2, 3, *size), dtype=torch.uint8)
    with torch.no_grad():
        out = b0(images)
    assert out.image_logit.shape == (2,)
    assert out.ai_mask_logits.shape == (2, 1, size[0] // 4, size[1] // 4)
    assert out.manipulation_mask_logits.shape == (2, 1, size[0] // 4, size[1] // 4)


def test_uint8_and_float_inputs_agree(b0: GammaModel) -> None:
    images = torch.randint(0, 256, (1, 3, 64, 64), dtype=torch.uint8)
    with torch.no_grad():
        from_uint8 = b0(images)
        from_float = b0(images.float() / 255.0)
    torch.testing.assert_close(from_uint8.image_logit, from_float.image_logit, atol=1e-5, rtol=1e-5)


def test_normalisation_happens_inside(b0: GammaModel) -> None:
    grey = torch.full((1, 3, 32, 32), 128, dtype=torch.uint8)
    normalised = b0.normalise(grey)
    expected = (128 / 255 - torch.tensor([0.485, 0.456, 0.406])) / torch.tensor([0.229, 0.224, 0.225])
    torch.testing.assert_close(normalised[0, :, 0, 0], expected)


@pytest.mark.parametrize(
    ("images", "message"),
    [
        (torch.zeros(1, 1, 64, 64, dtype=torch.uint8), "3 RGB channels"),
        (torch.zeros(1, 3, 64, 70, dtype=torch.uint8), "multiples of 32"),
        (torch.zeros(3, 64, 64, dtype=torch.uint8), "batch"),
        (torch.zeros(1, 3, 64, 64, dtype=torch.int32), "dtype"),
        (torch.zeros(0, 3, 64, 64, dtype=torch.uint8), "empty"),
    ],
)
def test_wrong_input_is_a_clear_error(b0: GammaModel, images: torch.Tensor, message: str) -> None:
    with pytest.raises(InvalidInput, match=message):
        b0(images)


def test_reverse_attention_is_a_real_softmax_over_classification_tokens() -> None:
    """With many keys the output depends on the queries; with one key it could not (softmax over one = 1)."""
    torch.manual_seed(0)
    attention = ReverseCrossAttention(query_size=16, context_size=16, num_heads=2).eval()
    context = torch.randn(1, 9, 16)
    a = attention(torch.randn(1, 20, 16), context)
    b = attention(torch.randn(1, 20, 16), context)
    assert a.shape == (1, 16)
    assert not torch.allclose(a, b)
    single = context[:, :1]
    torch.testing.assert_close(attention(torch.randn(1, 20, 16), single), attention(torch.randn(1, 20, 16), single))


def test_both_decoders_feed_the_image_logit(b0: GammaModel) -> None:
    """Gradients of the image logit reach both decoders' fused features through the reverse attention."""
    model = GammaModel(preset("gamma-b0")).train()
    out = model(torch.rand(2, 3, 64, 64))
    out.image_logit.sum().backward()
    for decoder in (model.ai_decoder, model.manipulation_decoder):
        assert decoder.fuse.weight.grad is not None and decoder.fuse.weight.grad.abs().sum() > 0


def test_drop_path_drops_whole_samples_in_training_only() -> None:
    drop = DropPath(0.5).train()
    branch = torch.ones(64, 4, 8)
    torch.manual_seed(0)
    out = drop(branch).flatten(1)
    # Each sample's branch is dropped whole (0) or kept and scaled by 1/keep (2): expectation unchanged.
    assert (out == out[:, :1]).all() and set(out[:, 0].tolist()) == {0.0, 2.0}
    dropped = int((out[:, 0] == 0).sum())
    assert 16 < dropped < 48  # ~half of 64 (binomial: outside this range with probability < 1e-4)
    assert torch.equal(drop.eval()(branch), branch)


def test_stochastic_depth_only_in_training() -> None:
    # Other dropouts off, so any difference between passes comes from stochastic depth.
    config = preset("gamma-b0").replace(drop_path_rate=0.5, hidden_dropout_prob=0.0, decoder_dropout_prob=0.0)
    torch.manual_seed(0)
    model = GammaModel(config)
    assert max(block.drop_path.p for stage in model.encoder.stages for block in stage.blocks) == 0.5
    images = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        model.train()
        torch.manual_seed(1)
        first = model(images).image_logit
        torch.manual_seed(2)
        second = model(images).image_logit
        assert not torch.allclose(first, second)
        model.eval()
        torch.testing.assert_close(model(images).image_logit, model(images).image_logit, rtol=0, atol=0)
        # Without stochastic depth, training-mode passes are identical: the difference above is DropPath's.
        reference = GammaModel(config.replace(drop_path_rate=0.0)).train()
        torch.testing.assert_close(reference(images).image_logit, reference(images).image_logit, rtol=0, atol=0)


def test_serving_model_emits_wire_dtypes(b0: GammaModel) -> None:
    probability, ai_mask, manipulation_mask = ServingModel(b0)(torch.zeros(2, 3, 64, 64, dtype=torch.uint8))
    assert probability.shape == (2, 1) and probability.dtype == torch.float32
    assert ai_mask.dtype == manipulation_mask.dtype == torch.uint8
    assert ai_mask.shape == (2, 1, 16, 16)
    assert ((probability >= 0) & (probability <= 1)).all()
