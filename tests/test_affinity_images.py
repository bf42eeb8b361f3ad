"""``polytask affinity`` on image tasks (issue 28): the command line on a two-task image config
(a tiny random ResNet, tiny images written by the test), the unchanged trajectory with BatchNorm
(the lookaheads run in eval mode: no running statistic may move), and the refusals.

The tasks: ``left`` and ``right`` read the same images (tests/test_vision.py's halves: the left
half red or not, the right half green or not)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
import yaml
from safetensors.torch import load_file

from test_vision import image_config, write_split

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")

CLI = [sys.executable, "-m", "polytask.cli"]


@pytest.fixture
def image_data(tmp_path):
    write_split(tmp_path, "train", 24, 1)
    write_split(tmp_path, "dev", 8, 2)
    return tmp_path


def write_config(root, cfg: dict):
    path = root / "aff.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def test_cli_writes_the_image_tasks_affinity(image_data, tiny_cnn):
    path = write_config(image_data, image_config(image_data, tiny_cnn, max_steps=4, eval_every=4))
    out = image_data / "aff-run"
    proc = subprocess.run(CLI + ["affinity", str(path), "--every", "2", "--out", str(out), "--no-progress"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "TAG lookahead affinity" in proc.stdout and "2 lookaheads (every 2 steps)" in proc.stdout
    result = json.loads((out / "affinity.json").read_text())
    assert result["tasks"] == ["left", "right"] and result["steps"] == 4 and result["cost"]["lookaheads"] == 2
    for key in ("tag", "cosine"):
        mean = result[key]["mean"]
        assert len(mean) == 2 and all(len(row) == 2 for row in mean)
        assert all(v == v and abs(v) < float("inf") for row in mean for v in row)  # finite, not NaN
    # a cosine of a vector with itself: 1 up to float32 rounding of the (T, T) Gram matrix
    eps = torch.finfo(torch.float32).eps
    assert all(abs(result["cosine"]["mean"][i][i] - 1) <= 16 * eps for i in range(2))
    assert result["best_partner"]["left"]["partner"] == "right"
    assert (out / "affinity_tag.png").read_bytes()[:4] == b"\x89PNG"
    assert "Task affinity" in (out / "report.html").read_text()
    assert (out / "model.safetensors").is_file()  # the run folder is a complete image run


def test_lookaheads_leave_batchnorm_statistics_and_the_trajectory_unchanged(image_data, tiny_cnn):
    """The ResNet's BatchNorm layers update running statistics in training mode; the lookaheads'
    T * (T + 1) extra forward passes must not (eval mode), nor draw from the training stream."""
    from polytask.affinity.run import estimate
    from polytask.config import from_dict

    cfg = from_dict(image_config(image_data, tiny_cnn, max_steps=6, eval_every=6, log_every=2))
    with_la = estimate(cfg, every=1, out=image_data / "with", progress=False)
    estimate(cfg, every=1, out=image_data / "without", progress=False, lookaheads=False)
    assert with_la["cost"]["lookaheads"] == 6
    events = [[e["loss"] for e in _events(image_data / d)] for d in ("with", "without")]
    assert len(events[0]) == 3 and events[0] == events[1]
    weights = [load_file(image_data / d / "model.safetensors") for d in ("with", "without")]
    running = [k for k in weights[0] if "running_mean" in k or "running_var" in k]
    assert running and set(weights[0]) == set(weights[1])
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])
    assert not (image_data / "without" / "affinity.json").exists()


def _events(run_dir) -> list[dict]:
    from polytask.run_folder import RunFolder

    return RunFolder(run_dir).events("train")


def test_one_image_task_is_refused_with_the_reason(image_data, tiny_cnn):
    from polytask.affinity.run import AffinityError, estimate
    from polytask.config import from_dict

    cfg = image_config(image_data, tiny_cnn, max_steps=2)
    cfg["tasks"] = cfg["tasks"][:1]
    with pytest.raises(AffinityError, match="affinity needs at least two tasks; the config has 1"):
        estimate(from_dict(cfg), out=image_data / "one", progress=False)
    assert not (image_data / "one").exists()


def test_an_architecture_that_cannot_apply_to_images_names_the_field(image_data, tiny_cnn):
    from polytask.affinity.run import estimate
    from polytask.errors import ConfigError

    path = write_config(image_data, image_config(image_data, tiny_cnn, arch="soft", max_steps=2))
    with pytest.raises(ConfigError, match="architecture.name: soft cannot be used with model.kind=vision"):
        estimate(path, out=image_data / "soft", progress=False)
    assert not (image_data / "soft" / "affinity.json").exists()
