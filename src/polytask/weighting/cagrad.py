"""CAGrad: conflict-averse gradient descent.

Liu, Liu, Jin, Stone & Liu, "Conflict-Averse Gradient Descent for Multi-task Learning",
NeurIPS 2021.

With ``g_0`` the average gradient and ``r = c ||g_0||``, CAGrad's direction solves

    max_d  min_t g_t . d     subject to  ||d - g_0|| <= r,

(the paper's eq. 3). With ``g_w = sum_t w_t g_t``, its dual over the simplex is

    w* = argmin_w  F(w) = g_w . g_0 + r ||g_w||,

and ``d = g_0 + (r / ||g_w*||) g_w*``, divided by (1 + c^2) when ``rescale = 1`` (by (1 + c) when
``rescale = 2``, not at all when 0), as in the authors' code. So
``alpha = (1/T + lambda w*) / scale``; with ``c = 0`` it is the average gradient. Optimality
(strong duality): ``min_t g_t . d = F(w*)``.

Numerics: the problem is solved on K divided by its largest diagonal entry (w* and alpha do not
change), in the primal, by its level sets, not by SLSQP on the dual with numerical gradients
(the authors' code; 330 ms at T = 32 and inexact). For a level ``s``, the directions with
``g_t . d >= s`` for every t form a polyhedron ``P_s``; its distance to ``g_0`` grows with ``s``,
and the optimum ``s*`` is the largest ``s`` whose ``P_s`` meets the ball. Each distance is a
least-distance problem on the *unit* gradients ``e_t = g_t / ||g_t||`` (``e_t . x >= s / ||g_t||
- e_t . g_0``, Lawson & Hanson's LDP, solved by ``scipy.optimize.nnls`` with unit-norm columns),
so a gradient 1e-16 times the largest is as well resolved as the largest; ``s*`` is found by
bisection on the float64 bit pattern (at most 64 steps, to one ulp of ``s*`` at any scale). The
returned direction is the projection of ``g_0`` onto ``P_s`` at ``s = s* - 2 tol`` (``tol`` is 100
times the Gram matrix's eps: 2.2e-14 of the largest squared norm for float64, 1.2e-5 for
float32), where its multipliers are well defined; it is optimal to that tolerance, and the
optimal direction closest to ``g_0``. This covers the case the authors' formula cannot: when 0 is
in the convex hull of the gradients, ``min_t g_t . d <= 0`` for every d and the dual's
``lambda = c ||g_0|| / ||g_w||`` divides by ``||g_w*|| = 0`` (weights of 1e4 and more); here the
ball then meets the dual cone ``P_0`` and the method returns the projection of ``g_0`` onto it.
Tasks with an exactly zero gradient have ``g_t . d = 0`` for every d: they cap ``s`` at 0 and
take weight ``1/T`` from the average, as any zero gradient does.

Hyper-parameters:
    c: radius of the conflict-averse ball, relative to ``||g_0||`` (default 0.4).
    rescale: 0, 1 (default) or 2, see above.

Limits: needs the gradients and every task every step. Cost: at most 66 NNLS solves of size
T, a few ms at T = 32 on one CPU thread (benchmarks/weighting.py ``--gram-sizes``); checked
against an SOCP solver (Clarabel) at per-task norm ratios up to 1e16, float64 and float32
(tests/weighting/test_numerics.py).
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor

from polytask.weighting._utils import (
    active_mask,
    check_all_tasks,
    check_gram,
    gram_eps,
    psd_sqrt_factor,
    rescale,
    unit_gram,
)
from polytask.weighting.base import Weighting


def cagrad_weights(K: Tensor, c: float, eps: float = 2.2e-16) -> Tensor:
    """CAGrad coefficients (T,) before the ``rescale`` division; ``K`` (T, T) float64, whose
    entries carry a relative rounding error ``eps`` (float32 Gram matrices: 1.2e-7)."""
    T = K.shape[0]
    A, _ = rescale(K)  # (T, T), largest diagonal 1
    mean = torch.full((T,), 1.0 / T, dtype=K.dtype, device=K.device)  # g_0 = G^T mean
    g0_sq = float(mean @ A @ mean)
    if c <= 0.0 or not g0_sq > 0.0:
        return mean  # c = 0: the average; g_0 = 0: the ball is {0} = {g_0}
    on = active_mask(A).nonzero()[:, 0]
    C, norms = unit_gram(A[on][:, on])  # A_on = D C D
    E = psd_sqrt_factor(C).cpu().numpy()  # (k, k), columns e_t: unit gradients in a basis of their span
    n = norms.cpu().numpy()  # (k,)
    e_g0 = (A @ mean)[on].cpu().numpy() / n  # (k,) e_t . g_0
    levels = LevelSets(E, n, e_g0, r=c * math.sqrt(g0_sq), eps=eps)
    top = float((e_g0 * n + levels.r * n).min())  # no d in the ball does better than g_0 + r e_t
    if len(on) < T:
        top = min(top, 0.0)  # a zero gradient has g_t . d = 0 for every d
    low = min(float((e_g0 * n).min()), top)  # g_0 itself has g_t . g_0 >= low for every t
    beta = levels.best_below(low, top)  # d = g_0 + sum_t beta_t e_t
    alpha = mean.clone()
    alpha[on] += torch.as_tensor(beta / n, dtype=K.dtype, device=K.device)
    return alpha


class LevelSets:
    """The projections of ``g_0`` onto ``P_s = {d : g_t . d >= s for all t}``, on unit gradients.

    ``E`` (k, k): columns ``e_t``; ``n`` (k,): the norms; ``e_g0`` (k,): ``e_t . g_0``; ``r``: the
    ball's radius. All relative to the largest gradient (norm 1). ``eps``: the relative rounding
    error of the cosines.
    """

    def __init__(self, E: np.ndarray, n: np.ndarray, e_g0: np.ndarray, r: float, eps: float):
        self.E, self.n, self.e_g0, self.r = E, n, e_g0, r
        self.C = E.T @ E  # (k, k) cosines, made PSD (a float32 Gram matrix's are not quite)
        self.tol = 100.0 * max(eps, 2.2e-16)  # float64: 2.2e-14; float32: 1.2e-5

    def project(self, s: float) -> np.ndarray | None:
        """``beta`` (k,) >= 0 with ``g_0 + E beta`` the projection of ``g_0`` onto ``P_s``; None if
        ``P_s`` is empty. ``x = E beta`` solves the least-distance problem ``min ||x||`` subject to
        ``e_t . x >= h_t = s / n_t - e_t . g_0`` (Lawson & Hanson, "Solving Least Squares
        Problems", 1974, ch. 23): NNLS of ``[E; h^T] u = (0, .., 0, 1)``, whose residual gives
        ``x``. Columns are scaled to unit norm first (a tiny task's ``h_t`` is huge)."""
        from scipy.optimize import nnls  # imported lazily: scipy is slow to import

        k = self.E.shape[1]
        M = np.vstack([self.E, (s / self.n - self.e_g0)[None, :]])  # (k + 1, k)
        scale = np.linalg.norm(M, axis=0)  # (k,) > 0: every e_t has norm 1
        target = np.zeros(k + 1)
        target[-1] = 1.0
        u, _ = nnls(M / scale, target, maxiter=100 * k)
        residual = (M / scale) @ u - target  # (k + 1,)
        if -residual[-1] <= 1e-14:
            return None  # the residual's last entry is 0 exactly when P_s is empty
        return (u / scale) / -residual[-1]

    def fits(self, s: float) -> tuple[bool, np.ndarray | None]:
        """Whether ``P_s`` meets the ball, and the projection. Checked on the cosines themselves
        (``||x||^2 = beta^T C beta``, ``e_t . x = (C beta)_t``), as the caller will use ``beta``:
        near an empty ``P_s`` (exactly opposite gradients at ``s -> 0``) the multipliers can grow
        and lose accuracy; such a projection does not count as fitting, so the search settles
        on a slightly lower level whose projection is accurate (to ``tol``, relative to the largest
        gradient)."""
        beta = self.project(s)
        if beta is None:
            return False, None
        Cb = self.C @ beta  # (k,) e_t . x
        slack = Cb - (s / self.n - self.e_g0)  # (k,) >= 0: g_t . d >= s
        fits = float(beta @ Cb) <= self.r * self.r and float(slack.min()) >= -self.tol
        return fits, beta

    def best_below(self, low: float, high: float) -> np.ndarray:
        """The projection at the largest level in [low, high] that meets the ball (``low`` does:
        ``g_0`` itself is in ``P_low``); bisection on the float64 bit pattern, so every level
        from 1e-300 to 1 is reached to one ulp in at most 64 steps.

        Levels within ``tol`` above the optimum can pass :meth:`fits` (their constraints are met
        to ``tol``) with multipliers of ``1 / (s - s*)`` (exactly opposite gradients: ``P_s`` is
        a slab of width ``s* - s``). The projection returned is therefore the one ``2 tol`` below
        the level found, where the multipliers are the optimum's (the value moves by ``2 tol``,
        relative to the largest gradient)."""
        found, best = self.fits(high)
        lo, hi = _ordered(low), _ordered(high)
        if not found:
            _, best = self.fits(low)
            best = np.zeros(self.E.shape[1]) if best is None else best  # d = g_0 (rounding at low)
            while hi - lo > 1:
                mid = (lo + hi) // 2
                fits, beta = self.fits(_from_ordered(mid))
                if fits:
                    lo, best = mid, beta
                else:
                    hi = mid
        level = _from_ordered(lo if not found else hi)
        fits, beta = self.fits(max(low, level - 2.0 * self.tol))
        return beta if fits else best


def _ordered(x: float) -> int:
    """An integer key with the order of the floats (adjacent floats: adjacent keys)."""
    bits = int(np.array(x, dtype=np.float64).view(np.int64))
    return bits if bits >= 0 else -(bits & 0x7FFFFFFFFFFFFFFF)


def _from_ordered(key: int) -> float:
    sign = 1.0 if key >= 0 else -1.0
    return sign * float(np.array(abs(key), dtype=np.int64).view(np.float64))


class CAGrad(Weighting):
    needs_grads = True
    needs_all_tasks = True

    def __init__(self, tasks: list[str], *, c: float = 0.4, rescale: int = 1):
        super().__init__(tasks)
        if c < 0 or rescale not in (0, 1, 2):
            raise ValueError("cagrad: c must be >= 0 and rescale one of 0, 1, 2")
        self.c, self.rescale = float(c), int(rescale)

    def combine(self, losses: Tensor, tasks: list[str], gram: Tensor | None = None):
        check_all_tasks(self, tasks)
        T = len(tasks)
        K = check_gram(gram, T, "cagrad")  # (T, T)
        alpha = cagrad_weights(K, self.c, gram_eps(gram))
        alpha = alpha / {0: 1.0, 1: 1.0 + self.c**2, 2: 1.0 + self.c}[self.rescale]
        alpha = alpha.to(device=losses.device, dtype=losses.dtype)
        return self.weighted_sum(losses, alpha), alpha
