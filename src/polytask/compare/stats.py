"""The comparison's arithmetic: mean and spread over seeds, relative change per task, Delta-m.

Delta-m (Maninis, Radosavovic & Kokkinos, CVPR 2019; the form of Vandenhende et al., TPAMI
2021): ``100 / T * sum_t s_t (M_mtl,t - M_single,t) / |M_single,t|`` with ``s_t = +1 / -1`` for
higher- / lower-is-better metrics (:func:`polytask.metrics.delta_m`).
"""

from __future__ import annotations

import math
import statistics
from typing import Any


def mean_std(values: list[float]) -> dict[str, Any]:
    vals = [float(v) for v in values if v is not None and not math.isnan(float(v))]
    if not vals:
        return {"mean": math.nan, "std": math.nan, "n": 0, "values": []}
    std = statistics.stdev(vals) if len(vals) > 1 else 0.0
    return {"mean": statistics.fmean(vals), "std": std, "n": len(vals), "values": vals}


def relative_changes(mtl: dict[str, float], single: dict[str, float],
                     higher_is_better: dict[str, bool]) -> dict[str, float]:
    """Signed relative change per task in percent (+ is better); NaN where the baseline is 0."""
    out = {}
    for task, base in single.items():
        base = float(base)
        if base == 0 or math.isnan(base) or task not in mtl:
            out[task] = math.nan
            continue
        sign = 1.0 if higher_is_better[task] else -1.0
        out[task] = 100.0 * sign * (float(mtl[task]) - base) / abs(base)
    return out


def delta_m_defined(mtl: dict[str, float], single: dict[str, float],
                    higher_is_better: dict[str, bool]) -> tuple[float, list[str]]:
    """:func:`polytask.metrics.delta_m` over the tasks whose single-task metric is non-zero.

    A zero baseline (e.g. a collapsed classifier with Matthews correlation exactly 0) makes the
    relative change undefined; such tasks are left out and returned, so the report can say so.
    """
    from polytask.metrics import delta_m

    excluded = [t for t, v in single.items() if float(v) == 0 or math.isnan(float(v))]
    keep = [t for t in single if t not in excluded]
    if not keep:
        return math.nan, excluded
    value = delta_m({t: mtl[t] for t in keep}, {t: single[t] for t in keep},
                    {t: higher_is_better[t] for t in keep})
    return value, excluded
