"""Extractive QA trains next to tagging under every sharing architecture and every weighting
method (issue 27, item 5): two steps each on the tiny random BERT, tiny inline data."""

from __future__ import annotations

import json
import math

import pytest

from conftest import demo_tasks, tiny_config

CONTEXT = "The Eiffel Tower in Paris was finished in 1889 and is 330 metres tall, taller than any building."
ROWS = [("When was it finished?", "1889"), ("Where is the tower?", "Paris"), ("How tall is it?", "330 metres"),
        ("What is it taller than?", "any building")]


@pytest.fixture(scope="module")
def qa_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("qa-data") / "qa.jsonl"
    lines = [json.dumps({"question": q, "context": CONTEXT, "answers": [{"text": a, "answer_start": CONTEXT.index(a)}]})
             for q, a in ROWS * 4]
    path.write_text("\n".join(lines) + "\n")
    return path


def run(tiny_backbone, out, qa_file, **top):
    import polytask
    from polytask.config import from_dict

    raw = tiny_config(tiny_backbone, out, max_steps=2, eval_every=2, batch_size=4)
    qa = {"name": "qa", "type": "extractive_qa", "doc_stride": 8, "data": {"train": str(qa_file), "dev": str(qa_file)}}
    raw.update(tasks=[qa, demo_tasks(16, 8)[3]], **top)
    raw["model"]["max_length"] = 32  # several windows per question
    run_dir = polytask.train(from_dict(raw), progress=False)
    return json.loads((run_dir / "summary.json").read_text())["dev"]


ARCHITECTURES = ["soft", "cross_stitch", "mtan", "mmoe", "ple", "adapters"]
WEIGHTINGS = ["uw", "dwa", "rlw", "famo", "gradnorm", "dbmtl", "mgda", "pcgrad", "gradvac", "cagrad", "imtl",
              "nashmtl", "alignedmtl", "upgrad"]


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_every_architecture(tiny_backbone, tmp_path, qa_file, arch):
    dev = run(tiny_backbone, tmp_path, qa_file, architecture={"name": arch})
    assert math.isfinite(dev["qa"]["f1"]) and math.isfinite(dev["entities"]["f1"])


@pytest.mark.parametrize("method", WEIGHTINGS)
def test_every_weighting_method(tiny_backbone, tmp_path, qa_file, method):
    dev = run(tiny_backbone, tmp_path, qa_file, weighting={"name": method})
    assert math.isfinite(dev["qa"]["f1"])


def test_squad2_style_unanswerable_questions_train_and_score(tiny_backbone, tmp_path):
    path = tmp_path / "qa2.jsonl"
    rows = [{"question": q, "context": CONTEXT, "answers": [{"text": a, "answer_start": CONTEXT.index(a)}]}
            for q, a in ROWS] + [{"question": "Who painted it?", "context": CONTEXT, "answers": []}]
    path.write_text("\n".join(json.dumps(r) for r in rows * 3) + "\n")
    import polytask
    from polytask.config import from_dict

    raw = tiny_config(tiny_backbone, tmp_path, max_steps=2, eval_every=2, batch_size=4)
    raw["tasks"] = [{"name": "qa", "type": "extractive_qa", "doc_stride": 8, "allow_unanswerable": True,
                     "data": {"train": str(path), "dev": str(path)}}]
    raw["model"]["max_length"] = 32
    run_dir = polytask.train(from_dict(raw), progress=False)
    dev = json.loads((run_dir / "summary.json").read_text())["dev"]["qa"]
    assert {"has_ans_f1", "no_ans_f1", "best_f1", "best_f1_threshold"} <= set(dev) and dev["best_f1"] >= dev["f1"]
    pred = polytask.load(run_dir).predict("qa", [{"question": "Who painted it?", "context": CONTEXT}])[0]
    assert {"null_margin", "best_span"} <= set(pred) and (pred["answer"] == "") == (pred["start"] == -1)
