"""Short real training runs on a tiny random BERT: loss falls, runs are reproducible, and a
saved run predicts exactly what evaluation measured."""

import json

import pytest

from polytask import load
from polytask.config import from_dict
from polytask.train import train

from conftest import tiny_config


def events(run_dir, kind):
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [e for e in map(json.loads, lines) if e["kind"] == kind]


@pytest.fixture(scope="module")
def tiny_run(tiny_backbone, tmp_path_factory):
    cfg = from_dict(tiny_config(tiny_backbone, tmp_path_factory.mktemp("runs"), max_steps=60, eval_every=30))
    return train(cfg, progress=False)


def test_loss_falls(tiny_run):
    logs = events(tiny_run, "train")
    for task in ("topic", "entities"):  # sentiment and similarity need more than 60 steps of a random net
        first = next(e["loss"][task] for e in logs if task in e["loss"])
        last = logs[-1]["loss"][task]
        assert last < 0.9 * first, (task, first, last)


def test_run_folder_contents(tiny_run):
    for name in ("config.yaml", "vocab.json", "model.safetensors", "model.json", "tokenizer", "backbone",
                 "metrics.jsonl", "training.png", "summary.json"):
        assert (tiny_run / name).exists(), name
    summary = json.loads((tiny_run / "summary.json").read_text())
    assert set(summary["dev"]) == {"sentiment", "topic", "similarity", "entities"}
    assert summary["params"]["trainable"] > 0 and summary["best_step"] in (30, 60)


def test_save_load_predict_reproduces_evaluation(tiny_run):
    """Predictions of the loaded run, scored by the task, equal the dev metrics of summary.json."""
    from polytask.dataset import prepare

    predictor = load(tiny_run)
    data = prepare(predictor.cfg, splits=("train", "dev"))
    summary = json.loads((tiny_run / "summary.json").read_text())
    for name, td in data.items():
        inputs = [ex.fields for ex in td.examples["dev"]]
        preds = predictor.predict(name, inputs)
        refs = [td.task.reference(e) for e in td.examples["dev"]]
        assert predictor.tasks[name].metrics(preds, refs) == pytest.approx(summary["dev"][name])


def test_predict_from_plain_text(tiny_run):
    predictor = load(tiny_run)
    labels = predictor.predict("topic", ["the chef made pasta", "the coach praised the team"])
    assert len(labels) == 2 and set(labels) <= set(predictor.tasks["topic"].labels)
    tags = predictor.predict("entities", ["Anna Berg visited Paris"])
    assert len(tags[0]) == 4


def test_same_seed_same_run(tiny_backbone, tmp_path):
    runs = [train(from_dict(tiny_config(tiny_backbone, tmp_path / str(i), max_steps=12, eval_every=12, log_every=4)),
                  progress=False) for i in range(2)]
    a, b = (events(r, "train") for r in runs)
    assert [e["loss"] for e in a] == [e["loss"] for e in b]
