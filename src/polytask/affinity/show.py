"""The text that ``polytask affinity`` prints: both matrices, groupings, partners, cost."""

from __future__ import annotations


def matrix_table(title: str, mean: list, std: list, names: list[str]) -> str:
    """A plain-text table ``mean +-std``; rows: source task i, columns: target task j."""
    cells = [[f"{mean[i][j]:+.4f} +-{std[i][j]:.4f}" for j in range(len(names))] for i in range(len(names))]
    width = 2 + max(len(c) for row in cells for c in row)
    first = 2 + max(len("i \\ j"), *(len(n) for n in names))
    lines = [title, "i \\ j".ljust(first) + "".join(n.rjust(width) for n in names)]
    for name, row in zip(names, cells):
        lines.append(name.ljust(first) + "".join(c.rjust(width) for c in row))
    return "\n".join(lines)


def render(result: dict, where: str | None = None) -> str:
    names = result["tasks"]
    if "tag" not in result:
        return "no lookahead was taken (steps < 1?)"
    cost = result["cost"]
    parts = [
        matrix_table(f"TAG lookahead affinity Z[i -> j] = 1 - L_j(after step on i) / L_j(before), mean +-std over "
                     f"{cost['lookaheads']} lookaheads", result["tag"]["mean"], result["tag"]["std"], names),
        "",
        matrix_table("gradient cosine cos(g_i, g_j) on the shared parameters, mean +-std",
                     result["cosine"]["mean"], result["cosine"]["std"], names),
        "",
        "recommended groupings (TAG score: each task's mean affinity from its group mates, summed):",
    ]
    for g in result["groupings"]:
        groups = " | ".join(" + ".join(grp) for grp in g["grouping"])
        parts.append(f"  {g['groups']} group(s): {groups}   score {g['score']:+.4g} ({g['search']})")
    parts.append("best partner (the task whose step lowers this task's loss most):")
    for name, p in result["best_partner"].items():
        parts.append(f"  {name}: {p['partner']} (Z = {p['affinity']:+.3g})")
    ratio = cost["ratio"]
    parts.append(f"cost: {cost['lookahead_seconds']:.1f} s in {cost['lookaheads']} lookaheads (every "
                 f"{result['every']} steps) vs {cost['train_seconds']:.1f} s of training steps"
                 + (f" (ratio {ratio:.2f})" if ratio is not None else ""))
    if where:
        parts.append(f"written: {where}")
    return "\n".join(parts)
