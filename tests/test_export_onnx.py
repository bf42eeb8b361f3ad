"""``polytask export --format onnx``: one graph with the encoder and every head; onnxruntime
gives PyTorch's outputs (max |diff| < 1e-4) on inputs of other batch sizes and lengths than the
export traced; the labels JSON; other architectures get a clear error."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from conftest import tiny_config
from polytask.config import from_dict
from polytask.errors import PolytaskError

pytest.importorskip("onnxruntime", reason="the ONNX export needs the 'export' extra (onnx, onnxruntime)")

TEXTS = ["Anna loved the soup and the long walk along the river in Oslo last May", "a dog runs",
         "Berg met Anna", "the film was not good at all", "no"]


@pytest.fixture(scope="module")
def exported(tiny_backbone, tmp_path_factory):
    import polytask
    from polytask.export import export_onnx

    root = tmp_path_factory.mktemp("onnx")
    run = polytask.train(from_dict(tiny_config(tiny_backbone, root / "runs", max_steps=6, eval_every=6)),
                         progress=False)
    return run, export_onnx(run, root / "onnx"), polytask.load(run)


def torch_outputs(pred, batch: dict) -> dict:
    with torch.no_grad():
        hidden = pred.model.arch.encode(batch)
        outs = {n: pred.model.heads[n](hidden, batch["attention_mask"]) for n in pred.tasks}
    for n, task in pred.tasks.items():
        if task.type_name == "regression":
            outs[n] = outs[n] * task.std + task.mean
    return outs


@pytest.mark.parametrize("texts", [TEXTS, TEXTS[1:2], TEXTS * 3])
def test_onnxruntime_matches_pytorch_on_any_batch_and_length(exported, texts):
    import onnxruntime
    from transformers import AutoTokenizer

    run, out, pred = exported
    tokenizer = AutoTokenizer.from_pretrained(out / "tokenizer")
    batch = dict(tokenizer(texts, padding=True, return_tensors="pt"))
    session = onnxruntime.InferenceSession(str(out / "model.onnx"), providers=["CPUExecutionProvider"])
    feed = {i.name: batch[i.name].numpy() for i in session.get_inputs()}
    results = dict(zip([o.name for o in session.get_outputs()], session.run(None, feed)))
    ours = torch_outputs(pred, batch)
    assert set(results) == set(pred.tasks)
    for name, value in results.items():
        assert value.shape == tuple(ours[name].shape)
        assert float((torch.from_numpy(value) - ours[name]).abs().max()) < 1e-4, name


def test_manifest_has_labels_per_task(exported):
    run, out, pred = exported
    manifest = json.loads((out / "polytask_onnx.json").read_text())
    assert manifest["inputs"][:2] == ["input_ids", "attention_mask"]
    assert manifest["tasks"]["sentiment"]["labels"] == list(pred.tasks["sentiment"].labels)
    assert manifest["tasks"]["entities"]["shape"][:2] == ["batch", "sequence"]
    assert manifest["tasks"]["similarity"]["type"] == "regression"
    assert manifest["max_abs_difference"] < 1e-4


def test_non_hard_sharing_runs_get_a_clear_error(tiny_backbone, tmp_path):
    import polytask
    from polytask.export import export_onnx

    raw = tiny_config(tiny_backbone, tmp_path / "runs", max_steps=2, eval_every=2)
    raw["tasks"] = raw["tasks"][:2]
    raw["architecture"] = {"name": "mmoe"}
    run = polytask.train(from_dict(raw), progress=False)
    with pytest.raises(PolytaskError, match="needs a 'hard' run"):
        export_onnx(run, tmp_path / "onnx")
    assert not (tmp_path / "onnx").exists()


def test_cli_export_onnx(exported, tmp_path):
    run, _, _ = exported
    proc = subprocess.run([sys.executable, "-c", "from polytask.cli import app; app()", "export", str(run), "--format", "onnx",
                           "--out", str(tmp_path / "cli")], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "cli" / "model.onnx").is_file() and (tmp_path / "cli" / "tokenizer").is_dir()
