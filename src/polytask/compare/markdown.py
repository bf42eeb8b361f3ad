"""Small formatting helpers shared by the report's modules: numbers, ``mean ± std`` cells and
Markdown pipe tables (:mod:`polytask.compare.report`, :mod:`polytask.compare.report_checks`)."""

from __future__ import annotations

import math
from typing import Any


def finite(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def fmt(ms: dict | None, digits: int = 4, pct: bool = False) -> str:
    """``mean ± std`` (just the mean with one seed); ``n/a`` when missing."""
    if not ms or not finite(ms.get("mean")):
        return "n/a"
    sign = "+" if pct and ms["mean"] > 0 else ""
    text = f"{sign}{ms['mean']:.{digits}f}"
    if ms.get("n", 1) > 1 and finite(ms.get("std")):
        text += f" ± {ms['std']:.{digits}f}"
    return text + ("%" if pct else "")


def md_table(head: list[str], rows: list[list[str]]) -> list[str]:
    out = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    out += ["| " + " | ".join(r) + " |" for r in rows]
    return out + [""]
