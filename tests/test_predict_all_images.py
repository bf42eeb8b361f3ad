"""``predict_all`` on image tasks shares backbone passes by evaluation view (issue 29): under hard
sharing the classification tasks (centre crop) run the backbone once per image and the dense
tasks (whole image squashed) once more, and every task's predictions equal its own per-task
computation (``model(batch, task)`` on the task's own collated batches); MTAN (no task-independent
encoder pass) keeps one pass per task.

Real runs of the tiny random CNN (2 training steps) on the 32 x 32 square images that
tests/test_vision_dense_joint.py writes, plus a non-square image given as an array."""

from __future__ import annotations

import io
import math

import numpy as np
import pytest
import torch
from PIL import Image

from polytask.config import from_dict
from test_vision_dense_joint import config as dense_config
from test_vision_dense_joint import write_split

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")

TASKS = ("colour", "colour2", "shape", "boxes")  # two classifications, segmentation, detection


def train_run(root, backbone: str, arch: str):
    from polytask.train import train

    raw = dense_config(root, backbone, arch, "equal", max_steps=2, eval_every=2, batch_size=4)
    raw["name"] = f"pa_{arch}"
    second = dict(raw["tasks"][0], name="colour2")  # the same images and labels: a second head
    raw["tasks"].insert(1, second)
    return train(from_dict(raw), progress=False)


@pytest.fixture(scope="module")
def runs(tmp_path_factory, tiny_cnn):
    root = tmp_path_factory.mktemp("pai")
    write_split(root, "train", 8, 1)
    write_split(root, "dev", 6, 2)
    return root, {arch: train_run(root, tiny_cnn, arch) for arch in ("hard", "mtan")}


def inputs(root) -> list[dict]:
    """12 distinct square files and one non-square (40 x 28) array: every task reads each."""
    files = [root / f"dev{i}.png" for i in range(6)] + [root / f"dev_det{i}.png" for i in range(6)]
    wide = np.random.default_rng(5).integers(0, 256, (28, 40, 3), dtype=np.uint8)  # (H, W, 3)
    return [{"path": str(f)} for f in files] + [{"path": wide}]


def count_backbone_calls(pred) -> list:
    calls: list = []
    pred.model.arch.backbone.register_forward_hook(lambda *a: calls.append(1))
    return calls


@torch.no_grad()
def per_task(pred, task: str, items: list, batch_size: int) -> tuple[list, list]:
    """The task alone: its own encoding and collation, ``model(batch, task)``, its decoding."""
    from polytask.predict_images import probabilities

    t = pred.tasks[task]
    ex = [e for _, e in pred.parse_inputs([task], items, strict=True).examples[task]]
    feats = t.encode(ex, pred.tokenizer, 0)
    preds, probs = [], []
    for s in range(0, len(feats), batch_size):
        batch = t.collate(feats[s:s + batch_size], 0)
        out, _ = pred.model(batch, task)
        preds += t.decode(out, batch)
        probs += probabilities(t, out, True)
    return preds, probs


@pytest.mark.parametrize("batch_size", [64, 5])
def test_hard_sharing_runs_one_pass_per_view_and_predicts_as_each_task_alone(runs, batch_size):
    from polytask.predict import Predictor

    root, run = runs
    pred = Predictor.load(run["hard"], precision="fp32")
    items = inputs(root)
    assert all(pred.shares_encoder(t) for t in TASKS)
    calls = count_backbone_calls(pred)
    reference = {t: per_task(pred, t, items, batch_size) for t in TASKS}
    assert len(calls) == len(TASKS) * math.ceil(len(items) / batch_size)
    calls.clear()
    got = pred.predict_all(items, batch_size=batch_size, scores=True)
    # two views (centre crop: colour, colour2; whole image: shape, boxes), one pass per batch of each
    assert len(calls) == 2 * math.ceil(len(items) / batch_size)
    for t in TASKS:  # the same rows through the same ops: identical, floats (box corners, scores) included
        assert got[t] == reference[t][0], t
    for t in ("colour", "colour2"):
        assert got.scores[t] == reference[t][1], t
    assert got["shape"][-1]["png"] != got["shape"][0]["png"]  # the array input is predicted, not skipped
    assert any(got["boxes"]) and not got.skipped


def test_repeated_images_run_once_and_get_the_same_predictions(runs):
    """A file named twice and an array also sent as PNG bytes: one backbone row each."""
    from polytask.predict import Predictor

    root, run = runs
    pred = Predictor.load(run["hard"], precision="fp32")
    items = inputs(root)
    buf = io.BytesIO()
    Image.fromarray(items[-1]["path"]).save(buf, format="PNG")
    repeated = items + [dict(items[0]), {"path": buf.getvalue()}]
    rows = []
    pred.model.arch.backbone.register_forward_hook(lambda m, a, kw, out: rows.append(kw["pixel_values"].shape[0]),
                                                   with_kwargs=True)
    got = pred.predict_all(repeated)
    assert rows == [len(items), len(items)]  # each view's distinct images once
    for t in TASKS:
        assert got[t][-2] == got[t][0] and got[t][-1] == got[t][-3], t


def test_mtan_keeps_one_pass_per_task_and_the_same_predictions(runs):
    from polytask.predict import Predictor

    root, run = runs
    pred = Predictor.load(run["mtan"], precision="fp32")
    items = inputs(root)
    assert not pred.model.arch.shared_encoder and not any(pred.shares_encoder(t) for t in TASKS)
    calls = count_backbone_calls(pred)
    got = pred.predict_all(items)
    assert len(calls) == len(TASKS)
    for t in TASKS:
        assert got[t] == per_task(pred, t, items, 64)[0], t


def test_view_keys_separate_crop_from_squash_and_training_features(runs):
    """Equal keys for the two classification tasks' features of one image; the dense tasks share
    another view of the same image; an augmented (training) feature promises nothing."""
    from polytask.predict import Predictor

    root, run = runs
    pred = Predictor.load(run["hard"], precision="fp32")
    items = inputs(root)[:2]
    keys = {}
    for t in TASKS:
        ex = [e for _, e in pred.parse_inputs([t], items, strict=True).examples[t]]
        keys[t] = [pred.tasks[t].view_key(f) for f in pred.tasks[t].encode(ex, pred.tokenizer, 0)]
    assert keys["colour"] == keys["colour2"] and keys["shape"] == keys["boxes"]
    assert keys["colour"][0][0] != keys["shape"][0][0] and keys["colour"][0][1] == keys["shape"][0][1]
    assert keys["colour"][0][1] != keys["colour"][1][1]
    t = pred.tasks["colour"]
    train = t.encode([e for _, e in pred.parse_inputs(["colour"], items, strict=True).examples["colour"]],
                     pred.tokenizer, 0)
    t.for_training(train)
    assert t.view_key(train[0]) is None
