"""The report's sections that say how far to trust the comparison.

Each function renders one section of ``report.md`` from the dict of
:func:`polytask.compare.results.collect`: the bootstrap intervals and verdict
(:mod:`~polytask.compare.uncertainty`), chance-corrected scores and near-chance baselines
(:mod:`~polytask.compare.chance`), the positive label of each binary-F1 task, whether each model
converged (steps and examples side by side), and the grid point chosen for each model
(:mod:`~polytask.compare.grid`). A section with nothing to say returns no lines.
"""

from __future__ import annotations

import math

from polytask.compare.markdown import finite, fmt, md_table as _md_table


def _iv(interval, digits: int = 2) -> str:
    return "-" if not interval else f"[{interval[0]:+.{digits}f}, {interval[1]:+.{digits}f}]"


def md_intervals(results: dict) -> list[str]:
    intervals = {m: v for m, v in (results.get("intervals") or {}).items() if v}
    if not intervals:
        return []
    any_iv = next(iter(intervals.values()))
    L = [f"## How sure? {100 * any_iv['level']:.0f}% intervals (test)", "",
         f"Paired bootstrap over seeds and test examples ({any_iv['resamples']} resamples; "
         "`polytask.compare.uncertainty`). The verdict is read from an interval, not a point estimate: helped if "
         "it is above 0, hurt if below, else no measurable difference. It reads Delta-m's interval, or, when a "
         "task's single-task baseline is near chance, the interval of Delta-m without such tasks (see "
         "\"Near-chance baselines\").", ""]
    tasks = results["tasks"]
    rows = []
    for m, iv in intervals.items():
        cells = [_iv(iv["per_task"].get(t), 1) for t in tasks]
        rows.append([m, _iv(iv["delta_m"]), _iv(iv.get("delta_m_without_near_chance")), _iv(iv.get("gain")),
                     f"**{iv['verdict']}** (from {iv.get('verdict_from', 'Delta-m')})", *cells])
    head = ["method", "Delta-m %", "Delta-m % without near-chance tasks", "chance-corrected gain (points)",
            "verdict", *[f"{t} rel. change %" for t in tasks]]
    return L + _md_table(head, rows)


def md_chance(results: dict) -> list[str]:
    chance = results.get("chance", {}).get("test")
    if not chance:
        return []
    single = results.get("single_corrected", {}).get("test", {})
    flagged = sorted({t for d in results["delta_m"].values() for t in d.get("test", {}).get("near_chance", [])})
    L = ["## Near-chance baselines and chance-corrected Delta-m", "",
         "Each task's main metric m is also put on a scale from chance (0) to perfect (1): c = (m - chance) / "
         "(best - chance), chance being the best score of a model that ignores its input (0 for Matthews, "
         "Pearson, Spearman and entity F1; the best constant prediction for accuracy and F1, e.g. the "
         "majority-class rate; the references' variance for MSE). A task whose single-task c is below 0.1 is "
         "*near chance*: its relative change is shown but is not averaged into the verdict's Delta-m. The "
         "chance-corrected gain is the mean over tasks of 100 x (c_mtl - c_single), in points.", ""]
    rows = []
    for t in results["tasks"]:
        c = single.get(t)
        rows.append([t, results["metric"][t], f"{chance[t]:.4f}" if t in chance else "n/a",
                     fmt(results["table"]["single"]["test"].get(t)), f"{c:.3f}" if finite(c) else "n/a",
                     "**near chance**" if t in flagged else ""])
    L += _md_table(["task", "metric", "chance (test)", "single-task (test)", "single-task c", ""], rows)
    rows = []
    for m in results["methods"]:
        d = results["delta_m"].get(m, {})
        cells = []
        for split in ("test", "dev"):
            got = d.get(split, {})
            cells += [fmt(got, 2, pct=True), fmt(got.get("without_near_chance"), 2, pct=True), fmt(got.get("gain"), 2)]
        rows.append([m, *cells])
    head = ["method", "Delta-m % (test, all tasks)", "without near-chance (test)", "gain, points (test)",
            "Delta-m % (dev)", "without near-chance (dev)", "gain, points (dev)"]
    return L + _md_table(head, rows)


