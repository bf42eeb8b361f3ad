"""Object detection (docs/vision.md, issue 29): the VOC and COCO readers and their errors, box
operations and NMS on hand-made boxes, box-aware augmentation, mAP against pycocotools, and a
CenterNet head on a tiny random CNN that learns, whose saved model reproduces its metrics.

Images are written by the tests: 0 to 2 coloured squares (red or blue, the two classes) on a
dark 32 x 32 canvas; the boxes are the squares."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from polytask.config import from_dict
from polytask.dataset import encode_all, prepare
from polytask.errors import DataError
from polytask.preprocess import ImageProcessor
from polytask.tasks.boxes import batched_nms, box_iou, coco_map, nms
from vision_helpers import save_image, vision_config, write_jsonl, write_splits

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")

COLOURS = {"red": (230, 30, 30), "blue": (30, 60, 230)}



def squares(rng, size: int = 32, most: int = 2) -> tuple[np.ndarray, list[dict]]:
    img = np.full((size, size, 3), 20, np.uint8)  # (H, W, 3)
    objs: list[dict] = []
    for _ in range(int(rng.integers(0, most + 1))):
        s = int(rng.integers(7, 12))
        y, x = int(rng.integers(0, size - s)), int(rng.integers(0, size - s))
        label = ["red", "blue"][int(rng.integers(2))]
        if any(x < o["box"][2] and o["box"][0] < x + s and y < o["box"][3] and o["box"][1] < y + s for o in objs):
            continue  # no overlaps: every box holds its own colour only
        img[y:y + s, x:x + s] = COLOURS[label]
        objs.append({"box": [x, y, x + s, y + s], "label": label})
    return img, objs


def write_split(root, split: str, n: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        img, objs = squares(rng)
        save_image(root, f"{split}{i}", img)
        rows.append({"path": f"{split}{i}.png", "boxes": objs, "count": str(len(objs))})
    write_jsonl(root / f"{split}.jsonl", rows)


def det_task(**kw) -> dict:
    return {"name": "det", "type": "detection", "columns": {"image": "path"}, "head_channels": 16,
            "data": {"train": "train.jsonl", "dev": "dev.jsonl"}, **kw}


def config(root, backbone: str, tasks: list[dict], arch: str = "hard", weighting: str = "equal", **train) -> dict:
    return vision_config("det", root, backbone, {"size": 32, "crop_scale": [0.7, 1.0]}, tasks, arch, weighting,
                         max_steps=100, batch_size=8, eval_every=100, lr=1e-2, log_every=20, train=train)


@pytest.fixture
def det_data(tmp_path):
    return write_splits(tmp_path, write_split, 48, 12)


VOC = """<annotation><filename>{name}</filename><size><width>32</width><height>32</height><depth>3</depth></size>
{objects}</annotation>"""
VOC_OBJECT = "<object><name>{label}</name><bndbox><xmin>{x1}</xmin><ymin>{y1}</ymin><xmax>{x2}</xmax><ymax>{y2}</ymax></bndbox></object>"


def test_voc_files_read_with_one_based_corners_and_problems_grouped(tmp_path, tiny_cnn):
    """VOC's 1-based pixel corners become continuous ones; a file without objects is an image
    without boxes; a box outside, one with no area, an unknown class, a broken XML: file:line."""
    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(tmp_path / "a.png")
    files = {"one": [("red", 3, 4, 12, 14)], "none": [], "outside": [("red", 1, 1, 40, 10)],
             "outside2": [("blue", 20, 1, 33, 10)], "flat": [("red", 5, 5, 4, 9)], "cat": [("cat", 1, 1, 5, 5)]}
    for name, objs in files.items():
        body = "".join(VOC_OBJECT.format(label=l, x1=a, y1=b, x2=c, y2=d) for l, a, b, c, d in objs)
        (tmp_path / f"{name}.xml").write_text(VOC.format(name="a.png", objects=body))
    (tmp_path / "broken.xml").write_text("<annotation><object>")
    order = ["one", "none", "outside", "outside2", "flat", "cat", "broken", "missing"]
    (tmp_path / "train.jsonl").write_text("".join(json.dumps({"path": "a.png", "head": f"{n}.xml"}) + "\n" for n in order))
    task = det_task(columns={"image": "path", "boxes": "head"}, labels=["red", "blue"], data={"train": "train.jsonl"})
    with pytest.raises(DataError) as err:
        prepare(from_dict(config(tmp_path, tiny_cnn, [task])))
    text = str(err.value)
    assert "train.jsonl: field 'head': box outside its image (2 rows: lines 3, 4)" in text
    assert "train.jsonl:5: field 'head': box with no area" in text
    assert "train.jsonl:6: field 'head': box label not among the task's classes (known: ['red', 'blue'])" in text
    assert "train.jsonl:7: field 'head': unreadable VOC XML" in text and "train.jsonl:8: field 'head': box file not found" in text
    task["data"]["on_invalid"], task["data"]["max_invalid"] = "skip", 0.9
    data = prepare(from_dict(config(tmp_path, tiny_cnn, [task])))
    kept = [ex.fields["boxes"] for ex in data["det"].examples["train"]]
    assert kept == [[{"box": [2.0, 3.0, 12.0, 14.0], "label": "red"}], []]


def test_coco_json_is_read_per_image_with_ids_in_problems(tmp_path, tiny_cnn):
    for name in ("a.png", "b.png", "c.png"):
        Image.fromarray(np.zeros((20, 30, 3), np.uint8)).save(tmp_path / name)
    coco = {"images": [{"id": 7, "file_name": "a.png", "width": 30, "height": 20},
                       {"id": 9, "file_name": "b.png", "width": 30, "height": 20},
                       {"id": 11, "file_name": "c.png", "width": 30, "height": 20}],
            "categories": [{"id": 1, "name": "red"}, {"id": 2, "name": "blue"}],
            "annotations": [{"id": 1, "image_id": 7, "category_id": 2, "bbox": [1, 2, 10, 5], "iscrowd": 0},
                            {"id": 2, "image_id": 7, "category_id": 1, "bbox": [0, 0, 30, 20], "iscrowd": 0},
                            {"id": 3, "image_id": 11, "category_id": 1, "bbox": [25, 0, 10, 5], "iscrowd": 0}]}
    (tmp_path / "train.json").write_text(json.dumps(coco))
    task = det_task(data={"format": "coco", "train": "train.json"})
    task["columns"] = {}
    with pytest.raises(DataError, match=r"train.json:3 \(image id 11\): field 'boxes': box outside its image"):
        prepare(from_dict(config(tmp_path, tiny_cnn, [task])))
    coco["annotations"].pop()
    (tmp_path / "train.json").write_text(json.dumps(coco))
    examples = prepare(from_dict(config(tmp_path, tiny_cnn, [task])))["det"].examples["train"]
    assert [e.fields["boxes"] for e in examples] == [
        [{"box": [1, 2, 11, 7], "label": "blue"}, {"box": [0, 0, 30, 20], "label": "red"}], [], []]


def test_box_iou_and_nms_on_hand_made_boxes():
    a = torch.tensor([[0.0, 0, 10, 10], [5, 0, 15, 10], [20, 20, 30, 30]])
    iou = box_iou(a, a)
    assert iou[0, 1].item() == pytest.approx(50 / 150) and iou[0, 2].item() == 0 and iou[2, 2].item() == 1
    boxes = torch.tensor([[0.0, 0, 10, 10], [1, 0, 11, 10], [0, 1, 10, 11], [20, 20, 30, 30], [21, 20, 31, 30]])
    scores = torch.tensor([0.9, 0.95, 0.5, 0.3, 0.8])
    assert nms(boxes, scores, 0.5).tolist() == [1, 4]  # 0 and 2 overlap 1 by > 0.5; 3 overlaps 4
    assert nms(boxes, scores, 0.9).tolist() == [1, 0, 4, 2, 3]  # nothing overlaps that much
    classes = torch.tensor([0, 1, 0, 0, 0])
    assert sorted(batched_nms(boxes, scores, classes, 0.5).tolist()) == [0, 1, 4]  # 1 is another class


def test_map_matches_pycocotools_on_a_hand_made_case():
    """Three images, two classes: a hit, a loose hit (IoU 0.6), a false positive, a miss, an
    image without boxes; mAP@0.5 and @[.5:.95] equal pycocotools' own evaluation."""
    from contextlib import redirect_stdout
    from io import StringIO

    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    refs = [[{"box": [0, 0, 10, 10], "label": "a"}, {"box": [20, 20, 40, 40], "label": "b"}],
            [{"box": [5, 5, 25, 15], "label": "a"}], []]
    preds = [[{"box": [0, 0, 10, 10], "label": "a", "score": 0.9}, {"box": [20, 20, 40, 32], "label": "b", "score": 0.8},
              {"box": [50, 50, 60, 60], "label": "a", "score": 0.7}],
             [], [{"box": [1, 1, 4, 4], "label": "b", "score": 0.2}]]
    ours = coco_map(preds, refs, ["a", "b"])
    cat = {"a": 1, "b": 2}
    anns = [{"id": k + 1, "image_id": i + 1, "category_id": cat[o["label"]], "iscrowd": 0,
             "bbox": [o["box"][0], o["box"][1], o["box"][2] - o["box"][0], o["box"][3] - o["box"][1]],
             "area": (o["box"][2] - o["box"][0]) * (o["box"][3] - o["box"][1])}
            for k, (i, o) in enumerate((i, o) for i, objs in enumerate(refs) for o in objs)]
    gt = COCO()
    gt.dataset = {"images": [{"id": i + 1} for i in range(3)], "annotations": anns,
                  "categories": [{"id": 1, "name": "a"}, {"id": 2, "name": "b"}]}
    with redirect_stdout(StringIO()):
        gt.createIndex()
        dt = gt.loadRes([{"image_id": i + 1, "category_id": cat[o["label"]], "score": o["score"],
                          "bbox": [o["box"][0], o["box"][1], o["box"][2] - o["box"][0], o["box"][3] - o["box"][1]]}
                         for i, objs in enumerate(preds) for o in objs])
        ev = COCOeval(gt, dt, "bbox")
        ev.evaluate(), ev.accumulate(), ev.summarize()
    assert 0 < ours["map"] < ours["map50"] < 1
    assert ours["map50"] == pytest.approx(ev.stats[1], abs=1e-9) and ours["map"] == pytest.approx(ev.stats[0], abs=1e-9)


