"""``polytask export --format hf`` of an ``adapters`` run: ``encoder/`` without adapters, and one
folder per task with its LoRA adapter in PEFT's format (loaded on ``encoder/`` it gives
polytask's states) and its head."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from conftest import demo_tasks, tiny_config
from polytask import load
from polytask.config import from_dict
from polytask.export import export_hf
from polytask.train import train

TEXTS = ["the coach praised the team in Paris", "Anna loved the soup"]


def adapters_run(backbone, out_dir, **args):
    raw = tiny_config(backbone, out_dir, max_steps=3, eval_every=3, log_every=3, lr=5e-3, num_threads=1)
    raw["tasks"] = [t for t in demo_tasks(n_train=32, n_eval=8) if t["name"] in ("topic", "entities")]
    raw["architecture"] = {"name": "adapters", "args": args}
    threads = torch.get_num_threads()
    try:
        return train(from_dict(raw), progress=False)
    finally:
        torch.set_num_threads(threads)


@pytest.mark.parametrize("freeze", [True, False])
def test_lora_adapters_run_exports_peft_folders_on_its_encoder(tiny_backbone, tmp_path, freeze):
    from peft import PeftModel
    from transformers import AutoModel, AutoTokenizer

    run = adapters_run(tiny_backbone, tmp_path / "runs", kind="lora", r=4, freeze_backbone=freeze)
    out = export_hf(run, tmp_path / "hf")
    pred = load(run)
    manifest = json.loads((out / "polytask_export.json").read_text())
    assert manifest["kind"] == "adapters/lora" and set(manifest["tasks"]) == {"topic", "entities"}
    batch = dict(AutoTokenizer.from_pretrained(out / "encoder")(TEXTS, padding=True, return_tensors="pt"))
    for task in ("topic", "entities"):
        folder = out / "tasks" / task
        base, info = AutoModel.from_pretrained(out / "encoder", output_loading_info=True)
        assert not info["missing_keys"] and not info["unexpected_keys"]
        model = PeftModel.from_pretrained(base, str(folder)).eval()
        with torch.no_grad():
            theirs = model(**batch).last_hidden_state
            ours = pred.model.arch(batch, task).hidden
            logits = pred.model.heads[task](ours, batch["attention_mask"])
        assert torch.allclose(theirs, ours, atol=1e-5)
        head = load_file(str(folder / "head.safetensors"))
        assert torch.equal(head["out.weight"], pred.model.heads[task].out.weight.detach())
        if task == "entities":  # polytask's heads on the PEFT model's states: a linear layer per token,
            feats = theirs
        else:  # or on the masked mean (topic has pooling: mean)
            assert pred.tasks[task].cfg.pooling == "mean"
            mask = batch["attention_mask"].unsqueeze(-1).to(theirs.dtype)
            feats = (theirs * mask).sum(1) / mask.sum(1)
        assert torch.allclose(feats @ head["out.weight"].T + head["out.bias"], logits, atol=1e-5)
        assert (folder / "tokenizer_config.json").is_file()
        meta = json.loads((folder / "polytask_adapter.json").read_text())
        assert meta["vocab"] == pred.tasks[task].vocab_state()
    card = (out / "README.md").read_text()
    assert card.startswith("---\nlibrary_name: peft") and "PeftModel.from_pretrained" in card


def test_bottleneck_adapters_run_says_its_format(tiny_backbone, tmp_path):
    run = adapters_run(tiny_backbone, tmp_path / "runs", kind="bottleneck", bottleneck_size=8)
    out = export_hf(run, tmp_path / "hf")
    manifest = json.loads((out / "polytask_export.json").read_text())
    assert manifest["kind"] == "adapters/bottleneck" and "bottleneck" in manifest["task_format"]
    config = json.loads((out / "tasks" / "topic" / "adapter_config.json").read_text())
    assert config["adapter_type"] == "polytask_bottleneck"
    assert (out / "README.md").read_text().startswith("---\nlibrary_name: transformers")
