"""Classification, segmentation and detection in one model (issue 29.4): one tiny random CNN shared
under hard sharing and MTAN, every weighting method, tasks reading different image files, the
saved model reproducing its metrics, predict_all over the three, exact resume after SIGKILL.

Images are written by the tests (32 x 32): the classification and segmentation tasks read the
same files (one red or blue square: its colour, its mask); detection reads other files with 0 to
2 squares."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from polytask.config import from_dict
from vision_helpers import assert_sigkill_then_resume_is_exact, save_image, vision_config, write_jsonl, write_splits

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")

COLOURS = {"red": (230, 30, 30), "blue": (30, 60, 230)}



def draw(rng, n_objects: int) -> tuple[np.ndarray, np.ndarray, list[dict]]:
    """A 32 x 32 image with up to ``n_objects`` non-overlapping squares, its mask (1 square,
    2 background) and its boxes."""
    img, mask, objs = np.full((32, 32, 3), 20, np.uint8), np.full((32, 32), 2, np.uint8), []
    for _ in range(n_objects):
        s = int(rng.integers(8, 13))
        y, x = int(rng.integers(0, 32 - s)), int(rng.integers(0, 32 - s))
        if any(x < o["box"][2] and o["box"][0] < x + s and y < o["box"][3] and o["box"][1] < y + s for o in objs):
            continue
        label = ["red", "blue"][int(rng.integers(2))]
        img[y:y + s, x:x + s], mask[y:y + s, x:x + s] = COLOURS[label], 1
        objs.append({"box": [x, y, x + s, y + s], "label": label})
    return img, mask, objs


def write_split(root, split: str, n: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    shapes, boxes = [], []
    for i in range(n):
        img, mask, objs = draw(rng, 1)
        save_image(root, f"{split}{i}", img, mask)
        shapes.append({"path": f"{split}{i}.png", "mask": f"{split}{i}_mask.png", "colour": objs[0]["label"]})
        img, _, objs = draw(rng, int(rng.integers(0, 3)))
        save_image(root, f"{split}_det{i}", img)
        boxes.append({"path": f"{split}_det{i}.png", "boxes": objs})
    write_jsonl(root / f"{split}.jsonl", shapes)
    write_jsonl(root / f"{split}_det.jsonl", boxes)


@pytest.fixture
def dense_data(tmp_path):
    return write_splits(tmp_path, write_split, 48, 12)


def config(root, backbone: str, arch: str = "hard", weighting: str = "equal", **train) -> dict:
    data = {"train": "train.jsonl", "dev": "dev.jsonl"}
    return vision_config("dense", root, backbone, {"size": 32, "crop_scale": [0.7, 1.0]}, [
            {"name": "colour", "type": "classification", "columns": {"image": "path", "label": "colour"}, "data": data},
            {"name": "shape", "type": "segmentation", "columns": {"image": "path"}, "head_channels": 16,
             "label_names": {"1": "square", "2": "background"}, "data": data},
            {"name": "boxes", "type": "detection", "columns": {"image": "path"}, "head_channels": 16,
             "data": {"train": "train_det.jsonl", "dev": "dev_det.jsonl"}},
    ], arch, weighting, max_steps=100, batch_size=8, eval_every=100, lr=1e-2, log_every=10, train=train, seed=3)


@pytest.mark.parametrize("arch,weighting", [("hard", "imtl"), ("mtan", "upgrad")])
def test_three_dense_and_pooled_tasks_in_one_model_learn_and_reload(dense_data, tiny_cnn, arch, weighting):
    """100 steps, every task in every step (IMTL: scale-free, for losses of very different
    scales; UPGrad). Above chance on all three (colour: 0.5; an
    all-background mask: mIoU ~0.45; an untrained CenterNet: mAP ~0); the loaded run evaluates to the same metrics; predict_all answers the
    three tasks for one image."""
    from polytask.predict import Predictor, evaluate_run
    from polytask.train import train

    run = train(from_dict(config(dense_data, tiny_cnn, arch, weighting)), progress=False)
    dev = json.loads((run / "summary.json").read_text())["dev"]
    assert dev["colour"]["accuracy"] >= 0.75 and dev["shape"]["miou"] > 0.7 and dev["boxes"]["map50"] > 0.3, dev
    again = evaluate_run(run)["metrics"]
    for task in dev:
        assert again[task] == pytest.approx(dev[task], abs=1e-9)
    pred = Predictor.load(run).predict_all([{"path": str(dense_data / "dev0.png")}])
    assert pred["colour"][0] in COLOURS and set(pred["shape"][0]) == {"png", "labels"}
    assert isinstance(pred["boxes"][0], list)
    report = (run / "report.html").read_text()  # dev images with their masks and boxes, predicted and true
    shape = report.split('id="samples-shape"')[1].split("<h2")[0]
    boxes = report.split('id="samples-boxes"')[1].split("<h2")[0]
    assert shape.count("image, predicted mask, true mask") == 12 and shape.count("<img ") == 36
    assert boxes.count("true (green)") == 12 and ("1 true (green)" in boxes or "2 true (green)" in boxes)


def weighting_methods() -> list[str]:
    from polytask.weighting import REGISTRY

    return list(REGISTRY)


@pytest.mark.parametrize("method", weighting_methods())
def test_every_weighting_method_trains_the_dense_mix(dense_data, tiny_cnn, method):
    """Three steps of the three tasks with each method (methods that sample one task per step
    see each once, in turn): losses of very different scales (CenterNet's focal loss starts
    near 10, cross-entropies near 0.7), every one finite."""
    from polytask.train import train

    cfg = dict(config(dense_data, tiny_cnn, "hard", method, max_steps=3, eval_every=3, log_every=1), name=method,
               sampling={"name": "round_robin"})
    run = train(from_dict(cfg), progress=False)
    steps = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    losses = [e["loss"] for e in steps if e["kind"] == "train"]
    assert set().union(*losses) == {"colour", "shape", "boxes"}
    assert all(np.isfinite(v) for step in losses for v in step.values())


def test_sigkill_then_resume_is_exact_with_dense_tasks(dense_data, tiny_cnn):
    """A CLI run of the three tasks (MTAN; crops, flips and jitter on 2 worker processes) killed
    after a checkpoint and resumed equals the uninterrupted run without workers, to the bit."""
    import yaml

    cfg = config(dense_data, tiny_cnn, "mtan", "equal", max_steps=40, eval_every=20, checkpoint_every=10, prefetch=3)
    cfg["model"]["image"].update(flip=True, jitter=0.3, crop_scale=[0.5, 1.0])
    paths = {}
    for name, workers in (("ref", 0), ("killed", 2)):  # the killed run decodes on 2 worker processes
        paths[name] = dense_data / f"{name}.yaml"
        paths[name].write_text(yaml.safe_dump(dict(cfg, name=name, train=dict(cfg["train"], workers=workers))))
    assert_sigkill_then_resume_is_exact(paths["ref"], paths["killed"], dense_data / "runs", "step-0000010")


def test_dense_batches_are_the_same_on_worker_processes(dense_data, tiny_cnn):
    """Augmented segmentation and detection batches made on the worker pool equal those made here."""
    from polytask.dataset import encode_all, prepare
    from polytask.preprocess import ImageProcessor
    from polytask.prefetch import worker_pool

    data = prepare(from_dict(config(dense_data, tiny_cnn)))
    encode_all(data, ImageProcessor(size=32, crop_scale=[0.4, 1.0], flip=True, jitter=0.3), 0)
    made = {}
    for where in ("here", "pool"):
        with worker_pool(2 if where == "pool" else 0):
            made[where] = {n: data[n].task.collate(data[n].features["train"][:8], 0) for n in ("shape", "boxes")}
    for name, batch in made["here"].items():
        assert batch.keys() == made["pool"][name].keys()
        assert all(torch.equal(v, made["pool"][name][k]) for k, v in batch.items())


def test_onnx_export_of_dense_heads_decodes_to_the_predictions(dense_data, tiny_cnn):
    """The ONNX graph's raw segmentation and detection maps, decoded as the manifest says (the
    tasks' own decode), give Predictor's masks and boxes for the same images."""
    pytest.importorskip("onnxruntime")
    import onnxruntime as ort

    from polytask.export import export_onnx
    from polytask.predict import Predictor
    from polytask.train import train

    run = train(from_dict(config(dense_data, tiny_cnn, "hard", "imtl", max_steps=4, eval_every=4)), progress=False)
    out = export_onnx(run, dense_data / "onnx")
    manifest = json.loads((out / "polytask_onnx.json").read_text())
    assert manifest["tasks"]["boxes"]["shape"][1] == 2 + 4 and "CenterNet" in manifest["tasks"]["boxes"]["note"]
    assert manifest["tasks"]["shape"]["labels"] == ["square", "background"] and not manifest["not_exported"]
    pred = Predictor.load(run)
    files = [str(dense_data / f"dev{i}.png") for i in range(3)]
    session = ort.InferenceSession(str(out / "model.onnx"))
    for task in ("shape", "boxes"):
        t = pred.tasks[task]
        ex = [pred.parse_inputs([task], [{"path": f}], strict=True).examples[task][0][1] for f in files]
        batch = t.collate(t.encode(ex, pred.tokenizer, 0), 0)
        raw = session.run([task], {"pixel_values": batch["pixel_values"].numpy()})[0]  # (B, K [+ 4], S/4, S/4)
        assert t.decode(torch.from_numpy(raw), batch) == pred.predict(task, files)
