"""``polytask adapt``: K-shot draws, a new task on a trained run's encoder, few-shot curves.

Tiny backbone, synthetic demo tasks: the source run trains sentiment, similarity and entities;
``topic`` is the new task. The old tasks' logits must stay bit-identical (``torch.equal``) after
adapting with a frozen encoder or a LoRA adapter.
"""

from __future__ import annotations

import json
from collections import Counter

import pytest
import torch

from conftest import demo_tasks, tiny_config
from polytask.adapt import AdaptError, adapt, k_shot, learning_curves
from polytask.config import from_dict
from polytask.errors import CheckpointError, ConfigError
from polytask.predict import Predictor

TEXTS = ["Anna loved the soup", "the chef burned the pasta", "Oslo is cold in winter", "the match went to penalties"]
INPUTS = [{"text": t, "text_a": t, "text_b": "a dog runs", "tokens": t.split()} for t in TEXTS]


def new_task(**train) -> dict:
    topic = next(t for t in demo_tasks(n_train=120, n_eval=40) if t["name"] == "topic")
    return {**topic, "train": {"max_steps": 12, "eval_every": 6, "batch_size": 8, "head_lr": 1e-2, **train}}


@pytest.fixture(scope="module")
def source_run(tiny_backbone, tmp_path_factory):
    import polytask

    raw = tiny_config(tiny_backbone, tmp_path_factory.mktemp("adapt-src"), max_steps=6, eval_every=6)
    raw["tasks"] = [t for t in demo_tasks(n_train=80, n_eval=20) if t["name"] != "topic"]
    return polytask.train(from_dict(raw), progress=False)


def logits(pred: Predictor, task: str) -> torch.Tensor:
    """The head output of ``task`` for INPUTS: (B, n_out) or (B, T, n_tags)."""
    parsed = pred.parse_inputs([task], INPUTS, strict=True)
    t = pred.tasks[task]
    feats = t.encode([ex for _, ex in parsed.examples[task]], pred.tokenizer, pred.cfg.model.max_length)
    with torch.no_grad():
        out, _ = pred.model(t.collate(feats, pred.pad_id), task)
    return out


# -- K-shot draws ------------------------------------------------------------------------------

def test_k_shot_is_stratified_by_label_with_known_counts():
    labels = ["a"] * 60 + ["b"] * 30 + ["c"] * 10
    for k, want in ((10, {"a": 6, "b": 3, "c": 1}), (20, {"a": 12, "b": 6, "c": 2}), (4, {"a": 2, "b": 1, "c": 1})):
        idx = k_shot(labels, k, seed=1, stratify=True)
        assert len(set(idx)) == k and idx == sorted(idx)
        assert Counter(labels[i] for i in idx) == want
    rare = ["a"] * 98 + ["b", "c"]  # K >= number of labels: every label is drawn at least once
    assert Counter(rare[i] for i in k_shot(rare, 3, seed=0, stratify=True)) == {"a": 1, "b": 1, "c": 1}


def test_k_shot_is_reproducible_per_seed():
    labels = ["x", "y"] * 50
    assert k_shot(labels, 16, seed=7, stratify=True) == k_shot(labels, 16, seed=7, stratify=True)
    assert k_shot(labels, 16, seed=7, stratify=True) != k_shot(labels, 16, seed=8, stratify=True)
    plain = k_shot([0.5] * 100, 16, seed=7, stratify=False)
    assert plain == k_shot([0.5] * 100, 16, seed=7, stratify=False) and len(set(plain)) == 16


def test_k_larger_than_the_data_says_so():
    with pytest.raises(AdaptError, match="--shots 11: task 'topic' has only 10 training examples"):
        k_shot(["a"] * 10, 11, seed=0, stratify=True, task="topic")


# -- adapt: the saved run --------------------------------------------------------------------

