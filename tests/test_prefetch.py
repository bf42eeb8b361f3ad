"""Batches collated ahead on a thread (``train.prefetch``, src/polytask/prefetch.py): the same
training to the bit, exact resume, faults and errors reported as without it, no thread left."""

from __future__ import annotations

import json
import threading
import time
import traceback

import pytest
import torch

import polytask.train as train_module
from polytask.batching import BatchStream
from polytask.config import from_dict
from polytask.draws import StepDraws
from polytask.errors import ConfigError
from polytask.prefetch import Lookahead, Prefetcher, pins_memory
from polytask.sampling import build_sampler
from polytask.tasks.classification import ClassificationTask
from polytask.train import NonFiniteError, fork_draws, train

from conftest import tiny_config


def trajectory(run_dir) -> list[dict]:
    """Every train, eval and nonfinite event, without wall-clock fields."""
    events = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    kept = ("train", "eval", "nonfinite")
    return [{k: v for k, v in e.items() if k != "elapsed"} for e in events if e["kind"] in kept]


def prefetch_threads() -> list[str]:
    return [t.name for t in threading.enumerate() if t.name == "polytask-prefetch"]


@pytest.fixture
def lookaheads(monkeypatch) -> list[Lookahead]:
    """Every Lookahead the trainer builds, kept to read its counters after the run."""
    made: list[Lookahead] = []

    class Kept(Lookahead):
        def __init__(self, *a, **k):
            super().__init__(*a, **k)
            made.append(self)

    monkeypatch.setattr(train_module, "Lookahead", Kept)
    return made


def run(cfg: dict, name: str) -> tuple[list[dict], bytes]:
    """The run's logged trajectory (losses of every step, to the last bit) and its best weights."""
    run_dir = train(from_dict(dict(cfg, name=name)), progress=False)
    return trajectory(run_dir), (run_dir / "model.safetensors").read_bytes()


def two_tasks(backbone, out_dir, **train_args) -> dict:
    cfg = tiny_config(backbone, out_dir, **{"max_steps": 10, "eval_every": 5, "log_every": 1, "batch_size": 8,
                                            **train_args})
    cfg["tasks"] = cfg["tasks"][1:3]  # topic + similarity
    return cfg


# ---------------------------------------------------------------------------------------------
# the trainer with and without prefetching


@pytest.mark.parametrize("components", [
    {"weighting": {"name": "upgrad"}},  # a gradient method: every task in every micro-step
    {"sampling": {"name": "temperature"}},  # one task per step, drawn by the sampler
], ids=["upgrad", "one-task-per-step"])
def test_prefetch_trains_bit_identically(tiny_backbone, tmp_path, lookaheads, components):
    cfg = {**two_tasks(tiny_backbone, tmp_path, grad_accum=2), **components}
    off = run({**cfg, "train": {**cfg["train"], "prefetch": 0}}, "off")
    on = run({**cfg, "train": {**cfg["train"], "prefetch": 2}}, "on")
    assert on[0] == off[0] and len(on[0]) == 12  # 10 train events, 2 evaluations
    assert on[1] == off[1]
    without, with_ = lookaheads
    assert without.made_here == 20  # 10 steps x 2 micro-steps, each collated when needed
    assert with_.made_here == 0  # every batch came from the thread
    assert with_.waited > 0 and not prefetch_threads()


def test_resume_after_prefetching_neither_skips_nor_repeats(tiny_backbone, tmp_path):
    """A run stopped after step 6 (its thread had drawn ahead) and resumed equals one run of 12."""
    cfg = two_tasks(tiny_backbone, tmp_path, grad_accum=2, schedule="constant", warmup_ratio=0.0,
                    max_steps=12, eval_every=6, prefetch=3)
    straight, _ = run(cfg, "straight")
    first = from_dict(dict(cfg, name="parts", train={**cfg["train"], "max_steps": 6}))
    run_dir = train(first, progress=False)
    train(resume=run_dir, overrides=["train.max_steps=12"], progress=False)
    assert trajectory(run_dir) == straight


def nan_config(backbone, out_dir, prefetch: int) -> dict:
    cfg = tiny_config(backbone, out_dir, max_steps=8, eval_every=8, log_every=1, batch_size=8, grad_accum=2,
                      prefetch=prefetch)
    cfg["tasks"] = [dict(cfg["tasks"][1], type="nan_task:NaNTask")]
    return cfg


def test_a_step_cut_short_by_a_fault_is_reported_and_trained_as_without_prefetch(tiny_backbone, tmp_path,
                                                                                 lookaheads, monkeypatch):
    """Loss call 5 (step 2, micro-step 0) is NaN: that step ends there, so the thread's batches
    for micro-step 1 are not the ones drawn next; the step after is collated on the main thread."""
    monkeypatch.setenv("POLYTASK_TEST_NAN_CALLS", "5")
    off = run(nan_config(tiny_backbone, tmp_path, 0), "off")
    on = run(nan_config(tiny_backbone, tmp_path, 2), "on")
    assert on == off
    faults = [e for e in on[0] if e["kind"] == "nonfinite"]
    assert [(e["step"], e["task"]) for e in faults] == [(3, "topic")]  # the step counter after step 2
    assert faults[0]["first_example"].startswith("synthetic:topic:train:")
    assert lookaheads[1].made_here == 1  # the first micro-step after the fault; the thread restarted from it


class BrokenCollate(ClassificationTask):
    """Classification whose 7th training collation raises (an error on the prefetch thread)."""

    type_name = "broken-collate-test"

    def __init__(self, cfg):
        super().__init__(cfg)
        self.calls = 0

    def collate(self, feats, pad_id):
        self.calls += 1
        if self.calls == 7:
            raise RuntimeError("collate broke on call 7")
        return super().collate(feats, pad_id)


