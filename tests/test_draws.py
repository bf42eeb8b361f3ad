"""StepDraws: the one source of what each step trains on, shared by the trainer and compare."""

from __future__ import annotations

import pytest

from conftest import demo_tasks, tiny_config
from polytask.config import from_dict
from polytask.draws import StepDraws, replay
from polytask.run_folder import RunFolder
from polytask.sampling import build_sampler

LENGTHS = {"a": [3, 5, 7, 9, 11, 13, 15], "b": [2, 4, 6]}


def draws(all_tasks: bool, seed: int = 0) -> StepDraws:
    sampler = build_sampler("proportional", list(LENGTHS), [7, 3], seed)
    return StepDraws(sampler, LENGTHS, batch_size=2, seed=seed, max_steps=10, all_tasks=all_tasks)


def test_all_tasks_draws_every_task_and_counts_examples_and_tokens():
    d = draws(all_tasks=True)
    first = d.next(0)
    assert list(first) == ["a", "b"] and all(1 <= len(v) <= 2 for v in first.values())
    assert d.examples == {n: len(v) for n, v in first.items()}
    assert d.tokens == {n: sum(LENGTHS[n][i] for i in first[n]) for n in LENGTHS}


def test_one_epoch_covers_every_example_once():
    d = draws(all_tasks=True)
    seen = [i for _ in range(4) for i in d.next(0)["a"]]  # 7 examples in batches of 2: 4 batches
    assert sorted(seen) == list(range(7))
    assert d.examples["a"] == 7


def test_state_dict_resumes_the_same_draws():
    d = draws(all_tasks=False, seed=5)
    for step in range(3):
        d.next(step)
    state = d.state_dict()
    expected = [d.next(step) for step in range(3, 9)]
    resumed = draws(all_tasks=False, seed=5)
    resumed.load_state_dict(state)
    assert [resumed.next(step) for step in range(3, 9)] == expected
    assert resumed.examples == d.examples and resumed.tokens == d.tokens


def test_probes_do_not_change_training_draws():
    a, b = draws(all_tasks=False, seed=1), draws(all_tasks=False, seed=1)
    for step in range(6):
        b.probe("a")
        b.probe("b")
        assert a.next(step) == b.next(step)


@pytest.mark.parametrize("weighting, accum", [("equal", 2), ("pcgrad", 1)])
def test_draws_logged_by_a_real_run_equal_the_replay(tiny_backbone, tmp_path, weighting, accum):
    """The examples and tokens a real run logs at each step equal the accounting's replay
    (compare's, which uses the same StepDraws) summed up to that step."""
    from polytask.compare import replay as compare_replay, train_lengths
    from polytask.train import train

    raw = tiny_config(tiny_backbone, tmp_path, max_steps=12, batch_size=8, eval_every=6, log_every=3,
                      grad_accum=accum)
    raw["tasks"] = demo_tasks(n_train=40, n_eval=8)[:3]
    raw["sampling"] = {"name": "annealed"}
    raw["weighting"] = {"name": weighting}
    cfg = from_dict(raw)
    events = RunFolder(train(cfg, progress=False)).events("train")
    assert [e["step"] for e in events] == [3, 6, 9, 12]
    rep = compare_replay(cfg, train_lengths(cfg), 12)
    direct = replay(cfg, train_lengths(cfg), 12, all_tasks=weighting == "pcgrad")
    assert rep == direct
    for e in events:
        for j, name in enumerate(rep["tasks"]):
            assert e["examples"][name] == sum(row[j] for row in rep["examples"][: e["step"]])
            assert e["tokens"][name] == sum(row[j] for row in rep["tokens"][: e["step"]])
    total = sum(events[-1]["examples"].values())
    assert total == 12 * accum * 8 * (3 if weighting == "pcgrad" else 1)