def test_augmented_boxes_stay_on_their_objects(det_data, tiny_cnn):
    """Random resized crops and flips: inside every kept box of every view the pixels have its
    class's colour (away from the box edge, where the bilinear image and the box differ by ~1 px)."""
    data = prepare(from_dict(config(det_data, tiny_cnn, [det_task()])))
    proc = ImageProcessor(size=32, mean=[0.0] * 3, std=[1.0] * 3, crop_scale=[0.4, 1.0], flip=True)
    encode_all(data, proc, 0)
    task, feats = data["det"].task, data["det"].features["train"]
    seen, flips = 0, 0
    for start in range(0, 48, 8):
        batch = task.collate(feats[start:start + 8], 0)
        for img, boxes, classes in zip(batch["pixel_values"], batch["boxes"], batch["classes"]):
            for box, c in zip(boxes[classes >= 0], classes[classes >= 0]):
                x1, y1, x2, y2 = (int(round(float(v))) for v in box)
                inner = img[:, y1 + 2:y2 - 2, x1 + 2:x2 - 2]  # (3, h, w)
                if inner.numel() == 0:
                    continue
                want = torch.tensor(COLOURS[task.labels[int(c)]], dtype=torch.float32) / 255
                assert torch.allclose(inner.mean((1, 2)), want, atol=0.05), (box, inner.mean((1, 2)), want)
                seen += 1
    assert seen > 20


