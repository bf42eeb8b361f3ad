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

When 0 is in the convex hull of the gradients, ``min_t g_t . d <= 0`` for every d, and the
authors' formula divides by ``||g_w*|| = 0`` (weights of 1e4 and more, and a direction that is not
optimal). The optimum is then 0 if the ball meets the dual cone ``{d : g_t . d >= 0 for all t}``,
reached by every point of that intersection; this method returns its point closest to ``g_0``,
the projection of ``g_0`` onto the dual cone (UPGrad's QP with preferences ``1/T``). If the ball
misses the cone, ``g_w* != 0`` and the formula above applies.

Numerics: everything runs on K divided by its largest diagonal entry (w* and alpha do not change),
so all tolerances are relative. The dual is not solved by SLSQP with numerical gradients (the
authors' code; 330 ms at T = 32 and inexact) but exactly: an active-set method on its
optimality conditions (on a support S, ``b_S + A_SS x = nu 1`` with ``x = lambda w`` and
``x^T A x = r^2``, a quadratic in ``nu``), with a slower exact fallback (a 1-D root search over
min-norm problems, see ``_dual_by_radius``); "0 in the hull" is
decided by the exact min-norm point (Wolfe's algorithm, as MGDA) of the *unit* gradients
``g_t / ||g_t||`` (0 is in the hull of the g_t exactly when it is in the hull of their
directions, and on unit vectors a gradient 1e-16 times the largest does not pass for the
origin): its squared norm ``a^T C a`` below ``10 T eps`` times ``|a|^T |C| |a|``, the rounding
error of that sum (eps: 2.2e-16 for a float64 Gram matrix, 1.2e-7 for float32, which cannot
resolve less). A real
gradient 1e-12 times the largest is therefore not zero, and gets the weight the definition
gives it (up to ``c ||g_0|| / ||g_t||``). Tasks with an exactly zero gradient have
``g_t . d = 0`` for every d: they put 0 in the hull (so the cone rule applies) and take weight
``1/T`` from the average, as any zero gradient does.

Hyper-parameters:
    c: radius of the conflict-averse ball, relative to ``||g_0||`` (default 0.4).
    rescale: 0, 1 (default) or 2, see above.

Limits: needs the gradients and every task every step. Cost: Wolfe plus the active-set solve,
about 10 ms at T = 32 on one CPU thread (benchmarks/weighting.py ``--gram-sizes``); when 0 is
near the hull and the norms are spread over many decades, the support search can retry from
every pair of tasks (rare; up to seconds at T = 32). Per-task norm ratios beyond 1e12 can still
miss the optimum (2 of 400 random matrices at ratios up to 1e16; docs/weighting.md).
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
    min_norm_wolfe,
    rescale,
    unit_gram,
)
from polytask.weighting.base import Weighting
from polytask.weighting.upgrad import dual_cone_weights


def cagrad_weights(K: Tensor, c: float, eps: float = 2.2e-16) -> Tensor:
    """CAGrad coefficients (T,) before the ``rescale`` division; ``K`` (T, T) float64."""
    T = K.shape[0]
    A, _ = rescale(K)  # (T, T), largest diagonal 1
    mean = torch.full((T,), 1.0 / T, dtype=K.dtype, device=K.device)  # g_0 = G^T mean
    g0_sq = float(mean @ A @ mean)
    if c <= 0.0 or not g0_sq > 0.0:
        return mean  # c = 0: the average; g_0 = 0: the ball is {0} = {g_0}
    r = c * math.sqrt(g0_sq)
    on = active_mask(A).nonzero()[:, 0]
    k = len(on)
    A_on = A[on][:, on]
    hull_tol = 10.0 * T * max(eps, 2.2e-16)
    in_hull = k < T  # an exactly zero gradient is a point of the hull at 0
    if not in_hull:  # decided on unit gradients: 0 is in the hull of g_t iff in that of g_t/||g_t||
        C_on, _ = unit_gram(A_on)
        in_hull = _is_zero(min_norm_wolfe(C_on), C_on, hull_tol)
    if in_hull:
        v = dual_cone_weights(A, mean[:, None], eps)[:, 0]  # projection of g_0 onto the cone
        dist_sq = float((v - mean) @ A @ (v - mean))
        if dist_sq <= r * r * (1.0 + 1e-9):
            return v
    w = torch.zeros(T, dtype=K.dtype, device=K.device)
    w[on], exact = _dual(A_on, (A @ mean)[on], r, g0_sq)
    gw = math.sqrt(max(float(w @ A @ w), 0.0))
    if in_hull and _is_zero(w, A, hull_tol):
        return v  # F* ~ 0: the cone projection is (numerically) on the sphere
    alpha = mean + (r / max(gw, 1e-300)) * w
    if not exact:
        # no support verified (gradient norms spread over 1e14 and more): of the two feasible
        # candidates, the dual's and the projection of g_0 onto the dual cone, keep the better
        v = dual_cone_weights(A, mean[:, None], eps)[:, 0]
        if float((v - mean) @ A @ (v - mean)) <= r * r and float((A @ v).min()) > float(
            (A @ alpha).min()
        ):
            return v
    return alpha


def _is_zero(w: Tensor, A: Tensor, tol: float) -> bool:
    """``||g_w||^2 = w^T A w`` is zero to its rounding error (``tol`` times the sum of |terms|).

    Relative to the terms, not to the largest gradient: the single vertex of a gradient 1e-12
    times the largest has ``||g_w||^2 = 1e-24``, computed exactly, and is not zero.
    """
    return float(w @ A @ w) <= tol * float(w.abs() @ A.abs() @ w.abs())


def _dual(A: Tensor, b: Tensor, r: float, g0_sq: float) -> tuple[Tensor, bool]:
    """argmin over the simplex of ``w . b + r sqrt(w^T A w)`` (n,), ``A`` with max diagonal 1,
    and whether its optimality conditions were verified.

    An active-set solve of the optimality conditions (:func:`_polish`), started from the most
    conflicting task, is exact and takes a few ms at T = 32; if it finds no support that
    verifies, :func:`_dual_by_radius` solves the dual without a guess and its support is
    polished the same way.
    """
    n = A.shape[0]
    An, bn = A.cpu().numpy(), b.cpu().numpy()
    start = np.zeros(n, dtype=bool)
    start[int(np.argmin(bn))] = True  # the most conflicting task; grown by active-set steps
    w = _polish(An, bn, r, start)
    if w is not None:
        return torch.as_tensor(w, dtype=A.dtype, device=A.device), True

    w = _dual_by_radius(A, b, r, g0_sq)
    wn = w.cpu().numpy()
    for support in _starts(wn, bn):
        polished = _polish(An, bn, r, support)
        if polished is not None:
            return torch.as_tensor(polished, dtype=A.dtype, device=A.device), True
    return w, False


def _starts(w: np.ndarray, b: np.ndarray):
    """Supports to start the active-set solve from, most likely first: the radius solution's,
    every single task, then every pair (gradient norms spread over 1e12 and more, where the
    active-set steps from one task can miss the support; up to T^2 / 2 more tries, only then)."""
    n = len(b)
    yield w > 1e-9 * w.max()
    for t in np.argsort(b)[1:]:
        yield np.arange(n) == t
    for s in range(n):
        for t in range(s + 1, n):
            yield (np.arange(n) == s) | (np.arange(n) == t)


def _dual_by_radius(A: Tensor, b: Tensor, r: float, g0_sq: float) -> Tensor:
    """The dual through the identity ``r ||x|| = min_{l > 0} ||x||^2 / (2 l) + r^2 l / 2``.

    For fixed ``l`` the inner problem ``min_w b . w + ||g_w||^2 / (2 l)`` is the min-norm point
    of the shifted gradients ``g_t + l g_0`` (Gram ``A + l (b 1^T + 1 b^T) + l^2 ||g_0||^2``,
    solved exactly by Wolfe's algorithm), and the optimal ``l`` is the root of the decreasing
    function ``||g_w(l)|| - r l`` (positive as ``l -> 0`` when 0 is not in the hull, negative for
    ``l > 1 / r``), found by Brent's method on ``log l``. Slower than the active-set solve (a
    min-norm solve per step) but needs no guess of the support; used when that fails.
    """
    from scipy.optimize import brentq  # imported lazily: scipy is slow to import

    n = A.shape[0]
    ones = torch.ones(n, dtype=A.dtype, device=A.device)

    def solve(log_l: float) -> tuple[float, Tensor]:
        lam = math.exp(log_l)
        Kl = A + lam * (b[:, None] * ones[None, :] + ones[:, None] * b[None, :]) + lam * lam * g0_sq
        w = min_norm_wolfe(Kl)
        return math.sqrt(max(float(w @ A @ w), 0.0)) - r * lam, w

    hi = math.log(2.0 / r)  # ||g_w|| <= 1 < r l there
    lo = hi - 5.0
    while solve(lo)[0] <= 0.0 and lo > -700.0:
        lo -= 10.0
    if solve(lo)[0] <= 0.0:
        return solve(lo)[1]  # ||g_w|| underflows: the hull touches 0 (handled by the caller)
    root = brentq(lambda t: solve(t)[0], lo, hi, xtol=1e-13, rtol=1e-14, maxiter=200)
    return solve(root)[1]


def _polish(A: np.ndarray, b: np.ndarray, r: float, support: np.ndarray) -> np.ndarray | None:
    """Exact optimality conditions on a support, from an approximate dual solution ``w``.

    With ``x = (r / ||g_w||) w`` (so ``d = g_0 + G^T x``), optimality is: ``(b + A x)_t = nu`` on
    the support S, ``>= nu`` off it, ``x >= 0`` and ``x^T A x = r^2``. On S, ``x = x0 + nu x1``
    (``A_SS x0 = -b_S``, ``A_SS x1 = 1``) and the last condition is a quadratic in ``nu``;
    the larger root (nu is the primal value, maximised) that satisfies the rest is taken. A few
    active-set steps (drop the most negative weight, else add the most violated task) move the
    support from the guess ``support`` (bool, (n,)); returns None if none verifies.
    """
    n = len(support)
    support = support.copy()
    tol = 1e-12 * (1.0 + np.abs(b).max())
    norms = np.sqrt(np.clip(np.diag(A), 1e-300, None))  # (n,) > 0: only active tasks come here
    C = A / norms[:, None] / norms[None, :]  # cosine matrix: A = N C N
    for _ in range(2 * n):
        S = np.nonzero(support)[0]
        # A_SS^+ through the cosine matrix, so small gradients are not cut off against large
        Nin = 1.0 / norms[S]
        P = Nin[:, None] * np.linalg.pinv(C[np.ix_(S, S)], hermitian=True) * Nin[None, :]
        x0, x1 = -(P @ b[S]), P @ np.ones(len(S))
        AS = A[np.ix_(S, S)]
        qa, qb, qc = x1 @ AS @ x1, x0 @ AS @ x1, x0 @ AS @ x0 - r * r
        disc = qb * qb - qa * qc
        if not (qa > 0 and disc >= 0):
            return None
        roots = sorted({(-qb + math.sqrt(disc)) / qa, (-qb - math.sqrt(disc)) / qa}, reverse=True)
        for nu in roots:
            xS = x0 + nu * x1
            if xS.min() < -tol or xS.sum() <= 0:
                continue
            x = np.zeros(n)
            x[S] = np.clip(xS, 0.0, None)
            slack = b + A @ x - nu  # >= 0 off the support
            if slack.min() >= -tol:
                return x / x.sum()
        # active-set correction: drop the most negative weight, or add the most violated task
        xS = x0 + roots[0] * x1
        if xS.min() < -tol:
            support[S[int(np.argmin(xS))]] = False
        else:
            x = np.zeros(n)
            x[S] = xS
            support[int(np.argmin(b + A @ x))] = True
        if not support.any():
            return None
    return None


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
