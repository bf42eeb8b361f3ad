"""Multi-digit detection data, built from the standard MNIST arrays (issue 29; scripts/make_multidigit.py).

Each example is a ``canvas`` x ``canvas`` grey image (default 64) holding 1 to 4 MNIST digits
(the count uniform), each resized from 28 px to a side drawn uniformly in [``min_side``,
``max_side``] (default 16..36, bilinear) and placed uniformly at random inside the canvas; a
placement whose box would overlap an earlier digit's by IoU > ``max_iou`` (0.2) is redrawn (up to
50 tries; the digit is left out after that, so rare images hold fewer than drawn). Digits are
overlaid by the pixel-wise maximum. A box is the tight box of the digit's ink (pixels > 0 after
resizing), in continuous pixel corners; its class is the digit ("0".."9").

Splits: ``train`` and ``dev`` from MNIST's training images (dev from the last ``dev_pool`` of them,
at most half,
so no digit image is in both), ``test`` from MNIST's test images; each split seeded. Written under
``out_dir`` as ``<split>/<n>.png`` plus ``<split>.json`` (COCO: images, annotations, categories;
``data.format: coco``) and ``<split>.jsonl`` (rows ``{"image", "boxes", "count"}``: the same boxes
inline, and the number of digits as a label for a classification task beside detection).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

DIGIT = 28


def place(rng: np.random.Generator, boxes: list[list[float]], side: int, canvas: int, max_iou: float) -> tuple[int, int] | None:
    """A top-left corner for a ``side`` square whose overlap with every earlier box is at most ``max_iou``."""
    for _ in range(50):
        y, x = int(rng.integers(0, canvas - side + 1)), int(rng.integers(0, canvas - side + 1))
        if all(iou([x, y, x + side, y + side], b) <= max_iou for b in boxes):
            return y, x
    return None


def iou(a: list[float], b: list[float]) -> float:
    w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = w * h
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def compose(rng: np.random.Generator, images: np.ndarray, labels: np.ndarray, canvas: int,
            sides: tuple[int, int], max_iou: float) -> tuple[np.ndarray, list[dict]]:
    """One canvas (canvas, canvas) uint8 and its objects ``{"box", "label"}``."""
    from PIL import Image

    out = np.zeros((canvas, canvas), np.uint8)
    objects: list[dict] = []
    for _ in range(int(rng.integers(1, 5))):
        k, side = int(rng.integers(0, len(images))), int(rng.integers(sides[0], sides[1] + 1))
        corner = place(rng, [o["box"] for o in objects], side, canvas, max_iou)
        if corner is None:
            continue
        digit = np.asarray(Image.fromarray(images[k]).resize((side, side), Image.BILINEAR))  # (side, side)
        y, x = corner
        region = out[y:y + side, x:x + side]
        np.maximum(region, digit, out=region)
        rows, cols = np.nonzero(digit)
        if len(rows) == 0:
            continue
        box = [float(x + cols.min()), float(y + rows.min()), float(x + cols.max() + 1), float(y + rows.max() + 1)]
        objects.append({"box": box, "label": str(int(labels[k]))})
    return out, objects


def write_split(out: Path, split: str, canvases: list[tuple[np.ndarray, list[dict]]]) -> None:
    """``<split>/<i>.png``, ``<split>.json`` (COCO) and ``<split>.jsonl``."""
    from PIL import Image

    (out / split).mkdir(parents=True, exist_ok=True)
    images, anns, rows = [], [], []
    for i, (img, objs) in enumerate(canvases):
        name = f"{split}/{i}.png"
        Image.fromarray(img).save(out / name)
        images.append({"id": i + 1, "file_name": name, "width": img.shape[1], "height": img.shape[0]})
        for o in objs:
            x1, y1, x2, y2 = o["box"]
            anns.append({"id": len(anns) + 1, "image_id": i + 1, "category_id": int(o["label"]) + 1,
                         "bbox": [x1, y1, x2 - x1, y2 - y1], "area": (x2 - x1) * (y2 - y1), "iscrowd": 0})
        rows.append({"image": name, "boxes": objs, "count": str(len(objs))})
    categories = [{"id": d + 1, "name": str(d)} for d in range(10)]
    (out / f"{split}.json").write_text(json.dumps({"images": images, "annotations": anns, "categories": categories}))
    (out / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


def build(mnist: str | Path, out_dir: str | Path, n_train: int = 10000, n_dev: int = 1000, n_test: int = 1000,
          seed: int = 0, canvas: int = 64, sides: tuple[int, int] = (16, 36), max_iou: float = 0.2,
          dev_pool: int = 10000) -> dict[str, int]:
    """Write the three splits under ``out_dir``; returns their image counts."""
    with np.load(mnist) as z:
        x_train, y_train, x_test, y_test = z["x_train"], z["y_train"], z["x_test"], z["y_test"]
    cut = len(x_train) - min(dev_pool, len(x_train) // 2)  # a small array file: half of it for dev
    sources = {"train": (x_train[:cut], y_train[:cut], n_train), "dev": (x_train[cut:], y_train[cut:], n_dev),
               "test": (x_test, y_test, n_test)}
    out = Path(out_dir)
    for i, (split, (x, y, n)) in enumerate(sources.items()):
        rng = np.random.default_rng(seed * 10 + i)
        write_split(out, split, [compose(rng, x, y, canvas, sides, max_iou) for _ in range(n)])
    return {split: n for split, (_, _, n) in sources.items()}