@pytest.mark.parametrize("tune", ["head", "lora"])
def test_adapting_leaves_old_tasks_bit_identical_and_predicts_the_new_one(source_run, tmp_path, tune):
    out = adapt(source_run, new_task(), tmp_path / "adapted", tune=tune, progress=False)
    before, after = Predictor.load(source_run), Predictor.load(out)
    assert list(after.tasks) == [*before.tasks, "topic"]
    for task in before.tasks:
        assert torch.equal(logits(before, task), logits(after, task)), task
    assert after.cfg.architecture.name == ("hard" if tune == "head" else "adapters")
    labels = set(after.tasks["topic"].vocab_state()["labels"])
    assert set(after.predict("topic", TEXTS)) <= labels
    both = after.predict_all(INPUTS)
    assert both["sentiment"] == before.predict("sentiment", TEXTS) and len(both["topic"]) == len(TEXTS)
    summary = after.run.read_summary()
    assert summary["tune"] == tune and set(summary["test"]) == {"topic"} and summary["best_step"] in (6, 12)


def test_lora_trains_only_the_new_adapter(source_run, tmp_path):
    out = adapt(source_run, new_task(), tmp_path / "lora", tune="lora", progress=False)
    after = Predictor.load(out)
    state = dict(after.model.named_parameters())
    topic_b = [v for n, v in state.items() if "lora_B.topic" in n]
    old_b = [v for n, v in state.items() if "lora_B.sentiment" in n]
    assert topic_b and any(v.abs().sum() > 0 for v in topic_b)  # trained
    assert old_b and all(v.abs().sum() == 0 for v in old_b)  # identity adapters: exact zeros


def test_full_tuning_saves_the_new_task_alone(source_run, tmp_path):
    out = adapt(source_run, new_task(), tmp_path / "full", tune="full", progress=False)
    after = Predictor.load(out)
    assert list(after.tasks) == ["topic"]
    before = Predictor.load(source_run)
    changed = [not torch.equal(a, b) for a, b in zip(before.model.arch.backbone.parameters(),
                                                      after.model.arch.backbone.parameters())]
    assert any(changed)  # the encoder itself trained


# -- curves ----------------------------------------------------------------------------------

def test_curves_write_table_json_and_plot(source_run, tmp_path):
    result = learning_curves(source_run, new_task(max_steps=6, eval_every=3), [4, 16], seeds=2,
                             out_dir=tmp_path / "curves", progress=False)
    assert len(result["runs"]) == 2 * 2 * 2  # start points x K x seeds
    assert [(r["start"], r["k"]) for r in result["summary"]] == [("multitask", 4), ("multitask", 16),
                                                                 ("pretrained", 4), ("pretrained", 16)]
    assert all(r["n"] == 2 and 0 <= r["test_mean"] <= 1 and r["test_std"] >= 0 for r in result["summary"])
    saved = json.loads((tmp_path / "curves" / "curves.json").read_text())
    assert saved["summary"] == result["summary"] and saved["metric"] == "accuracy"
    md = (tmp_path / "curves" / "curves.md").read_text()
    assert "| 4 | " in md and "| 16 | " in md and "test accuracy: multitask" in md
    assert (tmp_path / "curves" / "curves.png").read_bytes()[:4] == b"\x89PNG"
    by = {(r["start"], r["k"], r["seed"]): r for r in result["runs"]}
    mean = sum(by[("multitask", 16, s)]["test"] for s in (3, 4)) / 2  # seeds are cfg.seed + 0, + 1
    assert result["summary"][1]["test_mean"] == pytest.approx(mean)


def test_curves_refuse_k_larger_than_the_data(source_run, tmp_path):
    with pytest.raises(AdaptError, match="has only 120 training examples"):
        learning_curves(source_run, new_task(), [16, 500], seeds=1, out_dir=tmp_path / "c", progress=False)


# -- clear errors ------------------------------------------------------------------------------

def test_unknown_task_type_is_a_clear_error(source_run, tmp_path):
    with pytest.raises(ConfigError, match="unknown task type 'clasification'"):
        adapt(source_run, {**new_task(), "type": "clasification"}, tmp_path / "x", progress=False)


def test_a_folder_that_is_not_a_run_is_refused(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="is not a complete run folder"):
        adapt(tmp_path / "empty", new_task(), tmp_path / "x", progress=False)
    with pytest.raises(CheckpointError, match="not a run folder"):
        adapt(tmp_path / "missing", new_task(), tmp_path / "x", progress=False)


