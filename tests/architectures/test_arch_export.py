"""Exporting one task's adapter from an ``adapters`` run: PEFT's format for LoRA (loadable with
``PeftModel.from_pretrained``), the head and task metadata alongside, and the CLI command."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModel

from polytask import load
from polytask.export import export_adapter
from polytask.config import from_dict
from polytask.errors import PolytaskError
from polytask.train import train

from conftest import demo_tasks, tiny_config


def tiny_run(backbone, out_dir, name, args):
    raw = tiny_config(backbone, out_dir, max_steps=3, eval_every=3, log_every=3, lr=5e-3, num_threads=1)
    raw["tasks"] = [t for t in demo_tasks(n_train=32, n_eval=8) if t["name"] in ("topic", "entities")]
    raw["architecture"] = {"name": name, "args": args}
    threads = torch.get_num_threads()
    try:
        return train(from_dict(raw), progress=False)
    finally:
        torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def runs(tiny_backbone, tmp_path_factory):
    root = tmp_path_factory.mktemp("export-runs")
    return {
        "lora": tiny_run(tiny_backbone, root / "lora", "adapters", {"kind": "lora", "r": 4}),
        "lora_trainable": tiny_run(tiny_backbone, root / "lora_trainable", "adapters",
                                   {"kind": "lora", "r": 4, "freeze_backbone": False}),
        "bottleneck": tiny_run(tiny_backbone, root / "bottleneck", "adapters",
                               {"kind": "bottleneck", "bottleneck_size": 8}),
        "hard": tiny_run(tiny_backbone, root / "hard", "hard", {}),
    }


def encoded(predictor, text="the coach praised the team in Paris"):
    enc = predictor.tokenizer([text], return_tensors="pt")
    return {k: v for k, v in enc.items() if k in ("input_ids", "attention_mask", "token_type_ids")}


def peft_output(base, adapter_dir, batch):
    from peft import PeftModel

    model = PeftModel.from_pretrained(base, str(adapter_dir)).eval()
    with torch.no_grad():
        return model(**batch).last_hidden_state


@pytest.mark.parametrize("task", ["topic", "entities"])
def test_lora_export_is_a_peft_adapter(runs, tiny_backbone, tmp_path, task):
    out = export_adapter(runs["lora"], task, tmp_path / "adapter")
    for name in ("adapter_config.json", "adapter_model.safetensors", "head.safetensors", "polytask_adapter.json"):
        assert (out / name).exists(), name
    assert not (out / "backbone").exists()  # frozen backbone: the adapter fits the pretrained one
    config = json.loads((out / "adapter_config.json").read_text())
    assert config["peft_type"] == "LORA" and config["r"] == 4
    weights = load_file(str(out / "adapter_model.safetensors"))
    assert weights and all(".lora_A." in k or ".lora_B." in k for k in weights)
    pred = load(runs["lora"])
    batch = encoded(pred)
    with torch.no_grad():
        ours = pred.model.arch(batch, task).hidden
    theirs = peft_output(AutoModel.from_pretrained(tiny_backbone), out, batch)
    assert torch.allclose(ours, theirs, atol=1e-5)
    other = "entities" if task == "topic" else "topic"
    with torch.no_grad():
        assert not torch.allclose(pred.model.arch(batch, other).hidden, theirs, atol=1e-5)
    meta = json.loads((out / "polytask_adapter.json").read_text())
    assert meta["task"] == task and meta["kind"] == "lora" and meta["task_config"]["name"] == task
    head = load_file(str(out / "head.safetensors"))
    for k, v in pred.model.heads[task].state_dict().items():
        assert torch.equal(head[k], v)


def test_lora_export_of_trainable_backbone_includes_the_backbone(runs, tmp_path):
    out = export_adapter(runs["lora_trainable"], "topic", tmp_path / "adapter")
    assert (out / "backbone" / "config.json").exists()
    pred = load(runs["lora_trainable"])
    batch = encoded(pred)
    with torch.no_grad():
        ours = pred.model.arch(batch, "topic").hidden
    theirs = peft_output(AutoModel.from_pretrained(out / "backbone"), out, batch)
    assert torch.allclose(ours, theirs, atol=1e-5)


def test_bottleneck_export(runs, tmp_path):
    out = export_adapter(runs["bottleneck"], "entities", tmp_path / "adapter")
    config = json.loads((out / "adapter_config.json").read_text())
    assert config["adapter_type"] == "polytask_bottleneck" and config["bottleneck_size"] == 8
    weights = load_file(str(out / "adapter_model.safetensors"))
    arch = load(runs["bottleneck"]).model.arch
    state = arch.adapters["entities"].state_dict()
    assert set(weights) == {f"layers.{k}" for k in state}
    assert all(torch.equal(weights[f"layers.{k}"], v) for k, v in state.items())


def test_export_refuses_other_architectures_and_unknown_tasks(runs, tmp_path):
    with pytest.raises(PolytaskError, match="adapters"):
        export_adapter(runs["hard"], "topic", tmp_path / "x")
    with pytest.raises(PolytaskError, match="unknown task"):
        export_adapter(runs["lora"], "nope", tmp_path / "y")


def test_cli_command(runs, tmp_path):
    from typer.testing import CliRunner

    from polytask.cli import app  # the real command line

    runner = CliRunner()
    ok = runner.invoke(app, ["export-adapter", str(runs["lora"]), "--task", "topic", "--out", str(tmp_path / "a")])
    assert ok.exit_code == 0, ok.output
    assert "topic" in ok.output and (tmp_path / "a" / "adapter_model.safetensors").exists()
    bad = runner.invoke(app, ["export-adapter", str(runs["hard"]), "--task", "topic", "--out", str(tmp_path / "b")])
    assert bad.exit_code == 2 and "adapters" in bad.output