def test_an_error_on_the_thread_is_raised_in_the_trainer_with_its_traceback(tiny_backbone, tmp_path):
    cfg = tiny_config(tiny_backbone, tmp_path, max_steps=20, eval_every=20, batch_size=8, prefetch=2)
    cfg["tasks"] = [dict(cfg["tasks"][1], type="test_prefetch:BrokenCollate")]
    with pytest.raises(RuntimeError, match="collate broke on call 7") as info:
        train(from_dict(cfg), progress=False)
    frames = [f.name for f in traceback.extract_tb(info.value.__traceback__)]
    assert "train_step" in frames and frames[-1] == "collate"  # where the trainer asked, and where it failed
    assert not prefetch_threads()


def test_the_thread_ends_with_a_run_that_stops_on_a_fault(tiny_backbone, tmp_path, monkeypatch):
    monkeypatch.setenv("POLYTASK_TEST_NAN_CALLS", "3")
    with pytest.raises(NonFiniteError, match="non-finite loss in task 'topic' at step 2"):
        train(from_dict(dict(nan_config(tiny_backbone, tmp_path, 4), train={
            **nan_config(tiny_backbone, tmp_path, 4)["train"], "on_nonfinite": "stop"})), progress=False)
    assert not prefetch_threads()


def test_prefetch_setting_is_checked(tiny_backbone, tmp_path):
    with pytest.raises(ConfigError, match=r"train.prefetch: must be >= 0, got -1"):
        from_dict(tiny_config(tiny_backbone, tmp_path, prefetch=-1))
    assert from_dict(tiny_config(tiny_backbone, tmp_path)).train.prefetch == 2


# ---------------------------------------------------------------------------------------------
# the pieces


@pytest.mark.parametrize("device, ahead, expected", [
    ("cuda", 2, True), ("cuda:1", 1, True), ("cuda", 0, False), ("cpu", 2, False), ("mps", 2, False),
    (torch.device("cuda", 0), 1, True), (torch.device("cpu"), 1, False),
])
def test_batches_are_pinned_only_when_made_ahead_for_a_cuda_device(device, ahead, expected):
    assert pins_memory(device, ahead) is expected


def test_prefetcher_keeps_order_and_at_most_ahead_waiting():
    made: list[int] = []

    def make(job):
        made.append(job)
        return job * job

    prefetcher = Prefetcher(iter(range(6)), make, ahead=2)
    try:
        deadline = time.monotonic() + 5
        while len(made) < 3 and time.monotonic() < deadline:
            time.sleep(0.01)
        time.sleep(0.1)
        assert made == [0, 1, 2]  # 2 waiting in the queue, the third held until there is room
        got = [prefetcher.next() for _ in range(7)]
    finally:
        prefetcher.close()
    assert got == [(i, i * i, False) for i in range(6)] + [None]
    assert not prefetcher.alive


def test_the_thread_runs_torch_ops_on_one_thread_and_leaves_the_steps_threads_alone():
    """A second OpenMP team of the step's size on the prefetch thread spin-waited on the step's
    cores (benchmarks/vision_throughput.py: 0.67x a plain loop at 224 px on 2 cores)."""
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        fetcher = Prefetcher(iter(range(3)), lambda _: torch.get_num_threads(), ahead=2)
        seen = [fetcher.next()[1] for _ in range(3)]
        fetcher.close()
        assert seen == [1, 1, 1]
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)


def test_prefetcher_close_stops_a_thread_waiting_for_room():
    prefetcher = Prefetcher(iter(range(10**6)), lambda job: job, ahead=1)
    time.sleep(0.05)
    prefetcher.close()
    assert not prefetcher.alive


def real_draws(all_tasks: bool) -> StepDraws:
    lengths = {"a": [3, 5, 2, 8, 4, 6, 7], "b": [1, 2, 3, 4, 5]}
    sampler = build_sampler("proportional", list(lengths), [7, 5], seed=4)
    return StepDraws(sampler, lengths, batch_size=2, seed=4, max_steps=6, all_tasks=all_tasks)


@pytest.mark.parametrize("all_tasks", [True, False])
def test_lookahead_hands_over_the_batches_of_the_draws_the_main_thread_makes(all_tasks):
    """Three micro-steps per step; step 1 is cut short after its first micro-step."""
    draws = real_draws(all_tasks)
    reference = real_draws(all_tasks)  # the same draws, without any lookahead
    made_on: list[str] = []

    def make(indices):
        made_on.append(threading.current_thread().name)
        return {n: [i * 10 for i in idx] for n, idx in indices.items()}

    with Lookahead(make, lambda: fork_draws(draws), ahead=2, grad_accum=3, max_steps=6).start(0) as feed:
        for step in range(6):
            for micro in range(1 if step == 1 else 3):
                indices = draws.next(step)
                assert indices == reference.next(step)
                assert feed.batches(step, micro, indices) == {n: [i * 10 for i in idx] for n, idx in indices.items()}
        assert feed.made_here == 1  # step 2's first micro-step, after step 1 was cut short
    assert not feed.running
    assert draws.state_dict() == reference.state_dict()  # the lookahead never moved the real draws
    assert made_on.count("MainThread") == 1 and len(made_on) >= 16


def test_fork_draws_shares_lengths_and_nothing_that_moves():
    draws = real_draws(all_tasks=False)
    draws.next(0)
    fork = fork_draws(draws)
    assert fork.lengths is draws.lengths and fork.streams["a"].lengths is draws.lengths["a"]
    assert fork.sampler.generator is not draws.sampler.generator
    assert [fork.next(s) for s in range(1, 5)] == [draws.next(s) for s in range(1, 5)]
    assert isinstance(fork.streams["a"], BatchStream)
