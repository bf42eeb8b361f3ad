"""Confidence intervals for the comparison, and the verdict they support.

A paired bootstrap (Efron & Tibshirani, "An Introduction to the Bootstrap", 1993; for NLP
comparisons, Koehn, "Statistical Significance Tests for Machine Translation Evaluation", EMNLP
2004): each resample draws the seeds with replacement and, per task, the test examples with
replacement, the *same* examples for the multi-task model and the single-task baseline of each
drawn seed (paired). On every resample the task's main metric is recomputed for both, giving the
relative change per task and Delta-m (the same formulas as the point estimates,
:func:`polytask.compare.stats.relative_changes` and ``delta_m_defined``). The 2.5th and 97.5th
percentiles over resamples are the 95% interval.

The verdict comes from the interval, not from the point estimate: **helped** when Delta-m's
whole interval is above 0, **hurt** when it is below 0, else **no measurable difference**.

Needs each sub-run's per-example test predictions (``predictions/test.json``, written by
``train`` since this module exists); runs without them get no interval. Cost: ``resamples`` x
tasks x models metric evaluations (seqeval for tagging is the slowest part); default 200.
"""

from __future__ import annotations

import random
from typing import Any

from polytask.compare.plan import SINGLE, Plan
from polytask.compare.stats import delta_m_defined, relative_changes

RESAMPLES = 200
LEVEL = 0.95


def verdict(interval: list[float] | None) -> str:
    """``helped`` / ``hurt`` / ``no measurable difference`` from a Delta-m interval (in %)."""
    if interval is None:
        return "no interval (predictions missing)"
    low, high = interval
    if low > 0:
        return "helped"
    if high < 0:
        return "hurt"
    return "no measurable difference"


def percentile_interval(values: list[float], level: float = LEVEL) -> list[float]:
    """The central ``level`` interval of ``values`` (nearest-rank percentiles)."""
    ordered = sorted(values)
    tail = (1.0 - level) / 2.0
    lo = ordered[min(len(ordered) - 1, max(0, int(tail * len(ordered))))]
    hi = ordered[min(len(ordered) - 1, max(0, int((1.0 - tail) * len(ordered)) - 1))]
    return [lo, hi]


class Scorer:
    """The main metric of each task on a subset of one model's test predictions."""

    def __init__(self, plan: Plan):
        from polytask.tasks import build_task

        self.tasks = {tc.name: build_task(tc) for tc in plan.cfg.tasks}
        self.vocab_loaded: set[str] = set()

    def load_vocab(self, name: str, folder) -> None:
        if name not in self.vocab_loaded:  # label order: the binary F1's positive class
            self.tasks[name].load_vocab_state(folder.read_vocab()[name])
            self.vocab_loaded.add(name)

    def score(self, name: str, preds: list, refs: list, idx: list[int]) -> float:
        task = self.tasks[name]
        return task.metrics([preds[i] for i in idx], [refs[i] for i in idx])[task.main_metric]


def load_predictions(plan: Plan, method: str, seeds: list[int], scorer: Scorer) -> dict[int, dict] | None:
    """``{seed: {task: {"predictions", "references"}}}`` of one model (the T single-task runs for
    SINGLE), or None if any run lacks its test predictions."""
    out: dict[int, dict] = {}
    for seed in seeds:
        got: dict[str, Any] = {}
        for run in plan.select(method, seed):
            preds = run.folder.read_predictions("test") if run.finished else None
            if preds is None:
                return None
            for name in preds:
                scorer.load_vocab(name, run.folder)
            got.update(preds)
        if set(got) != set(plan.tasks):
            return None
        out[seed] = got
    return out


def bootstrap(plan: Plan, method: str, hib: dict[str, bool], resamples: int = RESAMPLES,
              seed: int = 0) -> dict[str, Any] | None:
    """Intervals of Delta-m and of each task's relative change (test), and the verdict."""
    scorer = Scorer(plan)
    mtl = load_predictions(plan, method, plan.seeds, scorer)
    single = load_predictions(plan, SINGLE, plan.seeds, scorer)
    if mtl is None or single is None:
        return None
    rng = random.Random(seed)
    dms, rels = [], {t: [] for t in plan.tasks}
    for _ in range(resamples):
        drawn = [rng.choice(plan.seeds) for _ in plan.seeds]
        m_scores: dict[str, list[float]] = {t: [] for t in plan.tasks}
        s_scores: dict[str, list[float]] = {t: [] for t in plan.tasks}
        for s in drawn:
            for t in plan.tasks:
                n = len(mtl[s][t]["references"])
                idx = [rng.randrange(n) for _ in range(n)]  # the same examples for both models: paired
                m_scores[t].append(scorer.score(t, mtl[s][t]["predictions"], mtl[s][t]["references"], idx))
                s_scores[t].append(scorer.score(t, single[s][t]["predictions"], single[s][t]["references"], idx))
        m_mean = {t: sum(v) / len(v) for t, v in m_scores.items()}
        s_mean = {t: sum(v) / len(v) for t, v in s_scores.items()}
        dms.append(delta_m_defined(m_mean, s_mean, hib)[0])
        for t, rc in relative_changes(m_mean, s_mean, hib).items():
            rels[t].append(rc)
    interval = percentile_interval([d for d in dms if d == d]) if any(d == d for d in dms) else None
    return {"resamples": resamples, "level": LEVEL, "delta_m": interval, "verdict": verdict(interval),
            "per_task": {t: percentile_interval(finite) for t, v in rels.items() if (finite := [x for x in v if x == x])}}


__all__ = ["RESAMPLES", "bootstrap", "percentile_interval", "verdict"]
