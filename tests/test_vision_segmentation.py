"""Semantic segmentation (docs/vision.md, issue 29): mask reading and its errors, the joint
image + mask augmentation, the check of the task/architecture combination, and a run on a tiny
random CNN that learns, whose saved model reproduces its metrics.

Images are written by the tests: a yellow square (the "pet", mask value 1) on a dark background
(value 2), its left column marked as border (value 3, the ignore value, as in the Pets trimaps)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from polytask.config import from_dict
from polytask.dataset import encode_all, prepare
from polytask.errors import ConfigError, DataError
from polytask.preprocess import ImageProcessor
from vision_helpers import save_image, vision_config, write_jsonl, write_splits

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")

PET = (230, 200, 40)



def square_image(rng, h: int = 24, w: int = 28) -> tuple[np.ndarray, np.ndarray, int]:
    """An image with one square and its trimap-style mask (1 square, 2 background, 3 border)."""
    img = np.full((h, w, 3), 20, np.uint8)  # (H, W, 3)
    mask = np.full((h, w), 2, np.uint8)  # (H, W)
    s = int(rng.integers(7, 12))
    y, x = int(rng.integers(0, h - s)), int(rng.integers(0, w - s))
    img[y:y + s, x:x + s] = PET
    mask[y:y + s, x:x + s] = 1
    mask[y:y + s, x] = 3
    return img, mask, s


def write_split(root, split: str, n: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        img, mask, s = square_image(rng)
        save_image(root, f"{split}{i}", img, mask)
        rows.append({"path": f"{split}{i}.png", "trimap": f"{split}{i}_mask.png", "big": str(int(s >= 9))})
    write_jsonl(root / f"{split}.jsonl", rows)


def seg_task(**kw) -> dict:
    return {"name": "seg", "type": "segmentation", "columns": {"image": "path", "mask": "trimap"},
            "label_names": {1: "pet", 2: "background"}, "ignore_index": 3, "head_channels": 16,
            "data": {"train": "train.jsonl", "dev": "dev.jsonl"}, **kw}


def config(root, backbone: str, tasks: list[dict], arch: str = "hard", weighting: str = "equal", **train) -> dict:
    return vision_config("seg", root, backbone, {"size": 32}, tasks, arch, weighting,
                         max_steps=30, batch_size=8, eval_every=30, lr=1e-2, log_every=10, train=train)


@pytest.fixture
def seg_data(tmp_path):
    return write_splits(tmp_path, write_split, 32, 8)


def test_masks_are_checked_with_file_and_line_grouped(seg_data, tiny_cnn):
    """A mask of another size, unknown values, a missing file, a colour mask without a palette:
    each named with its data file and line; rows with the same problem on one line."""
    Image.fromarray(np.full((10, 10), 2, np.uint8)).save(seg_data / "small.png")
    Image.fromarray(np.full((24, 28), 7, np.uint8)).save(seg_data / "seven.png")
    Image.fromarray(np.zeros((24, 28, 3), np.uint8)).save(seg_data / "rgb.png")
    rows = [json.loads(x) for x in (seg_data / "train.jsonl").read_text().splitlines()]
    rows[1]["trimap"], rows[2]["trimap"], rows[3]["trimap"] = "small.png", "small.png", "seven.png"
    rows[4]["trimap"], rows[5]["trimap"] = "nowhere.png", "rgb.png"
    (seg_data / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(DataError) as err:
        prepare(from_dict(config(seg_data, tiny_cnn, [seg_task()])))
    text = str(err.value)
    assert "train.jsonl: field 'trimap': mask size differs from its image's (2 rows: lines 2, 3)" in text
    assert "train.jsonl:4: field 'trimap': mask values not in the task's classes or ignore_index (known: [1, 2])" in text
    assert "train.jsonl:5: field 'trimap': mask file not found" in text
    assert "train.jsonl:6: field 'trimap': mask mode RGB" in text


def test_classes_without_names_are_the_training_values_and_dev_values_are_checked(seg_data, tiny_cnn):
    rows = [json.loads(x) for x in (seg_data / "dev.jsonl").read_text().splitlines()]
    Image.fromarray(np.full((24, 28), 5, np.uint8)).save(seg_data / "five.png")
    rows[0]["trimap"] = "five.png"
    (seg_data / "dev.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    task = seg_task()
    del task["label_names"]
    with pytest.raises(DataError, match=r"dev.jsonl:1: field 'trimap': mask values not in the task's classes"):
        prepare(from_dict(config(seg_data, tiny_cnn, [task])))
    data = prepare(from_dict(config(seg_data, tiny_cnn, [dict(task, data={"train": "train.jsonl"})])))
    assert data["seg"].task.labels == ["1", "2"]  # 3 is ignore_index


def test_palette_masks_map_colours_to_classes(tmp_path, tiny_cnn):
    rng = np.random.default_rng(0)
    img, mask, _ = square_image(rng)
    colours = np.zeros(mask.shape + (3,), np.uint8)
    colours[mask == 1] = (255, 0, 0)
    colours[mask == 3] = (255, 0, 0)
    Image.fromarray(img).save(tmp_path / "a.png")
    Image.fromarray(colours).save(tmp_path / "a_mask.png")
    (tmp_path / "train.jsonl").write_text(json.dumps({"path": "a.png", "trimap": "a_mask.png"}) + "\n")
    task = seg_task(palette={"#000000": "background", "#ff0000": "pet"}, data={"train": "train.jsonl"})
    del task["label_names"], task["ignore_index"]
    t = prepare(from_dict(config(tmp_path, tiny_cnn, [task])))["seg"].task
    ids = t.class_ids(str(tmp_path / "a_mask.png"))
    assert t.labels == ["background", "pet"] and np.array_equal(ids, (mask != 2).astype(np.int64))


def test_augmentation_moves_image_and_mask_together(seg_data, tiny_cnn):
    """Training views (random resized crop + flip) of image and mask: wherever the mask says pet
    the view's pixels are the square's colour, under every draw."""
    cfg = config(seg_data, tiny_cnn, [seg_task()])
    cfg["model"]["image"].update(crop_scale=[0.5, 1.0], flip=True)
    data = prepare(from_dict(cfg))
    proc = ImageProcessor(size=32, mean=[0.0] * 3, std=[1.0] * 3, crop_scale=[0.5, 1.0], flip=True)
    encode_all(data, proc, 0)
    task, feats = data["seg"].task, data["seg"].features["train"]
    flipped = 0
    for start in range(0, 32, 4):
        batch = task.collate([feats[i] for i in range(start, start + 4)], 0)
        pet = batch["labels"] == 0  # (B, S, S): class 0 is "pet"
        red = batch["pixel_values"][:, 0]  # (B, S, S) in [0, 1]
        # bilinear image vs nearest mask differ within ~ one source pixel (up to 32 / 12 view
        # pixels) of an edge: compare the pixels 3 away from any edge
        inner_pet, inner_bg = interior(pet), interior(batch["labels"] == 1)
        assert inner_pet.any() and bool((red[inner_pet] > 0.85).all()) and bool((red[inner_bg] < 0.1).all())
        border = batch["labels"] == -100
        # the border column is the square's left edge; after a flip it is its right edge
        cols = border.any(1).float().argmax(-1)  # first border column per image
        first_pet = pet.any(1).float().argmax(-1)
        flipped += int((cols > first_pet).sum())
    assert 0 < flipped < 32  # some views were mirrored, some not


def interior(region: torch.Tensor, margin: int = 3) -> torch.Tensor:
    """The pixels of a boolean region (B, S, S) with no pixel outside it within ``margin``."""
    outside = (~region).float()[:, None]
    near = torch.nn.functional.max_pool2d(outside, 2 * margin + 1, stride=1, padding=margin)[:, 0]
    return region & (near == 0)


def test_dense_tasks_need_an_architecture_that_passes_the_pyramid(seg_data, tiny_cnn):
    with pytest.raises(ConfigError, match="segmentation task reads the backbone's feature pyramid, which "
                                          "architecture mmoe does not pass"):
        prepare(from_dict(config(seg_data, tiny_cnn, [seg_task()], arch="mmoe")))


@pytest.mark.parametrize("arch,weighting", [("hard", "equal"), ("mtan", "upgrad")])
def test_segmentation_learns_and_the_saved_model_reproduces_its_metrics(seg_data, tiny_cnn, arch, weighting):
    """30 steps with a classification task beside it: dev mIoU far above the all-background
    model's (0.5 * background share ~ 0.4); the loaded run's evaluation and predictions agree."""
    from polytask.predict import Predictor, evaluate_run
    from polytask.tasks.segmentation import decode_png
    from polytask.train import train

    big = {"name": "big", "type": "classification", "columns": {"image": "path", "label": "big"},
           "data": {"train": "train.jsonl", "dev": "dev.jsonl"}}
    run = train(from_dict(config(seg_data, tiny_cnn, [seg_task(), big], arch=arch, weighting=weighting)), progress=False)
    summary = json.loads((run / "summary.json").read_text())
    trained = summary["dev"]["seg"]  # the best step's dev metrics
    assert trained["miou"] > 0.7
    again = evaluate_run(run)["metrics"]["seg"]
    assert again == pytest.approx(trained, abs=1e-6)
    pred = Predictor.load(run).predict("seg", [str(seg_data / "dev0.png")])[0]
    mask = decode_png(pred["png"])
    truth = np.asarray(Image.open(seg_data / "dev0_mask.png"))
    assert mask.shape == truth.shape and pred["labels"] == ["pet", "background"]
    assert ((mask == 0) == (truth != 2))[truth != 3].mean() > 0.9
    if arch == "hard":  # the CLI writes the same mask as a PNG file, named in its JSON line
        import subprocess
        import sys

        out = subprocess.run([sys.executable, "-m", "polytask.cli", "predict", str(run), "--task", "seg", "--text",
                              str(seg_data / "dev0.png"), "--masks", str(seg_data / "masks")],
                             capture_output=True, text=True, check=True).stdout
        line = json.loads(out.splitlines()[-1])
        assert line["seg"]["file"] == str(seg_data / "masks" / "seg" / "1.png")
        assert np.array_equal(np.asarray(Image.open(line["seg"]["file"])), mask)
