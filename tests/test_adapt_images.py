"""``polytask adapt`` on image tasks (issue 28): a tiny random ResNet trained on the ``left`` task
(tests/test_vision.py's halves), then ``right`` (the other half's colour) transferred to it:
with a frozen encoder (cached feature maps; the old task's predictions unchanged), fully tuned,
and as K-shot curves; LoRA and dense heads on cached states are refused with the reason."""

from __future__ import annotations

import json

import pytest
import torch

from polytask.adapt import AdaptError, adapt, learning_curves
from polytask.config import from_dict
from polytask.predict import Predictor
from test_vision import image_config, write_split

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


def new_task(**train) -> dict:
    return {"name": "right", "type": "classification", "columns": {"image": "path", "label": "right"},
            "data": {"train": "train.jsonl", "dev": "dev.jsonl"},
            "train": {"max_steps": 6, "eval_every": 3, "batch_size": 4, "head_lr": 1e-2, **train}}


@pytest.fixture(scope="module")
def source_run(tiny_cnn, tmp_path_factory):
    import polytask

    root = tmp_path_factory.mktemp("adapt-img")
    write_split(root, "train", 24, 1)
    write_split(root, "dev", 8, 2)
    raw = image_config(root, tiny_cnn, max_steps=4, eval_every=4)
    raw["tasks"] = raw["tasks"][:1]  # left only: right is the new task
    return polytask.train(from_dict(raw), progress=False), root


def head_logits(pred: Predictor, task: str, paths: list[str]) -> torch.Tensor:
    """``task``'s head output for the images ``paths``: (B, n_labels)."""
    parsed = pred.parse_inputs([task], [{"image": p} for p in paths], strict=True)
    t = pred.tasks[task]
    feats = t.encode([ex for _, ex in parsed.examples[task]], pred.tokenizer, pred.cfg.model.max_length)
    with torch.no_grad():
        out, _ = pred.model(t.collate(feats, pred.pad_id), task)
    return out


def test_head_on_the_frozen_image_encoder_keeps_the_old_task_bit_identical(source_run, tmp_path):
    run, root = source_run
    out = adapt(run, new_task(), tmp_path / "head", tune="head", progress=False)
    before, after = Predictor.load(run), Predictor.load(out)
    assert list(after.tasks) == ["left", "right"] and after.cfg.model.kind == "vision"
    paths = [str(root / f"dev{i}.png") for i in range(4)]
    assert torch.equal(head_logits(before, "left", paths), head_logits(after, "left", paths))
    assert set(after.predict("right", paths)) <= {"0", "1"}
    both = after.predict_all(paths)
    assert both["left"] == before.predict("left", paths) and len(both["right"]) == 4
    summary = json.loads((out / "summary.json").read_text())
    assert summary["tune"] == "head" and set(summary["dev"]) == {"right"} and summary["best_step"] in (3, 6)


def test_full_tuning_trains_the_image_encoder_for_the_new_task_alone(source_run, tmp_path):
    run, root = source_run
    out = adapt(run, new_task(), tmp_path / "full", tune="full", progress=False)
    before, after = Predictor.load(run), Predictor.load(out)
    assert list(after.tasks) == ["right"]
    changed = [not torch.equal(a, b) for a, b in zip(before.model.arch.backbone.parameters(),
                                                      after.model.arch.backbone.parameters())]
    assert any(changed)  # the CNN itself trained
    assert set(after.predict("right", [str(root / "dev0.png")])) <= {"0", "1"}


def test_k_shot_curves_on_images(source_run, tmp_path):
    run, _ = source_run
    result = learning_curves(run, new_task(max_steps=3, eval_every=3), [4], seeds=1, out_dir=tmp_path / "curves",
                             progress=False)
    assert [(r["start"], r["k"]) for r in result["summary"]] == [("multitask", 4), ("pretrained", 4)]
    assert len(result["runs"]) == 2
    assert (tmp_path / "curves" / "curves.png").read_bytes()[:4] == b"\x89PNG"


def test_lora_on_a_cnn_is_refused_with_the_reason(source_run, tmp_path):
    run, _ = source_run
    with pytest.raises(AdaptError, match="--tune lora: the LoRA adapters cannot be used with model.kind=vision"):
        adapt(run, new_task(), tmp_path / "lora", tune="lora", progress=False)
    assert not (tmp_path / "lora").exists()


def test_a_dense_task_on_cached_states_is_refused_with_the_reason(source_run, tmp_path):
    run, _ = source_run
    seg = {"name": "shape", "type": "segmentation", "columns": {"image": "path"}, "head_channels": 8,
           "data": {"train": "train.jsonl"}}
    with pytest.raises(AdaptError, match="--tune head trains on the encoder's cached last states, but a "
                                         "segmentation head reads the whole feature pyramid; use --tune full"):
        adapt(run, seg, tmp_path / "seg", tune="head", progress=False)
