"""MultiMNIST, built from the standard MNIST arrays with the construction of Sener & Koltun 2018.

Sener & Koltun, "Multi-Task Learning as Multi-Objective Optimization", NeurIPS 2018, section 6.1
(after Sabour et al. 2017): for each MNIST image, a second one is drawn uniformly at random from
the same split; one digit is put at the top-left and the other at the bottom-right of a larger
canvas, overlapping; the two tasks classify the top-left digit (``left``) and the bottom-right
digit (``right``). Here the canvas is 36 x 36, the left digit's corner is shifted by 0..4 pixels
down and right from (0, 0) and the right digit's by 0..4 pixels up and left from (8, 8), and the
two are overlaid by the pixel-wise maximum. (Sener & Koltun then resize to 28 x 28; polytask's
``model.image.size`` resizes at training time instead, so the files keep 36 x 36.)

Splits: ``train`` and ``dev`` from MNIST's training images (dev: the last ``n_dev`` of them, so
no digit image is in both), ``test`` from MNIST's test images. Every split is seeded. Each is
written as ``<split>.npz`` with ``image`` (N, 36, 36) uint8, ``left`` and ``right`` (N,) digits:
polytask reads it with ``columns: {label: left}`` (docs/vision.md; scripts/make_multimnist.py).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

CANVAS, DIGIT, OFFSET, SHIFT = 36, 28, 8, 4


def overlay(images: np.ndarray, labels: np.ndarray, n: int, seed: int) -> dict[str, np.ndarray]:
    """``n`` MultiMNIST examples from ``images`` (M, 28, 28) and their ``labels`` (M,)."""
    rng = np.random.default_rng(seed)
    first = rng.permutation(len(images))[:n] if n <= len(images) else rng.integers(0, len(images), n)
    second = rng.integers(0, len(images), n)  # the partner: uniform over the same split
    shifts = rng.integers(0, SHIFT + 1, (n, 4))
    out = np.zeros((n, CANVAS, CANVAS), np.uint8)  # (N, 36, 36)
    for k in range(n):
        ly, lx, ry, rx = shifts[k, 0], shifts[k, 1], OFFSET - shifts[k, 2], OFFSET - shifts[k, 3]
        out[k, ly:ly + DIGIT, lx:lx + DIGIT] = images[first[k]]
        right = out[k, ry:ry + DIGIT, rx:rx + DIGIT]
        np.maximum(right, images[second[k]], out=right)
    return {"image": out, "left": labels[first].astype(np.int64), "right": labels[second].astype(np.int64)}


def build(mnist: str | Path, out_dir: str | Path, n_train: int = 60000, n_dev: int = 10000, n_test: int = 10000,
          seed: int = 0, dev_pool: int = 10000) -> dict[str, int]:
    """Write ``train.npz``, ``dev.npz`` and ``test.npz`` under ``out_dir``; returns their sizes."""
    with np.load(mnist) as z:
        x_train, y_train, x_test, y_test = z["x_train"], z["y_train"], z["x_test"], z["y_test"]
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    cut = len(x_train) - dev_pool
    sources = {"train": (x_train[:cut], y_train[:cut], n_train), "dev": (x_train[cut:], y_train[cut:], n_dev),
               "test": (x_test, y_test, n_test)}
    sizes = {}
    for i, (split, (x, y, n)) in enumerate(sources.items()):
        arrays = overlay(x, y, n, seed * 10 + i)
        np.savez_compressed(out / f"{split}.npz", **arrays)
        sizes[split] = n
    return sizes
