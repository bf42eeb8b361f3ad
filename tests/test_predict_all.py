"""One encoder pass for all tasks: ``Predictor.predict_all`` on hard sharing / MMoE / PLE encodes each
distinct input once; other architectures fall back to one pass per task; inputs are validated."""

from __future__ import annotations

import math

import pytest

from conftest import tiny_config
from polytask.config import from_dict
from polytask.errors import DataError, PolytaskError

TEXTS = ["Anna loved the soup", "the chef burned the pasta", "Oslo is cold in winter", "Berg met Anna in Oslo",
         "a dog runs", "the film was not good at all"]
MIXED = [{"text": "Anna loved the soup", "text_a": "a dog", "text_b": "a cat", "tokens": ["Anna", "loved", "soup"]},
         {"text": "the chef burned the pasta"},
         {"text_a": "a dog runs", "text_b": "a dog is running"},
         {"tokens": ["Berg", "flew", "to", "Oslo"]}]


def train_run(backbone, root, name, arch="hard", args=None, steps=4):
    import polytask

    raw = tiny_config(backbone, root, max_steps=steps, eval_every=steps)
    raw["name"] = name
    raw["architecture"] = {"name": arch, "args": args or {}}
    return polytask.train(from_dict(raw), progress=False)


@pytest.fixture(scope="module")
def hard_run(tiny_backbone, tmp_path_factory):
    return train_run(tiny_backbone, tmp_path_factory.mktemp("pa"), "hard")


def count_encoder_calls(pred):
    calls = []
    pred.model.arch.backbone.register_forward_hook(lambda *a: calls.append(1))
    return calls


def same(a, b):
    if isinstance(a, float):
        return math.isclose(a, b, rel_tol=1e-4, abs_tol=1e-5)
    return a == b


def test_one_encoder_pass_per_input_batch_on_hard_sharing(hard_run):
    import polytask

    pred = polytask.load(hard_run)
    assert pred.model.arch.shared_encoder and all(pred.shares_encoder(t) for t in pred.tasks)
    calls = count_encoder_calls(pred)
    single = [name for name in pred.tasks if name != "similarity"]  # similarity needs a text pair
    per_task = {name: pred.predict(name, TEXTS) for name in single}
    assert len(calls) == len(single)  # one pass per task, one batch each
    calls.clear()
    all_ = pred.predict_all(TEXTS)
    assert len(calls) == 1  # every task from one pass over the (deduplicated) inputs
    calls.clear()
    pred.predict_all(TEXTS, batch_size=2)
    assert len(calls) == math.ceil(len(TEXTS) / 2)  # strings: every task's encoding is the same
    for name, preds in per_task.items():
        assert all(same(a, b) for a, b in zip(all_[name], preds)), name
    assert all_["similarity"] == [None] * len(TEXTS) and set(all_.skipped) == {"similarity"}
    assert all_.skipped["similarity"][0] == "missing field(s): text_b"


def test_duplicates_share_a_pass_and_fields_decide_tasks(hard_run):
    import polytask

    pred = polytask.load(hard_run)
    calls = count_encoder_calls(pred)
    out = pred.predict_all(MIXED, batch_size=1)
    # distinct encodings: "Anna loved the soup" (also the tokens "Anna loved soup"? no: different),
    # "a dog"/"a cat" pair, the chef text, the "a dog runs" pair, the Berg tokens
    assert len(calls) <= 6
    assert out["sentiment"][0] is not None and out["sentiment"][2] is None and out["sentiment"][3] is None
    assert out["similarity"][1] is None and isinstance(out["similarity"][2], float)
    assert len(out["entities"][3]) == 4 and out["entities"][1] is None
    assert set(out.skipped["entities"]) == {1, 2} and "tokens" in out.skipped["entities"][1]
    assert set(out.skipped["similarity"]) == {1, 3}
    for name in pred.tasks:
        kept = [i for i in range(len(MIXED)) if i not in out.skipped.get(name, {})]
        alone = pred.predict(name, [MIXED[i] for i in kept])
        assert all(same(out[name][i], p) for i, p in zip(kept, alone)), name


def test_scores_are_label_probabilities(hard_run):
    import polytask

    pred = polytask.load(hard_run)
    out = pred.predict_all(TEXTS[:2], tasks=["topic", "similarity"], scores=True)
    assert set(out) == {"topic", "similarity"} and "similarity" not in out.scores
    for label, probs in zip(out["topic"], out.scores["topic"]):
        assert math.isclose(sum(probs.values()), 1.0, abs_tol=1e-4) and max(probs, key=probs.get) == label


def test_bad_inputs_are_clear_errors(hard_run):
    import polytask

    pred = polytask.load(hard_run)
    with pytest.raises(PolytaskError, match="wrap a single input in a list"):
        pred.predict("topic", "the chef burned the pasta")
    with pytest.raises(PolytaskError, match="wrap a single input"):
        pred.predict_all("the chef burned the pasta")
    with pytest.raises(PolytaskError, match="unknown task 'nope'.*topic"):
        pred.predict_all(TEXTS, tasks=["nope"])
    with pytest.raises(DataError, match="empty text"):
        pred.predict_all([{"text": "  "}])
    with pytest.raises(DataError, match="text_b"):  # predict is strict: a missing field is an error
        pred.predict("similarity", [{"text_a": "a dog"}])


@pytest.mark.parametrize("arch,args,one_pass", [("mmoe", {"n_experts": 2}, True), ("ple", {"levels": 2}, True),
                                                ("soft", {"layers": 1}, False)])
def test_other_architectures(tiny_backbone, tmp_path, arch, args, one_pass):
    import polytask

    pred = polytask.load(train_run(tiny_backbone, tmp_path, arch, arch, args, steps=2))
    assert pred.model.arch.shared_encoder is one_pass
    per_task = {name: pred.predict(name, TEXTS) for name in pred.tasks if name != "similarity"}
    all_ = pred.predict_all(TEXTS)
    for name, preds in per_task.items():
        assert all(same(a, b) for a, b in zip(all_[name], preds)), name


def test_cli_predict_all_tasks_reports_skipped_and_version(hard_run, tmp_path):
    import json
    import subprocess
    import sys

    from conftest import REPO

    def cli(*args):
        return subprocess.run([sys.executable, "-m", "polytask.cli", *map(str, args)], cwd=REPO, capture_output=True,
                              text=True, timeout=300)

    proc = cli("predict", hard_run, "--text", "the chef burned the pasta")
    assert proc.returncode == 0, proc.stderr
    row = json.loads(proc.stdout)
    assert set(row) == {"input", "sentiment", "topic", "entities", "skipped"}
    assert row["skipped"] == {"similarity": "missing field(s): text_b"}
    version = cli("--version")
    assert version.returncode == 0 and version.stdout.startswith("polytask ")


def test_python_api_train_with_overrides_and_top_level_predictor(tiny_backbone, tmp_path):
    import yaml

    import polytask
    import polytask.train as train_module  # importing the submodule keeps polytask.train callable

    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(tiny_config(tiny_backbone, tmp_path / "runs")))
    run_dir = polytask.train(str(path), ["train.max_steps=2", "train.eval_every=2", "name=api"], progress=False)
    assert run_dir.name == "api" and callable(polytask.train) and train_module.train_step
    pred = polytask.load(run_dir)
    assert isinstance(pred, polytask.Predictor) and polytask.Predictor.__doc__ is not None
    assert pred.predict("topic", ["the chef burned the pasta"])[0] in pred.tasks["topic"].labels
