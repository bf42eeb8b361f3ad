"""The multi-digit detection builder (scripts/make_multidigit.py): seeded, 1 to 4 digits per
canvas, tight ink boxes inside the canvas, COCO JSON and JSONL that polytask reads to the same boxes."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
from PIL import Image

from polytask.data.boxes import read_coco
from polytask.data.multidigit import build

ROOT = Path(__file__).resolve().parents[2]


def fake_mnist(path: Path) -> None:
    """Digit-like arrays: digit d is a filled bar of width 2 + 2 * (d % 4) (ink 255) in a 28 x 28 frame."""
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 10, 60).astype(np.uint8)
    images = np.zeros((60, 28, 28), np.uint8)
    for i, d in enumerate(labels):
        images[i, 6:22, 10:12 + 2 * (d % 4)] = 255
    np.savez_compressed(path, x_train=images[:40], y_train=labels[:40], x_test=images[40:], y_test=labels[40:])


def test_build_is_seeded_and_its_boxes_are_the_digits_ink(tmp_path):
    fake_mnist(tmp_path / "m.npz")
    sizes = build(tmp_path / "m.npz", tmp_path / "a", 30, 5, 5, seed=3, dev_pool=10)
    build(tmp_path / "m.npz", tmp_path / "b", 30, 5, 5, seed=3, dev_pool=10)
    assert sizes == {"train": 30, "dev": 5, "test": 5}
    assert (tmp_path / "a" / "train.json").read_text() == (tmp_path / "b" / "train.json").read_text()
    rows = [json.loads(x) for x in (tmp_path / "a" / "train.jsonl").read_text().splitlines()]
    assert {int(r["count"]) for r in rows} <= {1, 2, 3, 4} and len({r["count"] for r in rows}) > 1
    for r in rows:
        img = np.asarray(Image.open(tmp_path / "a" / r["image"]))
        assert img.shape == (64, 64) and len(r["boxes"]) == int(r["count"])
        covered = np.zeros_like(img, dtype=bool)
        for o in r["boxes"]:
            x1, y1, x2, y2 = (int(v) for v in o["box"])
            assert 0 <= x1 < x2 <= 64 and 0 <= y1 < y2 <= 64 and o["label"] in "0123456789"
            covered[y1:y2, x1:x2] = True
            assert img[y1:y2, x1:x2].max() > 0
        assert not img[~covered].any()  # all ink lies in some box
    records, problems = read_coco(tmp_path / "a" / "train.json")
    assert not problems and [rec.fields["boxes"] for rec in records] == [r["boxes"] for r in rows]


def test_script_writes_under_the_given_folder(tmp_path):
    fake_mnist(tmp_path / "m.npz")
    out = subprocess.run([sys.executable, str(ROOT / "scripts" / "make_multidigit.py"), str(tmp_path / "m.npz"),
                          str(tmp_path / "out"), "--train", "4", "--dev", "2", "--test", "2"],
                         capture_output=True, text=True, check=True).stdout
    assert "train (4 images)" in out and sorted(p.name for p in (tmp_path / "out").iterdir()) == [
        "dev", "dev.json", "dev.jsonl", "test", "test.json", "test.jsonl", "train", "train.json", "train.jsonl"]
