"""Plain helpers shared by the image test files (fixtures stay in the test files and conftest)."""

from __future__ import annotations

from pathlib import Path
from typing import Callable


def save_random_resnet(path: Path) -> str:
    """A random two-stage ResNet (8 and 16 channels, seed 0) saved as a Hugging Face folder at
    ``path``; returns the path as the config's ``model.backbone``."""
    import torch
    from transformers import ResNetConfig, ResNetModel

    torch.manual_seed(0)
    ResNetModel(ResNetConfig(embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1])).save_pretrained(path)
    return str(path)


def train_tiny_image_run(root: Path, write_split: Callable, make_config: Callable[[str], dict],
                         n_train: int, n_dev: int) -> Path:
    """Write ``n_train`` / ``n_dev`` examples with ``write_split(root, split, n, seed)`` (seeds 1
    and 2), save a random ResNet under ``root/cnn``, train ``make_config(backbone)`` on it and
    return the run folder (the server and export tests' tiny trained runs)."""
    from polytask.config import from_dict
    from polytask.train import train

    backbone = save_random_resnet(root / "cnn")
    write_split(root, "train", n_train, 1)
    write_split(root, "dev", n_dev, 2)
    return train(from_dict(make_config(backbone)), progress=False)