def test_no_box_images_and_a_box_cut_away_by_the_crop():
    """The view keeps a box partly inside (clipped) and drops one mostly outside the window."""
    from polytask.config import TaskConfig
    from polytask.tasks.dense import Window
    from polytask.tasks.detection import DetectionTask

    task = DetectionTask(TaskConfig(name="d", type="detection", labels=["a"]))
    task.labels = ["a"]
    win = Window(top=0, left=10, h=20, w=20, size=40, flip=True)  # the right half of a 30 x 20 image, x2
    target = task.encode_target([{"box": [12, 2, 22, 12], "label": "a"}, {"box": [0, 0, 12, 10], "label": "a"},
                                 {"box": [5, 5, 25, 15], "label": "a"}])
    boxes, classes = task.view_target(target, win)
    assert boxes.tolist() == [[16.0, 4.0, 36.0, 24.0], [10.0, 10.0, 40.0, 30.0]] and classes.tolist() == [0, 0]
    empty = task.collate_targets([task.view_target(task.encode_target([]), win)])
    assert empty["classes"].tolist() == [[-1]]


@pytest.mark.parametrize("arch,weighting", [("hard", "equal"), ("mtan", "uw")])
def test_detection_learns_and_the_saved_model_reproduces_its_metrics(det_data, tiny_cnn, arch, weighting):
    """100 steps beside a count classifier: dev mAP@0.5 well above an untrained head's (~0)."""
    from polytask.predict import Predictor, evaluate_run
    from polytask.train import train

    count = {"name": "count", "type": "classification", "columns": {"image": "path", "label": "count"},
             "data": {"train": "train.jsonl", "dev": "dev.jsonl"}}
    run = train(from_dict(config(det_data, tiny_cnn, [det_task(), count], arch=arch, weighting=weighting)), progress=False)
    trained = json.loads((run / "summary.json").read_text())["dev"]["det"]
    assert trained["map50"] > 0.3 and trained["map"] <= trained["map50"]
    assert evaluate_run(run)["metrics"]["det"] == pytest.approx(trained, abs=1e-9)
    pred = Predictor.load(run).predict("det", [str(det_data / "dev1.png")])[0]
    assert all(set(p) == {"box", "label", "score"} and p["score"] >= 0.05 for p in pred) and len(pred) <= 100