def md_positive_labels(results: dict) -> list[str]:
    labels = results.get("positive_labels") or {}
    if not labels:
        return []
    items = ", ".join(f"{t}: `{label}`" for t, label in labels.items())
    return [f"Binary F1 is the F1 of the positive label ({items}; set `positive_label:` on the task to change it; "
            "default: the second label of the task's label order, its `labels:` when set, else sorted).", ""]


def md_convergence(results: dict) -> list[str]:
    runs = results.get("convergence") or []
    if not runs:
        return []
    L = ["## Did each model converge?", "",
         "Each sub-run stops early when its dev score has not improved for `train.early_stopping` "
         "evaluations (patience), else at its step cap. A model at the cap whose best dev score came at one of "
         "its last 2 evaluations was still improving: its numbers are a lower bound. Optimizer steps and "
         "examples trained on are shown side by side (one step of a method that draws every task holds one "
         "batch per task).", ""]
    rows = [[r["run"], f"{r['steps']} / {r['cap']}", f"{r.get('examples', 0):,}", str(r["best_step"]),
             f"{r.get('evaluations_after_best', '?')} / {r.get('patience') or '-'}", r["stopped"],
             "**still improving**" if r["still_improving"] else ""] for r in runs]
    L += _md_table(["sub-run", "steps / cap", "examples seen", "best step", "evals since best / patience",
                    "stopped", ""], rows)
    n_early = sum(r["stopped"] == "early" for r in runs)
    L += [f"{n_early} of {len(runs)} sub-runs stopped early; {len(runs) - n_early} hit the cap.", ""]
    flagged = [r["run"] for r in runs if r["still_improving"]]
    if flagged:
        L += [f"Still improving at the cap: {', '.join(flagged)}. Raise `compare.cap_factor` (or `train.max_steps`) "
              "before reading their comparison as final.", ""]
    return L


def md_grid(results: dict) -> list[str]:
    grid = results.get("grid") or {}
    if not grid.get("points"):
        return []
    points = grid["points"]
    L = ["## Tuning grid (the same for every model, chosen on dev per seed)", "",
         "Points: " + "; ".join(f"g{i}: " + ", ".join(f"{k}={v}" for k, v in p.items()) for i, p in enumerate(points)),
         ""]
    rows = []
    for c in grid.get("choices", []):
        scores = ", ".join("n/a" if x is None or not math.isfinite(x) else f"{x:.4f}" for x in c["dev"])
        rows.append([c["model"] if c["method"] != "single" else f"single-task {c['task']}", str(c["seed"]),
                     f"g{c['chosen']}: {c['label']}", scores])
    L += _md_table(["model", "seed", "chosen", "dev score per point (g0, g1, ...)"], rows)
    return L + ["The dev score is the trainer's selection score (the macro average of the run's main metrics, "
                "negated for lower-is-better ones). Test played no part in the choice.", ""]


def md_search(results: dict) -> list[str]:
    """The search's trials table: every model's and seed's trials, their points and dev scores."""
    grid = results.get("grid") or {}
    search = grid.get("search") or {}
    if not search:
        return []
    L = [f"## Search trials (Optuna TPE, {search['trials']} trials per model and seed, chosen on dev)", "",
         "Space: " + "; ".join(f"{k}: {v}" for k, v in search["space"].items()), ""]
    rows = []
    for c in grid.get("choices", []):
        model = c["model"] if c["method"] != "single" else f"single-task {c['task']}"
        for i, (point, dev) in enumerate(zip(c.get("points", []), c["dev"])):
            shown = "n/a" if dev is None or not math.isfinite(dev) else f"{dev:.4f}"
            rows.append([model, str(c["seed"]), f"t{i}", ", ".join(f"{k}={v:.4g}" if isinstance(v, float)
                                                                  else f"{k}={v}" for k, v in point.items()),
                         shown, "chosen" if i == c["chosen"] else ""])
    L += _md_table(["model", "seed", "trial", "point", "dev score", ""], rows)
    return L + ["Every model and seed had the same number of trials over the same space; the dev score is the "
                "trainer's selection score. Test played no part in the choice.", ""]


__all__ = ["md_chance", "md_convergence", "md_grid", "md_intervals", "md_positive_labels", "md_search"]
