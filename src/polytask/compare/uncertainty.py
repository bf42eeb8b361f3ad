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
whole interval is above 0, **hurt** when it is below 0, else **no measurable difference**. When
a task's single-task baseline is near chance (:mod:`polytask.compare.chance`), the verdict is
read from the interval of Delta-m *without* such tasks, so that one near-zero baseline cannot
carry it; the chance-corrected gain gets its interval too (chance levels fixed from the whole
split, not re-estimated per resample).

Needs each sub-run's per-example test predictions (``predictions/test.json``, written by
``train`` since this module exists); runs without them get no interval. Cost: ``resamples`` x
tasks x models metric evaluations (seqeval for tagging is the slowest part); default 200.
"""

from __future__ import annotations

import random
from typing import Any

from polytask.compare.chance import chance_level, gain
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


def _interval(values: list[float]) -> list[float] | None:
    finite = [v for v in values if v == v]
    return percentile_interval(finite) if finite else None


def _verdict_source(dm, without, gains, flagged, kept) -> dict[str, Any]:
    """Which interval the verdict reads: Delta-m; without near-chance tasks when some are; the
    chance-corrected gain when every task is near chance."""
    if not flagged:
        return {"verdict": verdict(dm), "verdict_from": "Delta-m"}
    if kept:
        return {"verdict": verdict(without), "verdict_from": "Delta-m without near-chance tasks"}
    return {"verdict": verdict(gains), "verdict_from": "chance-corrected gain (every task near chance)"}


def bootstrap(plan: Plan, method: str, hib: dict[str, bool], resamples: int = RESAMPLES, seed: int = 0,
              chance: dict[str, float] | None = None, flagged: list[str] | tuple = ()) -> dict[str, Any] | None:
    """Intervals of Delta-m, of Delta-m without the ``flagged`` (near-chance) tasks, of the
    chance-corrected gain (with ``chance`` levels) and of each task's relative change (test), and
    the verdict."""
    scorer = Scorer(plan)
    mtl = load_predictions(plan, method, plan.seeds, scorer)
    single = load_predictions(plan, SINGLE, plan.seeds, scorer)
    if mtl is None or single is None:
        return None
    rng = random.Random(seed)
    kept = [t for t in plan.tasks if t not in flagged]
    dms, dms_kept, gains, rels = [], [], [], {t: [] for t in plan.tasks}
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
        if flagged and kept:
            dms_kept.append(delta_m_defined({t: m_mean[t] for t in kept}, {t: s_mean[t] for t in kept}, hib)[0])
        if chance:
            gains.append(gain(m_mean, s_mean, chance, hib))
        for t, rc in relative_changes(m_mean, s_mean, hib).items():
            rels[t].append(rc)
    interval, without = _interval(dms), _interval(dms_kept)
    return {"resamples": resamples, "level": LEVEL, "delta_m": interval, "delta_m_without_near_chance": without,
            "near_chance": sorted(flagged), "gain": _interval(gains),
            **_verdict_source(interval, without, _interval(gains), flagged, kept),
            "per_task": {t: iv for t, v in rels.items() if (iv := _interval(v)) is not None}}


def chance_levels(plan: Plan, split: str) -> dict[str, float]:
    """Chance level of every task's main metric on ``split``, from the references that the first
    finished single-task run of the task wrote with its predictions (tasks without one: absent)."""
    scorer = Scorer(plan)
    out: dict[str, float] = {}
    for run in plan.runs:
        if run.method != "single" or run.task in out or not run.finished:
            continue
        preds = run.folder.read_predictions(split)
        if preds and run.task in preds:
            scorer.load_vocab(run.task, run.folder)
            out[run.task] = chance_level(scorer.tasks[run.task], preds[run.task]["references"])
    return out


__all__ = ["RESAMPLES", "bootstrap", "chance_levels", "percentile_interval", "verdict"]
