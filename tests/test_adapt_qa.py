"""``polytask adapt`` with extractive QA (issue 27), on the tiny random BERT and tiny QA rows
written here (a context of several windows at ``max_length`` 32): a run of QA and sentiment
adapted to a new QA task and to a new classification task, for every ``--tune`` mode (all apply
to QA on a text encoder), and the K-shot curves of a new QA task.

``--tune head`` trains on cached encoder states: a QA question is several rows of the forward
pass (its windows), so the cache holds every window; the saved run, whose forward pass runs the
encoder, must give the answers the cached head gave."""

from __future__ import annotations

import json
import math

import pytest

from conftest import demo_tasks, tiny_config
from polytask.adapt import adapt, learning_curves
from polytask.config import from_dict
from polytask.errors import ConfigError
from polytask.predict import Predictor

CONTEXT = ("The Eiffel Tower in Paris was finished in 1889 and is 330 metres tall, taller than any building. "
           "Gustave Eiffel's company designed and built it for the world's fair of that year.")
ROWS = [("When was it finished?", "1889"), ("Where is the tower?", "Paris"), ("How tall is it?", "330 metres"),
        ("What is it taller than?", "any building"), ("Whose company built it?", "Gustave Eiffel's company")]
QUESTIONS = [{"question": q, "context": CONTEXT} for q, _ in ROWS]
TEXTS = ["Anna loved the soup", "the chef burned the pasta", "Oslo is cold in winter"]


@pytest.fixture(scope="module")
def qa_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("adapt-qa-data") / "qa.jsonl"
    path.write_text("".join(json.dumps({"question": q, "context": CONTEXT,
                                        "answers": [{"text": a, "answer_start": CONTEXT.index(a)}]}) + "\n"
                            for q, a in ROWS * 4))
    return path


def qa_task(name: str, path, **train) -> dict:
    return {"name": name, "type": "extractive_qa", "doc_stride": 8,
            "data": {"train": str(path), "dev": str(path), "test": str(path)},
            "train": {"max_steps": 4, "eval_every": 2, "batch_size": 4, "head_lr": 1e-2, **train}}


def topic_task() -> dict:
    topic = next(t for t in demo_tasks(n_train=32, n_eval=12) if t["name"] == "topic")
    return {**topic, "train": {"max_steps": 4, "eval_every": 2, "batch_size": 8, "head_lr": 1e-2}}


@pytest.fixture(scope="module")
def source_run(tiny_backbone, qa_file, tmp_path_factory):
    """QA and sentiment trained together (hard sharing)."""
    import polytask

    raw = tiny_config(tiny_backbone, tmp_path_factory.mktemp("adapt-qa-src"), max_steps=4, eval_every=4, batch_size=4)
    raw["tasks"] = [{k: v for k, v in qa_task("qa", qa_file).items() if k != "train"},
                    next(t for t in demo_tasks(32, 8) if t["name"] == "sentiment")]
    return polytask.train(from_dict(raw), progress=False)


def assert_answers(preds: list[dict]) -> None:
    """Answer spans of CONTEXT: the text at the character offsets, and a score in [0, 1]."""
    assert len(preds) == len(QUESTIONS)
    for p in preds:
        assert p["answer"] and CONTEXT[p["start"]:p["end"]] == p["answer"] and 0 <= p["score"] <= 1


def old_outputs(pred: Predictor) -> dict:
    return {"qa": pred.predict("qa", QUESTIONS), "sentiment": pred.predict("sentiment", TEXTS)}