def test_taken_names_modes_and_task_files_are_checked(source_run, tmp_path):
    with pytest.raises(AdaptError, match="already has a task 'sentiment'"):
        adapt(source_run, {**new_task(), "name": "sentiment"}, tmp_path / "x", progress=False)
    with pytest.raises(AdaptError, match="--tune: expected one of head, lora, full"):
        adapt(source_run, new_task(), tmp_path / "x", tune="prefix", progress=False)
    bad = tmp_path / "new.yaml"
    bad.write_text("- name: topic\n")
    with pytest.raises(AdaptError, match="expected one task"):
        adapt(source_run, bad, tmp_path / "x", progress=False)


def test_other_architectures_are_refused_with_the_reason(tiny_backbone, tmp_path):
    import polytask

    raw = tiny_config(tiny_backbone, tmp_path, max_steps=2, eval_every=2)
    raw["tasks"] = demo_tasks(n_train=20, n_eval=10)[:1]
    raw["architecture"] = {"name": "mmoe"}
    run = polytask.train(from_dict(raw), progress=False)
    with pytest.raises(AdaptError, match="supports runs with architecture 'hard'.*this run has 'mmoe'"):
        adapt(run, new_task(), tmp_path / "x", progress=False)


def test_cli_takes_shots_as_a_list_and_reports_errors_in_one_line(source_run, tmp_path):
    import yaml
    from typer.testing import CliRunner

    from polytask.cli import app

    spec = tmp_path / "topic.yaml"
    spec.write_text(yaml.safe_dump(new_task(max_steps=2, eval_every=2)))
    out = tmp_path / "curves"
    got = CliRunner().invoke(app, ["adapt", str(source_run), "--task", str(spec), "--shots", "4", "8", "--seeds", "1",
                                   "--out", str(out), "--no-progress", "train.batch_size=4"])
    assert got.exit_code == 0, got.output
    assert "| 4 | " in got.output and "| 8 | " in got.output
    assert json.loads((out / "curves.json").read_text())["train"]["batch_size"] == 4
    bad = CliRunner().invoke(app, ["adapt", str(tmp_path / "nope"), "--task", str(spec), "--no-progress"])
    assert bad.exit_code == 2 and "not a run folder" in bad.output


def test_polytask_serve_serves_the_adapted_run_with_old_and_new_tasks(source_run, tmp_path):
    """The adapted run through a real `polytask serve` process: every task, old and new, and the
    same labels as the Predictor."""
    import os
    import signal
    import subprocess
    import sys

    httpx = pytest.importorskip("httpx")
    pytest.importorskip("fastapi")
    from conftest import REPO, free_port
    from polytask.serve import wait_until_ready

    out = adapt(source_run, new_task(), tmp_path / "served", tune="head", progress=False)
    port = free_port()
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    proc = subprocess.Popen([sys.executable, "-m", "polytask.cli", "serve", str(out), "--port", str(port),
                             "--log-level", "warning"], cwd=REPO, env=env)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until_ready(url, proc, timeout=120)
        names = [t["name"] for t in httpx.get(f"{url}/v1/tasks").json()["tasks"]]
        assert sorted(names) == ["entities", "sentiment", "similarity", "topic"]
        for task in ("topic", "sentiment"):
            got = httpx.post(f"{url}/v1/predict/{task}", json={"inputs": TEXTS}).json()
            assert [p["prediction"] for p in got["predictions"]] == Predictor.load(out).predict(task, TEXTS)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)


def test_curves_show_the_chance_level_and_readable_k_ticks(source_run, tmp_path):
    """Issue 25.12: K-shot tables and curves did not show the chance (majority-class) level, so a
    score at or below "always the majority label" looked like learning; K ticks were 10^x."""
    from polytask.adapt.curves import figure

    result = learning_curves(source_run, new_task(max_steps=2, eval_every=2), [4, 8], seeds=1,
                             out_dir=tmp_path / "curves", progress=False)
    assert 0 < result["chance"]["test"] < 1 and 0 < result["chance"]["dev"] < 1
    md = (tmp_path / "curves" / "curves.md").read_text()
    assert f"| chance (input-blind best) | {result['chance']['dev']:.4f} | " in md
    fig = figure(result)
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["4", "8"]
    flat = [line for line in ax.get_lines() if len(set(line.get_ydata())) == 1]
    assert any(line.get_ydata()[0] == pytest.approx(result["chance"]["test"]) for line in flat)
