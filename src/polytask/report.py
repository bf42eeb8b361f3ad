"""Plots of a run: per-task training loss, dev metric, and task weights over steps (PNG)."""

from __future__ import annotations

from pathlib import Path


def plot_training(events: list[dict], out_path: Path) -> Path:
    """Loss, dev main metric, task weights (top); gradient cosines and norms (bottom), from a
    run's events (:meth:`polytask.run_folder.RunFolder.events`)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    train = [e for e in events if e["kind"] == "train"]
    evals = [e for e in events if e["kind"] == "eval"]
    fig, grid = plt.subplots(2, 3, figsize=(15, 8))
    axes = grid.flatten()
    _lines(axes[0], train, "loss", "training loss (running mean)")
    _lines(axes[1], evals, "main", "dev main metric")
    _lines(axes[2], train, "weights", "task weights (effective)")
    _lines(axes[3], train, "cosine", "cosine of task gradients (pairs)")
    _lines(axes[4], train, "grad_norm", "task gradient norm")
    axes[4].set_yscale("log") if any(e.get("grad_norm") for e in train) else None
    axes[5].axis("off")
    if evals:
        axes[1].plot([e["step"] for e in evals], [e["macro"] for e in evals], "k--", label="macro")
        axes[1].legend(fontsize=8)
    fig.tight_layout()
    out_path = Path(out_path)
    tmp = out_path.with_suffix(".tmp.png")
    fig.savefig(tmp, dpi=90)
    plt.close(fig)
    tmp.replace(out_path)
    return out_path


def _lines(ax, events: list[dict], key: str, title: str) -> None:
    tasks = sorted({t for e in events for t in e.get(key, {})})
    for t in tasks:
        pts = [(e["step"], e[key][t]) for e in events if t in e.get(key, {})]
        if pts:
            ax.plot(*zip(*pts), label=t)
    ax.set_title(title)
    ax.set_xlabel("step")
    if tasks:
        ax.legend(fontsize=8)
