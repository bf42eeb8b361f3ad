"""Plots of a run (PNG): per-task training loss, dev main metric (one panel per task, the metric
named on its axis), task weights (only when they vary), gradient cosines and norms, the learning
rate; and a heatmap of the gradient cosines over time (for report.html).

Every series has markers (a one-point series is visible), a task has the same colour in every
panel, and cosines or norms from a probe (``train`` events with ``probe_grad_norm``: a few
scattered steps) are drawn as points, not as a trend.
"""

from __future__ import annotations

import math
from pathlib import Path


def plot_training(events: list[dict], out_path: Path) -> Path:
    """Draw :func:`training_figure` of a run's events (:meth:`RunFolder.events`) to ``out_path``."""
    import matplotlib.pyplot as plt

    fig = training_figure(events)
    out_path = Path(out_path)
    tmp = out_path.with_suffix(".tmp.png")
    fig.savefig(tmp, dpi=90)
    plt.close(fig)
    tmp.replace(out_path)
    return out_path


def training_figure(events: list[dict]):
    """The training plot as a matplotlib Figure (not saved; the caller closes it)."""
    train = [e for e in events if e.get("kind") == "train"]
    evals = [e for e in events if e.get("kind") == "eval"]
    colours = task_colours(events)
    panels = [("training loss (running mean)", lambda ax: _loss(ax, train, colours))]
    best = best_step(evals)
    for task in sorted({t for e in evals for t in e.get("main", {})}):
        panels.append((f"dev {task}", lambda ax, task=task: _dev_task(ax, evals, task, colours, best)))
    if evals:
        panels.append(("dev macro average", lambda ax: _macro(ax, evals, best)))
    if weights_vary(train):
        panels.append(("task weights (effective)", lambda ax: _weights(ax, train, colours)))
    if any(e.get("cosine") for e in train):
        panels.append(("cosine of task gradients (pairs)", lambda ax: _cosines(ax, train)))
    # training-step norms and probe norms (a different quantity, orders of magnitude apart): one panel each
    if any(e.get("grad_norm") for e in train):
        panels.append(("task gradient norm (training steps)", lambda ax: _grad_norms(ax, train, colours, "grad_norm")))
    if any(e.get("probe_grad_norm") for e in train):
        panels.append(("task gradient norm (probes)", lambda ax: _grad_norms(ax, train, colours, "probe_grad_norm")))
    if any("lr" in e for e in train):
        panels.append(("learning rate", lambda ax: _lr(ax, train)))
    return _grid(panels)


def _grid(panels: list):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ncols = min(3, max(1, len(panels)))
    nrows = max(1, math.ceil(len(panels) / ncols))
    fig, grid = plt.subplots(nrows, ncols, figsize=(5 * ncols, 3.6 * nrows), squeeze=False)
    axes = grid.flatten()
    for ax, (title, draw) in zip(axes, panels):
        draw(ax)
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
    for ax in axes[len(panels):]:
        ax.axis("off")
    if not panels:
        axes[0].text(0.5, 0.5, "no events logged", ha="center", va="center")
    fig.tight_layout()
    return fig


def task_colours(events: list[dict]) -> dict[str, str]:
    """One colour per task (sorted by name), the same in every panel."""
    names = set()
    for e in events:
        for key in ("loss", "weights", "grad_norm", "probe_grad_norm", "main"):
            names.update(e.get(key) or {})
    palette = [f"C{i}" for i in range(10)]
    return {t: palette[i % len(palette)] for i, t in enumerate(sorted(names))}


def weights_vary(train: list[dict], tol: float = 1e-6) -> bool:
    """Whether any task's weight changes over the run, or tasks are weighted differently."""
    values = [w for e in train for w in (e.get("weights") or {}).values()]
    return bool(values) and max(values) - min(values) > tol


def main_metric_name(evals: list[dict], task: str) -> str:
    """The name of ``task``'s main metric, as the eval events name it (``main_metric``); in logs
    written before events named it, the metric whose value is unambiguously the logged main value."""
    for e in evals:
        if task in e.get("main_metric", {}):
            return e["main_metric"][task]
    for e in evals:
        main, metrics = e.get("main", {}).get(task), e.get("metrics", {}).get(task, {})
        matches = [n for n, v in metrics.items()
                   if main is not None and isinstance(v, (int, float)) and math.isclose(v, main, abs_tol=1e-12)]
        if len(set(matches)) == 1:
            return matches[0]
    return "main metric"


def _series(ax, events: list[dict], key: str, task: str, colour: str, points_only: bool = False, **kw) -> None:
    pts = [(e["step"], e[key][task]) for e in events if task in (e.get(key) or {})]
    if pts:
        ax.plot(*zip(*pts), linestyle="none" if points_only else "-", marker="o", markersize=4,
                color=colour, **kw)


def _loss(ax, train: list[dict], colours: dict) -> None:
    for t in sorted({t for e in train for t in e.get("loss", {})}):
        _series(ax, train, "loss", t, colours[t], label=t)
    ax.set_ylabel("loss")


