"""Extractive QA: ``null_threshold: auto`` tunes SQuAD 2.0's no-answer threshold on dev at the
end of training (issue 27): the threshold is dev's best-F1 one (spans.best_threshold), scores
the test split, and survives load, predict and the hf / onnx exports."""

from __future__ import annotations

import json

import pytest

from conftest import tiny_config
from polytask.config import from_dict
from polytask.errors import ConfigError
from polytask.tasks import spans as S
from test_extractive_qa_mtl import CONTEXT, ROWS

# The tolerance of a margin recomputed by predict rather than by training's evaluation: margins
# are kept to 6 decimals, and their float32 logit sums (|logit| well under 100 for the tiny
# model) may round differently in a differently padded batch: 1e-6 + 2^-13 relative slack.
MARGIN_TOL = 1e-6


def margin_tol(value: float) -> float:
    return MARGIN_TOL + 2 ** -13 * max(1.0, abs(value))


@pytest.fixture(scope="module")
def squad2_file(tmp_path_factory):
    """SQuAD 2.0-style rows: the MTL test's answerable questions and two unanswerable ones."""
    path = tmp_path_factory.mktemp("qa2") / "qa2.jsonl"
    rows = [{"question": q, "context": CONTEXT, "answers": [{"text": a, "answer_start": CONTEXT.index(a)}]}
            for q, a in ROWS] + [{"question": "Who painted it?", "context": CONTEXT, "answers": []},
                                 {"question": "What colour is the roof?", "context": CONTEXT, "answers": []}]
    path.write_text("\n".join(json.dumps(r) for r in rows * 3) + "\n")
    return path


def qa_config(tiny_backbone, out, path, **qa) -> dict:
    raw = tiny_config(tiny_backbone, out, max_steps=4, eval_every=4, batch_size=6)
    raw["tasks"] = [{"name": "qa", "type": "extractive_qa", "doc_stride": 8, "allow_unanswerable": True,
                     "null_threshold": "auto", "data": {"train": str(path), "dev": str(path), "test": str(path)},
                     **qa}]
    raw["model"]["max_length"] = 32
    return raw


@pytest.fixture(scope="module")
def tuned_run(tiny_backbone, tmp_path_factory, squad2_file):
    import polytask

    return polytask.train(from_dict(qa_config(tiny_backbone, tmp_path_factory.mktemp("runs"), squad2_file)),
                          progress=False)


def dev_inputs(path) -> tuple[list[dict], list[list[str]]]:
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    return ([{"question": r["question"], "context": r["context"]} for r in rows],
            [[a["text"] for a in r["answers"]] for r in rows])


def test_the_threshold_is_dev_best_f1_one_and_scores_the_test_split(tuned_run, squad2_file):
    import polytask

    summary = json.loads((tuned_run / "summary.json").read_text())
    tuned = summary["tuned"]["qa"]["null_threshold"]
    assert tuned == summary["dev"]["qa"]["best_f1_threshold"]
    # recomputed independently: the loaded model's dev predictions through spans.best_threshold
    pred = polytask.load(tuned_run)
    inputs, refs = dev_inputs(squad2_file)
    preds = pred.predict("qa", inputs)
    again, best_f1 = S.best_threshold([p["null_margin"] for p in preds], [p["best_span"] for p in preds], refs)
    assert again == pytest.approx(tuned, abs=margin_tol(tuned))
    assert best_f1 == pytest.approx(summary["dev"]["qa"]["best_f1"], abs=1e-9)
    # test is the dev file: scored at the tuned threshold its F1 is dev's best F1
    assert summary["test"]["qa"]["f1"] == pytest.approx(summary["dev"]["qa"]["best_f1"], abs=1e-9)


def test_a_loaded_predictor_decodes_with_the_tuned_threshold(tuned_run, squad2_file):
    import polytask

    tuned = json.loads((tuned_run / "summary.json").read_text())["tuned"]["qa"]["null_threshold"]
    pred = polytask.load(tuned_run)
    assert pred.tasks["qa"].null_threshold == tuned
    assert json.loads((tuned_run / "vocab.json").read_text())["qa"]["null_threshold"] == tuned
    for p in pred.predict("qa", dev_inputs(squad2_file)[0]):
        if abs(p["null_margin"] - tuned) > margin_tol(tuned):  # clear of the threshold
            assert (p["answer"] == "") == (p["null_margin"] > tuned)
    pred.tasks["qa"].cfg.null_threshold = 1e9  # a number set on the loaded task still wins
    assert all(p["answer"] == p["best_span"] for p in pred.predict("qa", dev_inputs(squad2_file)[0]))


def test_the_exports_carry_the_tuned_threshold(tuned_run, tmp_path):
    from polytask.export.hf import export_hf

    tuned = json.loads((tuned_run / "summary.json").read_text())["tuned"]["qa"]["null_threshold"]
    export_hf(tuned_run, tmp_path / "hf")
    assert json.loads((tmp_path / "hf" / "tasks" / "qa" / "polytask_qa.json").read_text())["null_threshold"] == tuned
    pytest.importorskip("onnx")
    from polytask.export.onnx import export_onnx

    out = export_onnx(tuned_run, tmp_path / "onnx")
    entry = json.loads((out / "polytask_onnx.json").read_text())
    tasks = entry["tasks"].values() if isinstance(entry["tasks"], dict) else entry["tasks"]
    assert next(t for t in tasks if t["type"] == "extractive_qa")["null_threshold"] == tuned


def test_a_set_number_is_kept(tiny_backbone, tmp_path, squad2_file):
    import polytask

    raw = qa_config(tiny_backbone, tmp_path, squad2_file, null_threshold=-0.5)
    raw["train"]["max_steps"] = 1
    run = polytask.train(from_dict(raw), progress=False)
    assert "tuned" not in json.loads((run / "summary.json").read_text())
    assert polytask.load(run).tasks["qa"].null_threshold == -0.5


def test_auto_is_refused_without_unanswerable_questions_or_dev(tiny_backbone, tmp_path, squad2_file):
    raw = qa_config(tiny_backbone, tmp_path, squad2_file, allow_unanswerable=False)
    with pytest.raises(ConfigError, match=r"tasks\[0\]\.null_threshold: auto .* does not allow unanswerable "
                                          r"questions.*allow_unanswerable: true"):
        from_dict(raw)
    raw = qa_config(tiny_backbone, tmp_path, squad2_file)
    del raw["tasks"][0]["data"]["dev"]
    with pytest.raises(ConfigError, match=r"tasks\[0\]\.null_threshold: auto .* no data\.dev"):
        from_dict(raw)
