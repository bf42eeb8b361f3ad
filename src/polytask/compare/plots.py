"""The report's PNG plots (matplotlib, Agg backend), from the dict built by
:func:`polytask.compare.results.collect`:

* ``metrics.png``  per-task main metric of every model (test: bars, mean +- std over seeds;
  dev: dots), with the test split's chance level (the best input-blind score: the majority
  class, always-positive F1; :mod:`polytask.compare.chance`) as a dotted line;
* ``delta_m.png``  Delta-m per method on dev (mean +- std over seeds) and test (the 95%
  bootstrap interval the verdict reads, :func:`delta_m_bars`), with the target line;
* ``curves.png``   dev main metric against the number of that task's training examples seen,
  per task, for the single-task model and every method (first seed);

and :func:`write_report`, which writes them with ``report.md`` (rendered by
:mod:`polytask.compare.report`).
"""

from __future__ import annotations

import math
from pathlib import Path

from polytask.compare.plan import SINGLE
from polytask.compare.report import REPORT, TARGET_DELTA, columns, finite, label, render_markdown
from polytask.files import atomic_write


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _err(ms: dict):
    """Error bar: the std over seeds, none with a single seed."""
    return ms["std"] if ms.get("n", 1) > 1 and finite(ms.get("std")) else None


def _save(fig, path: Path) -> None:
    tmp = path.with_suffix(".tmp.png")
    fig.savefig(tmp, dpi=90)
    tmp.replace(path)


def _task_grid(plt, n: int):
    """A figure with one panel per task, 3 to a row; returns it and the panels as a flat list."""
    ncols = min(3, n)
    nrows = math.ceil(n / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(4.2 * ncols, 3.2 * nrows), squeeze=False)
    panels = [ax for row in axes for ax in row]
    for ax in panels[n:]:
        ax.axis("off")
    return fig, panels


def _finish(plt, fig, path: Path) -> Path:
    fig.tight_layout()
    _save(fig, path)
    plt.close(fig)
    return path


def plot_metrics(results: dict, path: Path) -> Path:
    plt = _plt()
    tasks, cols = results["tasks"], columns(results)
    fig, axes = _task_grid(plt, len(tasks))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for k, t in enumerate(tasks):
        ax = axes[k]
        for j, c in enumerate(cols):
            test = results["table"][c]["test"].get(t, {})
            dev = results["table"][c]["dev"].get(t, {})
            if finite(test.get("mean")):
                ax.bar(j, test["mean"], yerr=_err(test), capsize=3, color=colors[j % len(colors)],
                       label="test" if j == 0 else None)
            if finite(dev.get("mean")):
                ax.errorbar(j, dev["mean"], yerr=_err(dev), fmt="o", color="black", ms=4,
                            label="dev" if j == 0 else None)
        chance = (results.get("chance") or {}).get("test", {}).get(t)
        if finite(chance):  # what a model that ignores its input scores (majority class, always-positive F1)
            ax.axhline(chance, color="gray", lw=1, ls=":", label="chance (input-blind best)" if k == 0 else None)
        ax.set_xticks(range(len(cols)))
        ax.set_xticklabels([label(c) for c in cols], rotation=30, ha="right", fontsize=8)
        ax.set_title(f"{t} ({results['metric'][t]})", fontsize=10)
        if k == 0:
            ax.legend(fontsize=7)
    return _finish(plt, fig, path)


def delta_m_bars(results: dict, split: str) -> dict[str, tuple[float, float, float]]:
    """Per method: (Delta-m mean, lower, upper) as ``delta_m.png`` draws it. Test: the bootstrap
    interval the verdict reads (over seeds and test examples; not zero with one seed); dev: the
    std over seeds (none with one seed)."""
    out = {}
    for m in results["methods"]:
        d = results["delta_m"].get(m, {}).get(split, {})
        if not finite(d.get("mean")):
            continue
        interval = ((results.get("intervals") or {}).get(m) or {}).get("delta_m") if split == "test" else None
        if interval:
            out[m] = (d["mean"], min(interval[0], d["mean"]), max(interval[1], d["mean"]))
        else:
            e = _err(d) or 0.0
            out[m] = (d["mean"], d["mean"] - e, d["mean"] + e)
    return out


def plot_delta_m(results: dict, path: Path) -> Path:
    plt = _plt()
    methods = results["methods"]
    fig, ax = plt.subplots(figsize=(max(5.5, 1.4 * len(methods) + 2.5), 3.8))
    width = 0.38
    for k, (split, color, what) in enumerate((("dev", "#9ecae1", "dev (± std over seeds)"),
                                              ("test", "#3182bd", "test (95% bootstrap interval)"))):
        bars = delta_m_bars(results, split)
        xs = [j + (k - 0.5) * width for j, m in enumerate(methods) if m in bars]
        ys = [bars[m][0] for m in methods if m in bars]
        errs = [[bars[m][0] - bars[m][1] for m in methods if m in bars], [bars[m][2] - bars[m][0] for m in methods
                                                                         if m in bars]]
        ax.bar(xs, ys, width, yerr=errs, capsize=3, color=color, label=what)
    ax.axhline(0, color="black", lw=0.8)
    ax.axhline(TARGET_DELTA, color="green", lw=1.2, ls="--", label=f"target: Delta-m > +{TARGET_DELTA:g}%")
    ax.set_xticks(range(len(methods)))
    ax.set_xticklabels(methods, rotation=20, ha="right", fontsize=8)
    ax.set_ylabel("Delta-m (%) vs single-task")
    ax.set_title("Did multi-task learning help? Delta-m per method\n(above 0: better than single-task models)",
                 fontsize=10)
    ax.legend(fontsize=7, loc="best")
    return _finish(plt, fig, path)


def plot_curves(results: dict, path: Path) -> Path:
    plt = _plt()
    tasks, cols = results["tasks"], columns(results)
    fig, axes = _task_grid(plt, len(tasks))
    for k, t in enumerate(tasks):
        ax = axes[k]
        for c in cols:
            pts = [(p["examples"], p["value"]) for p in results.get("curves", {}).get(c, {}).get(t, [])
                   if finite(p.get("value"))]
            if pts:
                style = {"color": "black", "ls": "--"} if c == SINGLE else {}
                ax.plot(*zip(*pts), marker=".", label=label(c), **style)
        ax.set_title(f"{t}: dev {results['metric'][t]}", fontsize=10)
        ax.set_xlabel(f"{t} training examples seen", fontsize=8)
        if k == 0:
            ax.legend(fontsize=7)
    return _finish(plt, fig, path)


def write_plots(results: dict, root: Path) -> dict[str, str]:
    """Write every plot into ``root``; returns ``{key: file name}``."""
    return {key: fn(results, root / f"{key}.png").name
            for key, fn in (("metrics", plot_metrics), ("delta_m", plot_delta_m), ("curves", plot_curves))}


def write_report(results: dict, root: Path) -> Path:
    """Write ``report.md`` and its PNG plots into ``root``; returns the report's path."""
    root = Path(root)
    plots = write_plots(results, root)
    path = root / REPORT
    atomic_write(path, render_markdown(results, plots).encode())
    return path
