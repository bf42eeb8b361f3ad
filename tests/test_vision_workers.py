"""``train.workers``: image decoding and augmentation on worker processes (polytask.prefetch.
worker_pool). Batches are bit-identical to those made in-process; a CLI run with workers killed
(SIGKILL) mid-run and resumed equals an uninterrupted run without workers, step for step, and its
workers do not outlive it; the time the loop waited for data is in summary.json."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
import yaml

from polytask.preprocess import ImageInput, ImageProcessor
from polytask.prefetch import worker_pool
from polytask.tasks.base import Example
from test_vision import image_config, write_split

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


def test_worker_batches_equal_in_process_batches(tmp_path):
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 255, (14 + i, 12, 3), dtype=np.uint8) for i in range(6)]
    paths = []
    for i, img in enumerate(images[:3]):  # files and arrays
        from PIL import Image

        Image.fromarray(img).save(tmp_path / f"{i}.png")
        paths.append(str(tmp_path / f"{i}.png"))
    inputs, processor = ImageInput(), ImageProcessor(size=8, crop_scale=[0.3, 1.0], flip=True, jitter=0.4)
    feats = inputs.encode([Example({"image": x}, f"x:{i}") for i, x in enumerate(paths + images[3:])], processor)
    for f in feats:
        f["augment"] = True
    here = inputs.collate(feats)["pixel_values"]
    with worker_pool(2) as pool:
        there = inputs.collate(feats)["pixel_values"]
        pids = {p for p in pool._processes}
    assert torch.equal(here, there) and here.shape == (6, 3, 8, 8)
    assert len(pids) == 2


def run_cli(args) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "polytask.cli", "train", *map(str, args), "--no-progress"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def trajectory(run):
    events = map(json.loads, (run / "metrics.jsonl").read_text().splitlines())
    return [{k: v for k, v in e.items() if k != "elapsed"} for e in events if e["kind"] in ("train", "eval")]


def children(pid: int) -> set[int]:
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            return {int(x) for x in f.read().split()}
    except OSError:
        return set()


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except OSError:
        return False


def test_sigkill_then_resume_with_workers_equals_a_run_without(tmp_path, tiny_cnn):
    write_split(tmp_path, "train", 24, 1)
    write_split(tmp_path, "dev", 8, 2)
    cfg = image_config(tmp_path, tiny_cnn, max_steps=40, eval_every=20, checkpoint_every=10, prefetch=3)
    cfg["model"]["image"].update(flip=True, jitter=0.3, crop_scale=[0.5, 1.0])
    for name, workers in (("ref", 0), ("killed", 2)):
        (tmp_path / f"{name}.yaml").write_text(yaml.safe_dump(dict(cfg, name=name, train={**cfg["train"],
                                                                                     "workers": workers})))
    ref = run_cli([tmp_path / "ref.yaml"])
    assert ref.wait(timeout=600) == 0, ref.stderr.read()
    proc, run_dir = run_cli([tmp_path / "killed.yaml"]), tmp_path / "runs" / "killed"
    end = time.time() + 300
    while not (run_dir / "checkpoints" / "step-0000010").exists():
        assert proc.poll() is None and time.time() < end, proc.stderr.read() if proc.poll() is not None else "timeout"
        time.sleep(0.02)
    workers = children(proc.pid)
    assert proc.poll() is None and len(workers) >= 2, workers  # killed mid-run, its workers running
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    deadline = time.time() + 10
    while any(alive(w) for w in workers) and time.time() < deadline:
        time.sleep(0.1)
    assert not any(alive(w) for w in workers)  # orphaned workers exit on their own
    resumed = run_cli(["--resume", run_dir])
    _, err = resumed.communicate(timeout=600)
    assert resumed.returncode == 0, err
    assert trajectory(run_dir) == trajectory(tmp_path / "runs" / "ref") and len(trajectory(run_dir)) >= 40
    summary = json.loads((run_dir / "summary.json").read_text())
    assert 0 <= summary["data_wait_seconds"] <= summary["train_seconds"]
    assert summary["data_wait_share"] == pytest.approx(summary["data_wait_seconds"] / summary["train_seconds"])
    assert "waiting for data:" in (run_dir / "report.html").read_text()