def best_step(evals: list[dict]) -> int | None:
    """The step of the best dev macro average (the first on ties, as training selects the weights)."""
    scored = [e for e in evals if e.get("macro") is not None and e.get("macro") == e.get("macro")]
    return max(scored, key=lambda e: (e["macro"], -e["step"]))["step"] if scored else None


def _mark_best(ax, best: int | None) -> None:
    if best is not None:
        ax.axvline(best, color="green", linestyle=":", linewidth=1.2, label=f"best step {best} (saved weights)")


def _dev_task(ax, evals: list[dict], task: str, colours: dict, best: int | None = None) -> None:
    _series(ax, evals, "main", task, colours[task], label=task)
    _mark_best(ax, best)
    ax.set_ylabel(main_metric_name(evals, task))


def _macro(ax, evals: list[dict], best: int | None = None) -> None:
    pts = [(e["step"], e["macro"]) for e in evals if e.get("macro") is not None]
    if pts:
        ax.plot(*zip(*pts), "k--", marker="o", markersize=4)
    _mark_best(ax, best)
    ax.set_ylabel("macro (mean of task main metrics)")


def _weights(ax, train: list[dict], colours: dict) -> None:
    for t in sorted({t for e in train for t in e.get("weights") or {}}):
        _series(ax, train, "weights", t, colours[t], label=t)
    ax.set_ylabel("weight")


def _cosines(ax, train: list[dict]) -> None:
    pairs = sorted({p for e in train for p in e.get("cosine") or {}})
    step_events = [e for e in train if "probe_grad_norm" not in e]
    probe_events = [e for e in train if "probe_grad_norm" in e]
    step_cosines = any(e.get("cosine") for e in step_events)
    for i, pair in enumerate(pairs):
        colour = f"C{i % 10}"
        _series(ax, step_events, "cosine", pair, colour, label=pair)
        _series(ax, probe_events, "cosine", pair, colour, points_only=True, markerfacecolor="none",
                label=None if step_cosines else f"{pair} (probe)")
    ax.axhline(0.0, color="grey", linewidth=0.8)
    ax.set_ylabel("cosine" + (" (hollow points: probes)" if probe_events else ""))
    values = [v for e in train for v in (e.get("cosine") or {}).values() if v == v]
    if values:  # the data's range with 0 in view, not +-1: cosines near 0 would all sit on one line
        lo, hi = min(min(values), 0.0), max(max(values), 0.0)
        pad = max(0.05, 0.1 * (hi - lo))
        ax.set_ylim(max(-1.05, lo - pad), min(1.05, hi + pad))


def _grad_norms(ax, train: list[dict], colours: dict, key: str) -> None:
    """One kind of norm: ``grad_norm`` (each training step's) or ``probe_grad_norm`` (probes)."""
    tasks = sorted({t for e in train for t in e.get(key) or {}})
    for t in tasks:
        _series(ax, train, key, t, colours[t], points_only=key == "probe_grad_norm", label=t)
    positive = [v for e in train for v in (e.get(key) or {}).values()]
    if positive and min(positive) > 0:
        ax.set_yscale("log")
    ax.set_ylabel("L2 norm")


def _lr(ax, train: list[dict]) -> None:
    """The backbone's learning rate, and the heads' (``train.head_lr``) when they have their own."""
    pts = [(e["step"], e["lr"]) for e in train if "lr" in e]
    ax.plot(*zip(*pts), color="k", marker="o", markersize=3, label="backbone")
    heads = [(e["step"], e["head_lr"]) for e in train if "head_lr" in e]
    if heads:
        ax.plot(*zip(*heads), color="tab:orange", marker="s", markersize=3, label="heads")
        ax.legend(fontsize=7)
    ax.set_ylabel("learning rate")


def cosine_heatmap(events: list[dict]):
    """Task-pair gradient cosines over time (rows: pairs, columns: logged steps) as a Figure,
    or None when no cosine was logged."""
    train = [e for e in events if e.get("kind") == "train" and e.get("cosine")]
    if not train:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    pairs = sorted({p for e in train for p in e["cosine"]})
    grid = np.full((len(pairs), len(train)), np.nan)
    for j, e in enumerate(train):
        for i, p in enumerate(pairs):
            grid[i, j] = e["cosine"].get(p, np.nan)
    fig, ax = plt.subplots(figsize=(min(14, 4 + 0.25 * len(train)), 1.2 + 0.45 * len(pairs)))
    image = ax.imshow(grid, aspect="auto", cmap="RdBu", vmin=-1, vmax=1, interpolation="nearest")
    ax.set_yticks(range(len(pairs)), pairs, fontsize=8)
    ticks = sorted(set(np.linspace(0, len(train) - 1, min(len(train), 10)).round().astype(int)))
    ax.set_xticks(ticks, [str(train[k]["step"]) for k in ticks], fontsize=8)
    ax.set_xlabel("step")
    ax.set_title("gradient cosine per task pair (blue: aligned, red: conflicting)", fontsize=10)
    fig.colorbar(image, ax=ax, label="cosine")
    fig.tight_layout()
    return fig
