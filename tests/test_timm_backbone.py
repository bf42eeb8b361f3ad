"""timm models as vision backbones (``model.backbone: timm:<name>``, backbones/timm_vision.py): a
two-task image run on a tiny random timm network saved to a local folder (``timm:local-dir:``, no
internet), evaluated again and predicted from its run folder after the folder is gone (the network
is rebuilt from ``backbone/config.json`` alone), and timm's names and preprocessing.

timm needs torchvision, which does not import beside the project's torch 2.13.0 CPU wheel, so this
file is skipped there; it runs where a matching pair is installed (docs/vision.md, 'Backbones').
The error without timm: tests/test_timm_missing.py."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

pytest.importorskip("timm", reason="timm needs torchvision, which does not import beside torch 2.13.0 "
                                   "(pip install torch==2.14.1 torchvision==0.29.1 timm)")

from polytask.backbones.timm_vision import model_config, preprocessing, timm_name  # noqa: E402
from polytask.backbones.vision import family_of, vision_from_config  # noqa: E402
from polytask.config import from_dict  # noqa: E402
from polytask.errors import ConfigError  # noqa: E402
from vision_helpers import vision_config, write_halves_split as write_split, write_splits  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


def save_tiny_timm(folder) -> str:
    """timm's ``test_resnet`` (0.37 M parameters, a stride-2 stem then strides 4..32), random with
    seed 0, saved by ``timm.models.save_for_hf``; returns its ``model.backbone`` name."""
    import timm

    torch.manual_seed(0)
    timm.models.save_for_hf(timm.create_model("test_resnet"), folder)
    return f"timm:local-dir:{folder}"


def test_two_task_run_on_a_timm_backbone_saves_loads_predicts_and_rebuilds_offline(tmp_path):
    from polytask.predict import Predictor, evaluate_run
    from polytask.train import train

    backbone = save_tiny_timm(tmp_path / "timm_net")
    write_splits(tmp_path, write_split, 24, 12)
    tasks = [{"name": n, "type": "classification", "columns": {"image": "path", "label": n},
              "data": {"train": "train.jsonl", "dev": "dev.jsonl"}} for n in ("left", "right")]
    cfg = vision_config("timm", tmp_path, backbone, {"size": 32, "flip": False}, tasks, "hard", "equal",
                        max_steps=8, batch_size=4, eval_every=4, lr=3e-3, log_every=1, train={})
    run_dir = train(from_dict(cfg), progress=False)
    saved = json.loads((run_dir / "backbone" / "config.json").read_text())
    assert saved["family"] == "timm" and saved["hf_config"]["architecture"] == "test_resnet"
    assert saved["channels"] == [32, 48, 192, 96]  # test_resnet's maps at strides 4..32 (the stem's left out)

    shutil.rmtree(tmp_path / "timm_net")  # the run needs nothing but its own folder now
    summary = json.loads((run_dir / "summary.json").read_text())
    again = evaluate_run(run_dir)
    for task in ("left", "right"):
        assert again["metrics"][task]["accuracy"] == pytest.approx(summary["dev"][task]["accuracy"])
    pred = Predictor.load(run_dir)
    rows = [json.loads(x) for x in (tmp_path / "dev.jsonl").read_text().splitlines()]
    for task in ("left", "right"):
        got = pred.predict(task, [str(tmp_path / r["path"]) for r in rows])
        acc = sum(g == r[task] for g, r in zip(got, rows)) / len(rows)
        assert acc == pytest.approx(summary["dev"][task]["accuracy"])

    trained = pred.model.arch.backbone.eval()
    torch.manual_seed(123)  # another random init: everything must come from the weights
    rebuilt = vision_from_config(run_dir / "backbone")
    result = rebuilt.load_state_dict(trained.state_dict(), strict=True)
    assert not result.missing_keys and not result.unexpected_keys
    x = torch.rand(3, 3, 32, 32)
    with torch.no_grad():
        a, b = trained(x), rebuilt.eval()(x)
    assert torch.equal(a.last_hidden_state, b.last_hidden_state)
    assert all(torch.equal(m, n) for m, n in zip(a.maps, b.maps)) and len(a.maps) == 4


def test_names_map_to_timm_and_hub_names_are_claimed():
    assert timm_name("timm:resnet18") == "resnet18"
    assert timm_name("timm:local-dir:/x/y") == "local-dir:/x/y"
    assert timm_name("timm/resnet18.a1_in1k") == "hf-hub:timm/resnet18.a1_in1k"
    assert family_of("timm/resnet18.a1_in1k")[0] == family_of("timm:convnext_atto")[0] == "timm"
    assert family_of("timm-like/model")[0] == "hf"  # only the 'timm/' org and the 'timm:' prefix


@pytest.mark.parametrize("name", ["resnet18", "convnext_atto", "test_vit"])
def test_preprocessing_without_weights_is_timm_data_config_of_the_built_model(name):
    import timm

    net = timm.create_model(name, pretrained=False, features_only=True)
    data = timm.data.resolve_data_config({}, model=net)
    size, mean, std = preprocessing(f"timm:{name}")
    assert (size, mean, std) == (data["input_size"][1], list(data["mean"]), list(data["std"]))
    assert model_config(f"timm:{name}")["architecture"] == name


def test_pretrained_loads_the_folders_weights(tmp_path):
    from polytask.backbones.vision import load_vision
    from polytask.config import ImageConfig, ModelConfig

    name = save_tiny_timm(tmp_path / "t")  # seed 0
    torch.manual_seed(1)  # a network left at its random init would differ from the folder's
    backbone, _ = load_vision(ModelConfig(kind="vision", backbone=name, image=ImageConfig(size=32)))
    saved = torch.load(tmp_path / "t" / "pytorch_model.bin", weights_only=True)
    ours = backbone.net.state_dict()
    assert len(ours) > 20 and all(torch.equal(v, saved[k]) for k, v in ours.items())


def test_an_unknown_timm_model_or_folder_is_a_config_error():
    with pytest.raises(ConfigError, match="timm has no model 'no_such_net'"):
        preprocessing("timm:no_such_net")
    with pytest.raises(ConfigError, match="cannot read timm's config of 'timm:local-dir:/nowhere'"):
        preprocessing("timm:local-dir:/nowhere")


def test_a_timm_run_exports_onnx_and_an_encoder_folder_its_card_loads(tmp_path, monkeypatch):
    """``--format hf``: the manifest names timm, and the model card's "Use" code, run as written in
    the export folder, gives the run's feature maps; ONNX passes its parity check."""
    import re

    from polytask.export import export_hf, export_onnx
    from polytask.predict import Predictor

    backbone = save_tiny_timm(tmp_path / "timm_net")
    write_splits(tmp_path, write_split, 8, 4)
    tasks = [{"name": "left", "type": "classification", "columns": {"image": "path", "label": "left"},
              "data": {"train": "train.jsonl", "dev": "dev.jsonl"}}]
    cfg = vision_config("timm_export", tmp_path, backbone, {"size": 32, "flip": False}, tasks, "hard", "equal",
                        max_steps=2, batch_size=4, eval_every=2, lr=3e-3, log_every=1, train={})
    from polytask.train import train

    run_dir = train(from_dict(cfg), progress=False)
    export_onnx(run_dir, tmp_path / "onnx")  # raises when onnxruntime disagrees with the model
    out = export_hf(run_dir, tmp_path / "hf")
    manifest = json.loads((out / "polytask_export.json").read_text())
    assert "timm test_resnet" in json.dumps(manifest) and "efficientnet" not in json.dumps(manifest)
    card = (out / "README.md").read_text()
    code = re.search(r"## Use\n\n```python\n(.*?)```", card, re.S).group(1)
    assert "efficientnet" not in code
    monkeypatch.chdir(out)
    scope: dict = {}
    exec(code, scope)  # the card's code as a user runs it, in the export folder
    x = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(3))
    ours = Predictor.load(run_dir).model.arch.backbone.eval()
    with torch.no_grad():
        theirs = [m for m, s in zip(scope["encoder"].eval()(x), scope["encoder"].feature_info.reduction()) if s >= 4]
        assert all(torch.equal(a, b) for a, b in zip(theirs, ours(x).maps)) and len(theirs) == 4