@pytest.mark.parametrize("tune", ["head", "lora", "full"])
def test_a_new_qa_task_on_a_qa_run_predicts_answer_spans(source_run, qa_file, tmp_path, tune):
    out = adapt(source_run, qa_task("qa2", qa_file), tmp_path / tune, tune=tune, progress=False)
    before, after = Predictor.load(source_run), Predictor.load(out)
    assert list(after.tasks) == (["qa2"] if tune == "full" else ["qa", "sentiment", "qa2"])
    summary = json.loads((out / "summary.json").read_text())
    for split in ("dev", "test"):
        scores = summary[split]["qa2"]
        assert {"f1", "exact_match"} <= set(scores) and all(0 <= scores[m] <= 1 for m in ("f1", "exact_match"))
        assert math.isfinite(summary[f"{split}_macro"])
    answers = after.predict("qa2", QUESTIONS)
    assert_answers(answers)
    # the training-time predictions (for head: from cached states) are the saved model's
    saved = json.loads((out / "predictions" / "test.json").read_text())["qa2"]["predictions"]
    assert [(p["answer"], p["start"]) for p in saved[:len(ROWS)]] == [(p["answer"], p["start"]) for p in answers]
    assert [p["score"] for p in saved[:len(ROWS)]] == pytest.approx([p["score"] for p in answers], abs=1e-5)
    if tune != "full":  # the old tasks, QA included, answer exactly as before
        assert {n: after.predict(n, QUESTIONS if n == "qa" else TEXTS) for n in ("qa", "sentiment")} == \
            old_outputs(before)
        both = after.predict_all(QUESTIONS)
        assert both["qa"] == before.predict("qa", QUESTIONS) and both["qa2"] == answers


@pytest.mark.parametrize("tune", ["head", "lora"])
def test_a_qa_run_adapted_to_a_classification_task_keeps_its_answers(source_run, tmp_path, tune):
    out = adapt(source_run, topic_task(), tmp_path / tune, tune=tune, progress=False)
    before, after = Predictor.load(source_run), Predictor.load(out)
    assert list(after.tasks) == ["qa", "sentiment", "topic"]
    assert set(after.predict("topic", TEXTS)) <= set(after.tasks["topic"].vocab_state()["labels"])
    assert {n: after.predict(n, QUESTIONS if n == "qa" else TEXTS) for n in ("qa", "sentiment")} == \
        old_outputs(before)
    assert_answers(after.predict("qa", QUESTIONS))
    assert set(json.loads((out / "summary.json").read_text())["test"]) == {"topic"}


def test_full_tuning_of_a_qa_run_for_a_classification_task_saves_it_alone(source_run, tmp_path):
    out = adapt(source_run, topic_task(), tmp_path / "full", tune="full", progress=False)
    after = Predictor.load(out)
    assert list(after.tasks) == ["topic"] and len(after.predict("topic", TEXTS)) == len(TEXTS)


def test_k_shot_curves_of_a_new_qa_task(source_run, qa_file, tmp_path):
    result = learning_curves(source_run, qa_task("qa2", qa_file, max_steps=2, eval_every=2), [4, 8], seeds=1,
                             out_dir=tmp_path / "curves", progress=False)
    assert result["metric"] == "f1" and len(result["runs"]) == 2 * 2  # start points x K
    assert all(0 <= r["test_mean"] <= 1 for r in result["summary"]) and result["chance"]["test"] == 0
    assert "| 4 | " in (tmp_path / "curves" / "curves.md").read_text()


def test_a_qa_task_on_an_image_run_is_refused_with_the_reason(tiny_cnn, qa_file, tmp_path):
    """Every tuning mode applies to QA on a text encoder; on a vision backbone the new task
    itself cannot read the input (the config check's message), and LoRA not the backbone."""
    import polytask
    from polytask.adapt import AdaptError
    from test_vision import image_config, write_split

    write_split(tmp_path, "train", 8, 1)
    write_split(tmp_path, "dev", 4, 2)
    raw = image_config(tmp_path, tiny_cnn, max_steps=1, eval_every=1)
    raw["tasks"] = raw["tasks"][:1]
    run = polytask.train(from_dict(raw), progress=False)
    for tune in ("head", "full"):
        with pytest.raises(ConfigError, match=r"tasks\[qa2\]: a extractive_qa task reads tokens, but "
                                              r"model.kind=vision"):
            adapt(run, qa_task("qa2", qa_file), tmp_path / tune, tune=tune, progress=False)
    with pytest.raises(AdaptError, match="--tune lora: the LoRA adapters cannot be used with model.kind=vision"):
        adapt(run, qa_task("qa2", qa_file), tmp_path / "lora", tune="lora", progress=False)
