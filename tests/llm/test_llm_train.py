"""Short real training runs of the tiny LLM through the ordinary trainer: losses fall, LoRA runs
save adapters only, save -> load -> generate reproduces what evaluation measured, resume
continues exactly, and a merged adapter gives the same model as the adapter."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors import safe_open

from polytask import load
from polytask.config import from_dict
from polytask.errors import ConfigError
from polytask.train import train


def events(run_dir, kind):
    return [e for e in map(json.loads, (run_dir / "metrics.jsonl").read_text().splitlines()) if e["kind"] == kind]


def saved_keys(folder):
    with safe_open(str(folder / "model.safetensors"), "pt") as fh:
        return list(fh.keys())


def reproduces_evaluation(run_dir):
    """The loaded run's predictions, scored by each task, equal summary.json's dev metrics."""
    from polytask.dataset import prepare

    predictor = load(run_dir)
    data = prepare(predictor.cfg, splits=("train", "dev"))
    summary = json.loads((run_dir / "summary.json").read_text())
    outputs = {}
    for name, td in data.items():
        preds = predictor.predict(name, [ex.fields for ex in td.examples["dev"]])
        refs = [td.task.reference(e) for e in td.examples["dev"]]
        assert predictor.tasks[name].metrics(preds, refs) == pytest.approx(summary["dev"][name]), name
        outputs[name] = preds
    return predictor, outputs


@pytest.mark.parametrize("peft,packing", [("task_lora", False), ("shared_lora", True), ("none", False)])
def test_train_save_load_generate(llm_config, peft, packing):
    cfg = llm_config(peft=peft, packing=packing, max_steps=30, eval_every=15,
                     lr=3e-3 if peft == "none" else 2e-2)
    run = train(from_dict(cfg), progress=False)
    logs = events(run, "train")
    for task in ("summary", "topic"):
        first = next(e["loss"][task] for e in logs if task in e["loss"])
        assert logs[-1]["loss"][task] < 0.9 * first, (task, first, logs[-1]["loss"][task])
    keys = saved_keys(run)
    if peft == "none":
        assert any("mlp" in k for k in keys)  # every weight
    else:  # adapters only: the base comes back from model.backbone at load time
        assert keys and all("lora_" in k or k.endswith("base_fingerprint") for k in keys)
    predictor, outputs = reproduces_evaluation(run)
    again = load(run)  # a second load generates the same text
    assert again.predict("summary", ["the goal of the team"]) == predictor.predict("summary", ["the goal of the team"])
    assert all(isinstance(p, str) for p in outputs["summary"])
    assert set(outputs["topic"]) <= {"sport", "tech", "food"} | {p.text for p in outputs["topic"]}


def test_task_lora_run_learns_and_resumes_exactly(llm_config, tmp_path):
    base = llm_config(peft="task_lora", max_steps=40, eval_every=20, lr=2e-2, schedule="constant")
    full = train(from_dict(base), progress=False)
    summary = json.loads((full / "summary.json").read_text())
    logs = events(full, "train")
    assert logs[-1]["loss"]["topic"] < 0.6 * next(e["loss"]["topic"] for e in logs if "topic" in e["loss"])
    params = summary["params"]  # per-task LoRA: nothing shared trains, each task owns its adapter
    assert params["shared"] == 0 and params["trainable"] == params["task:summary"] + params["task:topic"] > 0

    part = dict(base, name="resumed", train={**base["train"], "max_steps": 20})
    run = train(from_dict(part), progress=False)
    train(resume=run, overrides=["train.max_steps=40"], progress=False)
    a, b = events(full, "train"), events(run, "train")
    assert len(a) == len(b) == 8
    for x, y in zip(a, b):  # the same trajectory: the checkpoint held the adapters and every state
        assert x["loss"] == pytest.approx(y["loss"], rel=1e-5)
    assert all(all("lora_" in k or k.endswith("base_fingerprint") for k in saved_keys(p))
               for p in (run / "checkpoints").iterdir())


def test_merged_adapter_equals_the_adapter(llm_config, tmp_path):
    from transformers import AutoModelForCausalLM

    from polytask.export import merge_lora

    run = train(from_dict(llm_config(peft="task_lora", max_steps=6, eval_every=6)), progress=False)
    predictor = load(run)
    arch = predictor.model.arch
    out = merge_lora(run, tmp_path / "merged", task="topic")
    merged = AutoModelForCausalLM.from_pretrained(out).eval()
    ids = predictor.tokenizer(["<bos> user : topic of : the goal <eos> assistant :"], add_special_tokens=False,
                              return_tensors="pt")["input_ids"]
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    with torch.no_grad():
        want = arch(batch, "topic").hidden
        other = arch(batch, "summary").hidden
        got = merged(**batch).logits
    assert torch.allclose(got, want, atol=1e-4)
    assert not torch.allclose(got, other, atol=1e-4)  # really the topic adapter
    with pytest.raises(Exception, match="--task"):
        merge_lora(run, tmp_path / "m2")


def test_cli_predict_evaluate_and_merge_command(llm_config, tmp_path):
    from typer.testing import CliRunner

    from polytask.cli import app

    run = train(from_dict(llm_config(peft="task_lora", max_steps=4, eval_every=4)), progress=False)
    runner = CliRunner()
    res = runner.invoke(app, ["predict", str(run), "--task", "topic", "--text", "the goal of the match"])
    assert res.exit_code == 0, res.output
    (row,) = [json.loads(line) for line in res.stdout.splitlines() if line.strip()]
    assert row["input"] == "the goal of the match" and isinstance(row["topic"], str)
    assert row["topic"] == load(run).predict("topic", ["the goal of the match"])[0]
    res = runner.invoke(app, ["evaluate", str(run)])
    assert res.exit_code == 0, res.output
    summary = json.loads((run / "summary.json").read_text())
    metrics = json.loads(res.stdout)["metrics"]
    assert set(metrics) == set(summary["dev"])
    for name, values in metrics.items():
        assert values == pytest.approx(summary["dev"][name]), name

    res = runner.invoke(app, ["merge-lora", str(run), "--out", str(tmp_path / "m"), "--task", "summary"])
    assert res.exit_code == 0, res.output
    assert (tmp_path / "m" / "config.json").exists() and (tmp_path / "m" / "tokenizer_config.json").exists()


def test_gradient_method_in_the_shared_adapter_space(llm_config):
    """grad_space: adapters takes task gradients over the shared LoRA's parameters only."""
    raw = llm_config(peft="shared_lora", max_steps=4, eval_every=4, log_every=2, grad_space="adapters")
    raw["weighting"] = {"name": "pcgrad"}
    run = train(from_dict(raw), progress=False)
    steps = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    steps = [e for e in steps if e["kind"] == "train"]
    assert len(steps) == 2 and all("summary|topic" in e["cosine"] for e in steps)
    assert all(v > 0 for e in steps for v in e["grad_norm"].values())
    with pytest.raises(ConfigError, match="per-task adapters have disjoint gradients"):
        from_dict(llm_config(peft="task_lora", grad_space="adapters"))
