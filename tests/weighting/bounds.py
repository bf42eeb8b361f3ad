"""Rounding bounds derived from the scale of the quantities, not from what one machine printed.

Standard floating-point error analysis (Higham, *Accuracy and Stability of Numerical
Algorithms*, 2nd ed., section 3.1): an inner product of two length-n vectors computed in
floating point has an absolute error of at most gamma_n |x|.|y| <= gamma_n ||x|| ||y||, with
gamma_n = n u / (1 - n u) and u the unit roundoff (eps / 2). A BLAS may sum in any order (pairwise,
blocked, fused multiply-add), which changes the digits printed but not this bound.
"""

from __future__ import annotations

import torch


def unit_roundoff(dtype: torch.dtype = torch.float64) -> float:
    """u = eps / 2 of ``dtype`` (1.1e-16 for float64)."""
    return torch.finfo(dtype).eps / 2


def gamma(n: int, dtype: torch.dtype = torch.float64) -> float:
    """gamma_n = n u / (1 - n u): the relative error bound of n chained roundings."""
    nu = n * unit_roundoff(dtype)
    return nu / (1 - nu)


def dot_bound(n: int, *norms: float, steps: int = 1, dtype: torch.dtype = torch.float64) -> float:
    """Largest rounding error of a quantity built by ``steps`` inner products of length ``n``
    over vectors with the given norms: steps * gamma_n * prod(norms).

    An exact-zero quantity (e.g. a projection onto a normal plane, dotted with the normal) must
    come out below this bound; a real nonzero one far above it.
    """
    scale = 1.0
    for norm in norms:
        scale *= float(norm)
    return steps * gamma(n, dtype) * scale
