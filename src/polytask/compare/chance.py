"""Chance-corrected scores: a baseline near chance level must not carry Delta-m.

Delta-m divides by the single-task score, so a baseline near chance (a CoLA model with Matthews
correlation 0.03) turns a small absolute gain into +100% and one task carries the average. Each
task's main metric ``m`` is therefore also put on a common scale from chance to perfect:

    c = (m - chance) / (best - chance)                                   (0: chance, 1: perfect)

with ``best`` = 1 for higher-is-better metrics and 0 for errors (MSE), and ``chance`` the best
score of a model that ignores its input, on the evaluated split (:func:`chance_level`):

* Matthews correlation, Pearson, Spearman: 0;
* accuracy, binary F1 (of the positive label), macro-F1: the best *constant* prediction
  (accuracy: the majority-class rate; binary F1: predicting the positive label everywhere,
  2p / (1 + p) for a positive rate p);
* MSE: the variance of the references (predicting their mean), so ``c`` is R^2;
* tagging entity F1, and every other metric: 0.

The comparison then reports, next to the classic Delta-m,

* the **chance-corrected gain** ``100 / T * sum_t (c_mtl,t - c_single,t)``: the mean change in
  percentage points of each task's chance-to-perfect range (no division by the baseline, so no
  task can explode it; an absolute, not a relative, change);
* the tasks **near chance**: single-task ``c`` below :data:`NEAR_CHANCE` (0.1: the baseline
  got less than a tenth of the way from chance to perfect), and **Delta-m without them**; the
  verdict is read from that Delta-m when any task is near chance.
"""

from __future__ import annotations

import math
from typing import Any

NEAR_CHANCE = 0.1  # single-task c below this: the task's relative change is flagged, not averaged
_ZERO_CHANCE = frozenset({"matthews", "pearson", "spearman"})
_CONSTANT = frozenset({"accuracy", "f1", "macro_f1"})  # classification: the best constant prediction


def chance_level(task: Any, references: list) -> float:
    """The best score an input-blind model gets on ``references`` for ``task``'s main metric."""
    metric = task.main_metric
    if metric in _ZERO_CHANCE or not references:
        return 0.0
    if metric in _CONSTANT and getattr(task, "type_name", "") == "classification":
        labels = sorted(set(references), key=str)
        return max(task.metrics([label] * len(references), references)[metric] for label in labels)
    if metric == "mse":
        mean = sum(references) / len(references)
        return sum((r - mean) ** 2 for r in references) / len(references)
    return 0.0


def corrected(value: float, chance: float, higher_is_better: bool) -> float:
    """``(m - chance) / (best - chance)``: 0 at chance, 1 at the best possible score."""
    best = 1.0 if higher_is_better else 0.0
    if value is None or math.isnan(value) or best == chance:
        return math.nan
    return (value - chance) / (best - chance)


def corrected_scores(scores: dict[str, float], chance: dict[str, float],
                     higher_is_better: dict[str, bool]) -> dict[str, float]:
    return {t: corrected(v, chance[t], higher_is_better[t]) if t in chance else math.nan
            for t, v in scores.items()}


def gain(mtl: dict[str, float], single: dict[str, float], chance: dict[str, float],
         higher_is_better: dict[str, bool]) -> float:
    """Chance-corrected gain: mean over tasks of ``100 * (c_mtl - c_single)`` (percentage points)."""
    cm = corrected_scores(mtl, chance, higher_is_better)
    cs = corrected_scores(single, chance, higher_is_better)
    diffs = [100.0 * (cm[t] - cs[t]) for t in single if not (math.isnan(cm[t]) or math.isnan(cs[t]))]
    return sum(diffs) / len(diffs) if diffs else math.nan


def near_chance(single: dict[str, float], chance: dict[str, float], higher_is_better: dict[str, bool],
                threshold: float = NEAR_CHANCE) -> list[str]:
    """The tasks whose single-task score is within ``threshold`` of the chance-to-best range of chance."""
    cs = corrected_scores(single, chance, higher_is_better)
    return sorted(t for t, c in cs.items() if not math.isnan(c) and c < threshold)


__all__ = ["NEAR_CHANCE", "chance_level", "corrected", "corrected_scores", "gain", "near_chance"]
