"""Accounting: what each finished sub-run trained on, and how fast.

The examples and tokens a sub-run trained on are replayed exactly with
:func:`polytask.draws.replay` -- the same draws the trainer makes (seeded sampler and batch
streams, pure functions of the seed) -- for the steps the run took, early stopping included.
Training throughput is measured on the intervals between log events that contain no evaluation
or checkpoint, so it is the speed of training itself. Events, summary and resources are read
through :class:`polytask.run_folder.RunFolder`.
"""

from __future__ import annotations

import math
from typing import Any

from polytask import draws
from polytask.compare.plan import SubRun, weighting_class
from polytask.compare.prepared import Prepared
from polytask.config import Config


def train_lengths(cfg: Config, prepared: Prepared | None = None) -> dict[str, list[int]]:
    """Token count of every training example of every task, as ``train`` encodes them.

    From ``prepared`` (the comparison's data, read once); without it, the data is read here.
    """
    return (prepared or Prepared(cfg, splits=("train",))).train_lengths(cfg)


def replay(cfg: Config, lengths: dict[str, list[int]], steps: int, rows: dict[str, list[int]] | None = None,
           caps: dict[str, int] | None = None) -> dict[str, Any]:
    """Examples and tokens per task per step that ``train`` drew in its first ``steps`` steps.

    Delegates to :func:`polytask.draws.replay` (what the trainer draws); ``rows`` and ``caps``:
    the tasks that cap their rows per batch (:meth:`Prepared.train_rows`). Returns the task names
    and per-step lists ``examples[step][task_index]`` and ``tokens[step][task_index]``.
    """
    ordered = {tc.name: lengths[tc.name] for tc in cfg.tasks}  # stream seeds follow the config's task order
    return draws.replay(cfg, ordered, steps, all_tasks=weighting_class(cfg.weighting.name).needs_all_tasks,
                        rows=rows, max_rows=caps)


def steps_done(summary: dict, events: list[dict]) -> int:
    if "steps" in summary:
        return int(summary["steps"])
    return max((e.get("step", 0) for e in events if e.get("kind") in ("train", "eval")), default=0)


def throughput(events: list[dict], per_step_examples: list[int], per_step_tokens: list[int],
               train_seconds: float, pause_steps: set[int] | frozenset[int] = frozenset()) -> dict[str, Any]:
    """Training samples/s and tokens/s on the log intervals with no evaluation in them.

    A train event at step s is logged before that step's evaluation (and checkpoint), so the
    interval between the events at s1 and s2 contains the evaluations at steps s1 <= e < s2.
    ``pause_steps``: further steps after which the trainer paused (checkpoints).
    """
    evals = sorted({e["step"] for e in events if e.get("kind") == "eval"} | set(pause_steps))
    points = [(0, 0.0)] + sorted((e["step"], e["elapsed"]) for e in events
                                 if e.get("kind") == "train" and "elapsed" in e)
    n_ex = n_tok = 0
    secs = 0.0
    for (s1, t1), (s2, t2) in zip(points, points[1:]):
        if s2 <= s1 or t2 <= t1 or any(s1 <= e < s2 for e in evals):
            continue
        n_ex += sum(per_step_examples[s1:s2])
        n_tok += sum(per_step_tokens[s1:s2])
        secs += t2 - t1
    if secs > 0:
        return {"samples_per_s": n_ex / secs, "tokens_per_s": n_tok / secs, "measured_seconds": secs,
                "method": "log intervals without evaluation"}
    total = train_seconds or math.nan
    return {"samples_per_s": sum(per_step_examples) / total, "tokens_per_s": sum(per_step_tokens) / total,
            "measured_seconds": total, "method": "whole training loop (includes evaluation)"}


def account(run: SubRun, prepared: Prepared | None = None) -> dict[str, Any]:
    """Everything measured about one finished sub-run."""
    folder = run.folder
    summary = folder.read_summary()
    events = folder.events()
    steps = steps_done(summary, events)
    prepared = prepared or Prepared(run.cfg, splits=("train",))
    rep = replay(run.cfg, train_lengths(run.cfg, prepared), steps, *prepared.train_rows(run.cfg))
    names = rep["tasks"]
    every = run.cfg.train.checkpoint_every or run.cfg.train.eval_every
    speed = throughput(events, [sum(row) for row in rep["examples"]], [sum(row) for row in rep["tokens"]],
                       summary.get("train_seconds", math.nan), set(range(every, steps + 1, every)))
    return {"summary": summary, "resources": folder.read_resources(), "steps": steps,
            "examples_seen": _per_task(rep["examples"], names), "tokens_seen": _per_task(rep["tokens"], names),
            "throughput": speed, "curve": _curve(rep, events, steps), "budget": run.budget}


def _per_task(rows: list[list[int]], names: list[str]) -> dict[str, int]:
    return {n: sum(row[j] for row in rows) for j, n in enumerate(names)}


def _curve(rep: dict[str, Any], events: list[dict], steps: int) -> list[dict[str, Any]]:
    """The dev main metric of every evaluation against the examples of each task seen so far."""
    names = rep["tasks"]
    cum = {n: [0] for n in names}
    for row in rep["examples"]:
        for j, n in enumerate(names):
            cum[n].append(cum[n][-1] + row[j])
    return [{"step": e["step"], "examples": {n: cum[n][min(e["step"], steps)] for n in names},
             "main": e.get("main", {})} for e in events if e.get("kind") == "eval"]
