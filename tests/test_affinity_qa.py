"""``polytask affinity`` on a run with an extractive QA task (issue 27): the command line on a
QA task (several windows per question: its batch has more rows than questions) next to a
classification task, on the tiny random BERT with tiny QA rows written here; and the lookahead
itself on that pair, which must leave the shared parameters as they were."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import pytest
import torch
import yaml

from conftest import demo_tasks, tiny_config

CLI = [sys.executable, "-m", "polytask.cli"]
CONTEXT = ("The Eiffel Tower in Paris was finished in 1889 and is 330 metres tall, taller than any building. "
           "Gustave Eiffel's company designed and built it for the world's fair of that year.")
ROWS = [("When was it finished?", "1889"), ("Where is the tower?", "Paris"), ("How tall is it?", "330 metres"),
        ("What is it taller than?", "any building")]


@pytest.fixture(scope="module")
def qa_config(tiny_backbone, tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("affinity-qa")
    path = root / "qa.jsonl"
    path.write_text("".join(json.dumps({"question": q, "context": CONTEXT,
                                        "answers": [{"text": a, "answer_start": CONTEXT.index(a)}]}) + "\n"
                            for q, a in ROWS * 4))
    raw = tiny_config(tiny_backbone, root / "runs", max_steps=4, eval_every=4, log_every=2, batch_size=4)
    qa = {"name": "qa", "type": "extractive_qa", "doc_stride": 8, "data": {"train": str(path), "dev": str(path)}}
    topic = next(t for t in demo_tasks(32, 8) if t["name"] == "topic")
    raw["tasks"] = [qa, topic]
    raw["model"]["max_length"] = 32  # the context needs several windows
    return raw


def finite_matrix(m: list) -> bool:
    return len(m) == 2 and all(len(row) == 2 and all(math.isfinite(v) for v in row) for row in m)


def test_cli_writes_the_affinity_of_a_qa_task_and_a_classification_task(qa_config, tmp_path):
    path = tmp_path / "aff.yaml"
    path.write_text(yaml.safe_dump(qa_config))
    out = tmp_path / "aff-run"
    proc = subprocess.run(CLI + ["affinity", str(path), "--every", "2", "--out", str(out), "--no-progress"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "TAG lookahead affinity" in proc.stdout and "2 lookaheads (every 2 steps)" in proc.stdout
    assert "best partner" in proc.stdout and "1 group(s): " in proc.stdout
    result = json.loads((out / "affinity.json").read_text())
    assert result["tasks"] == ["qa", "topic"] and result["steps"] == 4 and result["cost"]["lookaheads"] == 2
    for key in ("tag", "cosine"):
        assert finite_matrix(result[key]["mean"]) and finite_matrix(result[key]["std"]), key
    eps = torch.finfo(torch.float32).eps
    assert all(abs(result["cosine"]["mean"][i][i] - 1) <= 16 * eps for i in range(2))
    assert all(-1 - 1e-6 <= result["cosine"]["mean"][i][j] <= 1 + 1e-6 for i in range(2) for j in range(2))
    assert result["tag"]["mean"][0][0] != 0  # QA's own step changed its loss (measured, not a zero fill)
    assert result["best_partner"]["qa"]["partner"] == "topic" and result["best_partner"]["topic"]["partner"] == "qa"
    assert [g["grouping"] for g in result["groupings"]] == [[["qa", "topic"]]]
    assert (out / "affinity_tag.png").read_bytes()[:4] == b"\x89PNG"
    assert (out / "affinity_cosine.png").read_bytes()[:4] == b"\x89PNG"
    assert "Task affinity" in (out / "report.html").read_text()
    summary = json.loads((out / "summary.json").read_text())  # the run folder is a complete QA run
    assert {"f1", "exact_match"} <= set(summary["dev"]["qa"])
    import polytask

    answer = polytask.load(out).predict("qa", [{"question": "When was it finished?", "context": CONTEXT}])[0]
    assert isinstance(answer["answer"], str) and answer["answer"] in CONTEXT and answer["answer"]
    assert CONTEXT[answer["start"]:answer["end"]] == answer["answer"]


def test_the_qa_lookahead_restores_the_encoder_and_measures_both_tasks(qa_config, tmp_path):
    from polytask.affinity.lookahead import lookahead
    from polytask.config import from_dict
    from polytask.run_folder import RunFolder
    from polytask.train import set_up, train_batch

    s = set_up(from_dict(qa_config), RunFolder(tmp_path / "run"), resuming=False)
    batches = {n: train_batch(s.data[n], list(range(4)), s.pad_id, s.device) for n in s.tasks}
    assert batches["qa"]["input_ids"].shape[0] > 4  # four questions, more windows
    params = s.model.arch.shared_parameters()
    before = [p.detach().clone() for p in params]
    m = lookahead(s.model, s.tasks, batches, params, s.optimizer, lr=1e-3)
    assert m.names == ["qa", "topic"] and m.affinity.shape == (2, 2) and torch.isfinite(m.affinity).all()
    assert all(b > 0 and math.isfinite(b) for b in m.before)
    assert m.affinity[0, 0] > 0 and m.affinity[1, 1] > 0  # each task's own step lowers its own loss
    assert all(torch.equal(p, q) for p, q in zip(params, before))
