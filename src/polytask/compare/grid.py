"""The tuning grid: every model's grid point, chosen on dev.

``compare.grid`` (e.g. ``{train.lr: [1e-5, 3e-5, 1e-4]}``) gives every model -- each single-task
model and each multi-task method -- the same tuning effort: :func:`polytask.compare.plan.plan_compare`
plans one sub-run per grid point, and :func:`choose` keeps, for every model and seed, the point
with the best dev selection score (the ``dev_macro`` of its ``summary.json``: the macro average
of the run's main metrics, negated for lower-is-better ones, as the trainer selects checkpoints;
for a single-task model, its own main metric). Test is never looked at; ties go to the earlier
point. A model whose grid points are not all finished is not chosen yet: it stays "unfinished".
Tuning per seed is the honest choice when seeds are few: the selection's own noise is part of
the seed-to-seed spread that the intervals see.
"""

from __future__ import annotations

import math
from dataclasses import replace
from typing import Any

from polytask.compare.plan import SINGLE, Plan, SubRun, point_label


def _dev_score(run: SubRun) -> float:
    score = run.folder.read_summary().get("dev_macro", math.nan)
    return score if isinstance(score, (int, float)) and math.isfinite(score) else -math.inf


def choose(plan: Plan) -> tuple[Plan, list[dict[str, Any]]]:
    """The plan reduced to each model's chosen grid point, and the choices (what the report shows).

    Without a grid or a search (``compare.search``: each model's trials, chosen the same way) the
    plan is returned as it is, with no choices.
    """
    if not plan.grid and not plan.search:
        return plan, []
    groups: dict[tuple, list[SubRun]] = {}
    for r in plan.runs:
        groups.setdefault((r.method, r.task, r.seed), []).append(r)
    kept, choices = [], []
    for (method, task, seed), runs in groups.items():
        if not all(r.finished for r in runs):
            kept.append(next(r for r in runs if not r.finished))  # reported as unfinished
            continue
        scores = [_dev_score(r) for r in runs]
        best = runs[scores.index(max(scores))]  # the first of equal scores
        kept.append(best)
        choices.append({"model": task if method == SINGLE else method, "method": method, "task": task,
                        "seed": seed, "chosen": best.grid_index, "point": best.point,
                        "label": point_label(best.point), "points": [r.point for r in runs],
                        "dev": [x if math.isfinite(x) else None for x in scores]})
    return replace(plan, runs=kept), choices


__all__ = ["choose"]
