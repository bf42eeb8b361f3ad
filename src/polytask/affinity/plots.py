"""Heatmaps of a (T, T) affinity matrix: rows = the task stepped on (source), columns = the
task whose loss is measured (target), in the run's task order; a diverging colormap centred at
0 (blue: helps / aligned, red: hurts / conflicting, as in the run report's cosine heatmap) with
a symmetric scale ``[-limit, limit]``, values annotated. The default ``limit`` is the largest
absolute off-diagonal entry: the diagonal (a task's own progress; a cosine of 1) is usually
far larger and would wash out the pairs, so its colour is clipped (its value is written)."""

from __future__ import annotations

from polytask.html_report import figure_png


def heatmap_png(matrix: list[list[float]], names: list[str], title: str, limit: float | None = None) -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    grid = np.asarray(matrix, dtype=float)  # (T, T)
    if limit is None:
        off = np.abs(grid[~np.eye(len(names), dtype=bool)])
        limit = float(np.nanmax(off)) if off.size else 0.0
        limit = limit or 1.0
    size = 2.5 + 0.7 * len(names)
    fig, ax = plt.subplots(figsize=(size + 1.2, size))
    image = ax.imshow(grid, cmap="RdBu", vmin=-limit, vmax=limit, interpolation="nearest")
    ax.set_xticks(range(len(names)), names, rotation=45, ha="right", fontsize=9)
    ax.set_yticks(range(len(names)), names, fontsize=9)
    ax.set_xlabel("target task j (loss measured)")
    ax.set_ylabel("source task i (gradient)")
    for i in range(len(names)):
        for j in range(len(names)):
            value = grid[i, j]
            dark = abs(value) > 0.6 * limit
            ax.text(j, i, f"{value:.2g}", ha="center", va="center", fontsize=8, color="white" if dark else "black")
    ax.set_title(title, fontsize=10)
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04)
    fig.tight_layout()
    return figure_png(fig)
