"""Cross-stitch on images (architectures/cross_stitch_conv.py): per-task conv towers over a CNN's
last map, mixed by cross-stitch units. At initialisation every task reads exactly hard sharing's
features; the parameters partition into shared and per-task; the units learn off their identity
start; a run trains with a gradient method, reloads and predicts as it evaluated, and exports to
ONNX; a ViT (token states) is refused with the reason."""

from __future__ import annotations

import json

import pytest
import torch

from polytask.config import from_dict
from polytask.errors import ConfigError
from test_vision import image_config, write_split

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")
TASKS = ["left", "right", "third"]


@pytest.fixture(scope="module")
def cnn(tmp_path_factory):
    from transformers import ResNetConfig, ResNetModel

    from polytask.backbones.vision import load_vision
    from polytask.config import ImageConfig, ModelConfig

    path = tmp_path_factory.mktemp("xs") / "cnn"
    torch.manual_seed(0)
    ResNetModel(ResNetConfig(embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1])).save_pretrained(path)
    return str(path), lambda: load_vision(ModelConfig(kind="vision", backbone=str(path), image=ImageConfig(size=16)))[0]


@pytest.mark.parametrize("per_channel", [False, True])
def test_starts_as_hard_sharing_and_partitions_its_parameters(cnn, per_channel):
    from polytask.architectures import build_architecture
    from polytask.architectures.cross_stitch_conv import ConvCrossStitch

    torch.manual_seed(1)
    arch = build_architecture("cross_stitch", cnn[1](), TASKS, {"layers": 2, "bottleneck": 4,
                                                                 "per_channel": per_channel})
    hard = build_architecture("hard", arch.backbone, TASKS)
    assert isinstance(arch, ConvCrossStitch)
    assert arch.mixing().shape == ((2, 3, 3, 16) if per_channel else (2, 3, 3))
    batch = {"pixel_values": torch.rand(2, 3, 16, 16)}
    arch.eval()
    with torch.no_grad():
        expected = hard(batch, "left").hidden
        for t in TASKS:
            assert torch.equal(arch(batch, t).hidden, expected)  # identity blocks, identity mixing
    trainable = {id(p) for p in arch.parameters() if p.requires_grad}
    shared = [id(p) for p in arch.shared_parameters()]
    owned = [id(p) for t in TASKS for p in arch.task_parameters(t)]
    assert len(set(owned)) == len(owned) and not set(shared) & set(owned)
    assert set(shared) | set(owned) == trainable


def test_trains_with_a_gradient_method_learns_to_mix_reloads_and_exports(cnn, tmp_path):
    from polytask.predict import Predictor, evaluate_run
    from polytask.train import train

    write_split(tmp_path, "train", 24, 1)
    write_split(tmp_path, "dev", 8, 2)
    cfg = image_config(tmp_path, cnn[0], arch="cross_stitch", weighting="upgrad", max_steps=6, eval_every=6)
    cfg["architecture"]["args"] = {"bottleneck": 4}
    run_dir = train(from_dict(cfg), progress=False)
    summary = json.loads((run_dir / "summary.json").read_text())
    again = evaluate_run(run_dir)
    for task in ("left", "right"):
        assert again["metrics"][task]["accuracy"] == pytest.approx(summary["dev"][task]["accuracy"])
    pred = Predictor.load(run_dir)
    A = pred.model.arch.mixing().detach()  # (layers, T, T)
    off = A - torch.eye(2).expand_as(A)
    assert off.abs().max() > 1e-4  # the units moved off their identity start (lr 3e-3, 6 steps of Adam)
    assert pred.predict("left", [str(tmp_path / "dev0.png")])[0] in ("0", "1")
    pytest.importorskip("onnxruntime")
    from polytask.export import export_onnx

    out = export_onnx(run_dir, tmp_path / "onnx")  # fails unless onnxruntime matches PyTorch within 1e-4
    assert json.loads((out / "polytask_onnx.json").read_text())["tasks"].keys() == {"left", "right"}


def test_a_vision_transformer_is_refused_with_the_reason(tmp_path):
    from transformers import ViTConfig, ViTModel

    from polytask.train import train

    vit = ViTConfig(hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32,
                    image_size=16, patch_size=8)
    ViTModel(vit, add_pooling_layer=False).save_pretrained(tmp_path / "vit")
    write_split(tmp_path, "train", 8, 1)
    write_split(tmp_path, "dev", 4, 2)
    with pytest.raises(ConfigError, match="cross_stitch on images mixes conv feature maps.*token states only"):
        train(from_dict(image_config(tmp_path, str(tmp_path / "vit"), arch="cross_stitch")), progress=False)
