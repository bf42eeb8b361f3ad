"""compare --jobs N: sub-runs placed one per GPU (or one CPU thread each), a GPU reused only after
its sub-run ended. No GPU here: the placement is tested with GPU ids given as input, and the
children get them in their environment (a CPU build of torch then trains on the CPU)."""

from __future__ import annotations

import json
import threading

import pytest

from polytask.compare.plan import plan_compare
from polytask.compare.run import DeviceSlots, _train_missing, gpu_ids
from polytask.config import from_dict

from conftest import demo_tasks, tiny_config


@pytest.mark.parametrize("visible, count, expected", [
    (None, 2, ["0", "1"]),  # no CUDA_VISIBLE_DEVICES: every device torch counts
    ("", 3, ["0", "1", "2"]),
    ("3,1", 2, ["3", "1"]),  # the parent's own list, in its order
    (" 4 , 6 ,7", 2, ["4", "6"]),  # torch counted fewer than listed
    ("GPU-aa11,GPU-bb22", 2, ["GPU-aa11", "GPU-bb22"]),  # UUIDs pass through
    ("0,1", 0, []),  # no CUDA device
])
def test_gpu_ids_follow_the_parents_visible_devices(visible, count, expected):
    assert gpu_ids(visible, count) == expected


def test_jobs_are_capped_at_the_gpus_or_the_cpus():
    assert DeviceSlots(["2", "5"], jobs=4, cpus=16).jobs == 2
    assert DeviceSlots(["2", "5", "6"], jobs=2, cpus=1).jobs == 2  # GPUs, not cores, bound it
    assert DeviceSlots([], jobs=4, cpus=2).jobs == 2
    assert DeviceSlots([], jobs=0, cpus=2).jobs == 1


def test_each_concurrent_sub_run_gets_its_own_gpu_until_it_ends():
    slots = DeviceSlots(["2", "5", "6"], jobs=2, cpus=8)
    first, second = slots.take(), slots.take()
    assert (first.env, second.env) == ({"CUDA_VISIBLE_DEVICES": "2"}, {"CUDA_VISIBLE_DEVICES": "5"})
    assert first.threads == second.threads == 1 and first.name == "GPU 2"
    got = []
    waiter = threading.Thread(target=lambda: got.append(slots.take()))
    waiter.start()
    waiter.join(0.2)
    assert waiter.is_alive() and not got  # both GPUs busy: the third sub-run waits
    slots.give_back(second)
    waiter.join(5)
    assert got[0].env == {"CUDA_VISIBLE_DEVICES": "5"}  # the GPU that was given back, not GPU 6 (beyond jobs)


def test_cpu_slots_and_a_single_job():
    cpu = DeviceSlots([], jobs=2, cpus=2)
    a, b = cpu.take(), cpu.take()
    assert (a.env, a.threads, b.threads) == ({}, 1, 1) and {a.name, b.name} == {"CPU thread group 0",
                                                                                 "CPU thread group 1"}
    one = DeviceSlots(["0", "1"], jobs=1, cpus=2).take()
    assert (one.env, one.threads) == ({}, None)  # alone: it sees every GPU, torch's default threads


def test_sub_runs_train_with_the_gpu_they_were_placed_on(tiny_backbone, tmp_path):
    """Two isolated sub-runs at once on two (given) GPU ids: each child's environment names its
    own, and the echo says where each went."""
    raw = tiny_config(tiny_backbone, tmp_path, max_steps=4, batch_size=8, eval_every=2, log_every=2, num_threads=1)
    raw["name"] = "placed"
    raw["tasks"] = demo_tasks(n_train=32, n_eval=8)[:1]
    raw["compare"] = {"budget": "steps", "jobs": 2, "inference_examples": 0}
    plan = plan_compare(from_dict(raw))
    assert len(plan.runs) == 2  # single-task and the multi-task method
    lines: list[str] = []
    _train_missing(plan, isolate=True, progress=False, echo=lines.append, slots=DeviceSlots(["5", "7"], 2, 2))
    placed = {json.loads((r.run_dir / "resources.json").read_text())["cuda_visible_devices"] for r in plan.runs}
    assert placed == {"5", "7"}
    assert "training up to 2 sub-runs at once, one GPU each (of 5, 7)" in lines
    assert sum("training on GPU 5" in line or "training on GPU 7" in line for line in lines) == 2


@pytest.mark.parametrize("extra, missing", [(["--executor", "ray"], "--executor ray needs Ray"),
                                            (["compare.search.trials=2", "compare.search.space.train.lr=[0.001,0.01]"],
                                             "compare.search needs Optuna")])
def test_without_the_ray_extra_the_cli_says_what_to_install(tiny_backbone, tmp_path, extra, missing):
    """A Python where ray and optuna do not import (as without `pip install polytask[ray]`): the
    real CLI names the extra to install, before anything trains."""
    import subprocess
    import sys

    import yaml

    raw = tiny_config(tiny_backbone, tmp_path, max_steps=2, batch_size=8, eval_every=2, log_every=2)
    raw["tasks"] = demo_tasks(n_train=16, n_eval=8)[:1]
    raw["compare"] = {"budget": "steps", "inference_examples": 0}
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(raw))
    hide = "import sys; sys.modules['ray'] = sys.modules['optuna'] = None; from polytask.cli import app; app()"
    done = subprocess.run([sys.executable, "-c", hide, "compare", str(tmp_path / "c.yaml"), *extra],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 2 and missing in done.stderr and "pip install 'polytask[ray]'" in done.stderr, done.stderr
    assert not list(tmp_path.glob("tiny/*/*/*/summary.json"))  # nothing trained
