"""Plain helpers shared by the image test files (fixtures stay in the test files and conftest)."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np


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
    write_splits(root, write_split, n_train, n_dev)
    return train(from_dict(make_config(backbone)), progress=False)


def write_jsonl(path: Path, rows: list[dict]) -> None:
    """Write ``rows`` to ``path`` as JSON lines, one object a line."""
    import json

    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def save_image(root: Path, name: str, img, mask=None) -> None:
    """Save the (H, W, 3) uint8 array ``img`` as ``root/<name>.png`` and, when given, the (H, W)
    uint8 ``mask`` as ``root/<name>_mask.png``."""
    from PIL import Image

    Image.fromarray(img).save(root / f"{name}.png")
    if mask is not None:
        Image.fromarray(mask).save(root / f"{name}_mask.png")


def write_splits(root: Path, write_split: Callable, n_train: int, n_dev: int) -> Path:
    """Write ``n_train`` train and ``n_dev`` dev examples with ``write_split(root, split, n, seed)``
    (seeds 1 and 2); returns ``root`` (the data fixtures' body)."""
    write_split(root, "train", n_train, 1)
    write_split(root, "dev", n_dev, 2)
    return root


def vision_config(name: str, root: Path, backbone: str, image: dict, tasks: list[dict], arch: str, weighting: str,
                  *, max_steps: int, batch_size: int, eval_every: int, lr: float, log_every: int, train: dict,
                  **top) -> dict:
    """A config dict for an image run on ``backbone`` reading ``root`` and writing ``root/runs``:
    constant schedule, no warm-up, fp32; ``train`` overrides or adds train keys, ``top`` adds
    top-level keys (after ``data_dir``), such as ``seed``."""
    return {
        "name": name, "output_dir": str(root / "runs"), "data_dir": str(root), **top,
        "model": {"kind": "vision", "backbone": backbone, "image": image},
        "architecture": {"name": arch}, "weighting": {"name": weighting},
        "train": {"max_steps": max_steps, "batch_size": batch_size, "eval_every": eval_every, "lr": lr,
                  "warmup_ratio": 0.0, "log_every": log_every, "schedule": "constant", "mixed_precision": "no",
                  **train},
        "tasks": tasks,
    }


def start_cli_train(args: list):
    """Start ``python -m polytask.cli train ARGS --no-progress`` as a subprocess (pipes for
    stdout and stderr, text mode); returns the ``Popen``."""
    import subprocess
    import sys

    return subprocess.Popen([sys.executable, "-m", "polytask.cli", "train", *map(str, args), "--no-progress"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def trajectory(run: Path) -> list[dict]:
    """The train and eval events of ``run/metrics.jsonl`` without their ``elapsed`` times (what
    an exact resume must reproduce)."""
    import json

    events = map(json.loads, (run / "metrics.jsonl").read_text().splitlines())
    return [{k: v for k, v in e.items() if k != "elapsed"} for e in events if e["kind"] in ("train", "eval")]


def wait_for_path(proc, path: Path, seconds: float = 300) -> None:
    """Poll until ``path`` exists, asserting that ``proc`` is still running (its stderr as the
    message) and that ``seconds`` have not passed."""
    import time

    end = time.time() + seconds
    while not path.exists():
        assert proc.poll() is None and time.time() < end, proc.stderr.read() if proc.poll() is not None else "timeout"
        time.sleep(0.02)


def assert_sigkill_then_resume_is_exact(ref_yaml: Path, killed_yaml: Path, runs: Path, checkpoint: str,
                                        alive_at_kill: bool = False) -> None:
    """Train ``ref_yaml`` through the CLI; start ``killed_yaml``, SIGKILL it once its
    ``checkpoints/<checkpoint>`` exists (first asserting it is still running, when
    ``alive_at_kill``), resume it, and assert that its trajectory equals the reference's. The runs
    are ``runs/ref`` and ``runs/killed``."""
    import signal

    ref = start_cli_train([ref_yaml])
    assert ref.wait(timeout=600) == 0, ref.stderr.read()
    proc, run_dir = start_cli_train([killed_yaml]), runs / "killed"
    wait_for_path(proc, run_dir / "checkpoints" / checkpoint)
    if alive_at_kill:
        assert proc.poll() is None  # killed mid-run
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    resumed = start_cli_train(["--resume", run_dir])
    _, err = resumed.communicate(timeout=600)
    assert resumed.returncode == 0, err
    assert trajectory(run_dir) == trajectory(runs / "ref")


def halves(a: int, b: int, size: int = 20) -> np.ndarray:
    """An image whose left half is red when a, right half green when b (two learnable tasks)."""
    img = np.full((size, size, 3), 30, np.uint8)  # (H, W, 3)
    img[:, : size // 2, 0] = 255 if a else 30
    img[:, size // 2:, 1] = 255 if b else 30
    return img


def write_halves_split(root, split: str, n: int, seed: int) -> None:
    """``n`` :func:`halves` images of ``split`` and their rows (tasks ``left`` and ``right``)."""
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        a, b = int(rng.integers(2)), int(rng.integers(2))
        save_image(root, f"{split}{i}", halves(a, b))
        rows.append({"path": f"{split}{i}.png", "left": str(a), "right": str(b)})
    write_jsonl(root / f"{split}.jsonl", rows)
