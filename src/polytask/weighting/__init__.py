"""Loss-weighting and gradient-balancing methods, one per file; this registry is the catalogue.

Select one in YAML with ``weighting: {name: pcgrad, args: {...}}``.
"""

from __future__ import annotations

from polytask.weighting.alignedmtl import AlignedMTL
from polytask.weighting.base import Weighting
from polytask.weighting.cagrad import CAGrad
from polytask.weighting.dbmtl import DBMTL
from polytask.weighting.dwa import DynamicWeightAverage
from polytask.weighting.ew import EqualWeighting
from polytask.weighting.famo import FAMO
from polytask.weighting.gradnorm import GradNorm
from polytask.weighting.gradvac import GradVac
from polytask.weighting.imtl import IMTLG
from polytask.weighting.mgda import MGDA
from polytask.weighting.nashmtl import NashMTL
from polytask.weighting.pcgrad import PCGrad
from polytask.weighting.rlw import RandomLossWeighting
from polytask.weighting.upgrad import UPGrad
from polytask.weighting.uw import UncertaintyWeighting

REGISTRY: dict[str, type[Weighting]] = {
    # loss-based
    "equal": EqualWeighting,
    "uw": UncertaintyWeighting,
    "dwa": DynamicWeightAverage,
    "rlw": RandomLossWeighting,
    "famo": FAMO,
    # loss + gradient norms
    "gradnorm": GradNorm,
    "dbmtl": DBMTL,
    # gradient-based (need the Gram matrix of the task gradients)
    "mgda": MGDA,
    "pcgrad": PCGrad,
    "gradvac": GradVac,
    "cagrad": CAGrad,
    "imtl": IMTLG,
    "nashmtl": NashMTL,
    "alignedmtl": AlignedMTL,
    "upgrad": UPGrad,
}


def build_weighting(name: str, tasks: list[str], args: dict | None = None) -> Weighting:
    """Instantiate a registered method by name; unknown names list the catalogue."""
    from polytask.registry import resolve

    cls = resolve(REGISTRY, name, "weighting")
    return cls(tasks, **(args or {}))


__all__ = ["REGISTRY", "Weighting", "build_weighting"]
