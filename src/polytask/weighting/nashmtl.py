"""Nash-MTL: multi-task learning as a bargaining game.

Navon, Shamsian, Achituve, Maron, Kawaguchi, Chechik & Fetaya, "Multi-Task Learning as a
Bargaining Game", ICML 2022.

The Nash bargaining solution is ``d = sum_t alpha_t g_t`` with ``alpha > 0`` solving

    (K alpha)_t = 1 / alpha_t      for every task t.

These are exactly the stationarity conditions of the strictly convex problem
``min_{alpha > 0} 0.5 alpha^T K alpha - sum_t log alpha_t``, solved here with a damped Newton
method (Hessian ``K + diag(1 / alpha^2)``, backtracking that keeps alpha positive); no cvxpy.
The equations are scale-free per task: with ``K = N C N`` (``N`` the diagonal of gradient norms,
``C`` the cosine matrix) and ``b = N alpha`` they read ``(C b)_t b_t = 1``, so the solve runs on
``C`` and ``alpha = b / n``: norms that differ by 1e100 are handled like equal norms. When 0
is in the convex hull of the gradients there is no solution (the objective is unbounded); the solve is then repeated
with a tiny ridge (``ridge * I`` on C), which gives large but finite alpha. At a
solution ``||d||^2 = alpha^T K alpha = T``. Tasks with a zero gradient get alpha 0 (no alpha
can satisfy their equation).

Deviation from the authors' code: no sequential convex approximation (the Newton solve is exact),
no gradient clipping (``max_norm``; the trainer clips) and weights are recomputed every step.

Hyper-parameters:
    max_iter: Newton iterations (default 50); tol: stopping tolerance on the residual
        (default 1e-10); ridge: regularisation of the scaled K (default 1e-8).

Limits: needs the gradients and every task every step. Cost O(T^3) per Newton iteration.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from polytask.weighting._utils import active_mask, check_all_tasks, check_gram, unit_gram
from polytask.weighting.base import Weighting


def _newton(A: Tensor, max_iter: int, tol: float) -> tuple[Tensor, bool]:
    """Damped Newton on ``0.5 a^T A a - sum log a``; returns (a, converged)."""
    T = A.shape[0]

    def f(a: Tensor) -> float:
        return float(0.5 * a @ A @ a - torch.log(a).sum())

    a = A.diagonal().rsqrt()  # (T,) the solution for orthogonal gradients
    quad = float(a @ A @ a)
    if quad > 1e-12:
        a = a * math.sqrt(T / quad)  # best multiple of it
    for _ in range(max_iter):
        grad = A @ a - 1.0 / a  # (T,)
        if float((grad * a).abs().max()) < tol:  # relative residual of (A a) a = 1
            return a, True
        H = A + torch.diag(1.0 / a**2)  # (T, T) positive definite
        step, info = torch.linalg.solve_ex(H, grad)  # (T,)
        if int(info) != 0 or not bool(torch.isfinite(step).all()):
            return a, False
        t, f0, slope = 1.0, f(a), float(grad @ step)
        while t >= 1e-12:  # backtracking: stay positive, decrease f (Armijo)
            new = a - t * step
            if bool((new > 0).all()) and f(new) <= f0 - 1e-4 * t * slope:
                break
            t *= 0.5
        else:
            return a, False
        a = new
    return a, bool(((A @ a) * a - 1.0).abs().max() < tol)


def nash_weights(K: Tensor, max_iter: int = 50, tol: float = 1e-10, ridge: float = 1e-8) -> Tensor:
    """Solve ``(K a) * a = 1``, ``a > 0`` for a (T, T) PSD ``K`` with positive diagonal.

    Exact solve first; if it does not converge (0 in the convex hull: no solution), the ridge
    ``ridge * I`` is added to the scaled K and the solve repeated.
    """
    T = K.shape[0]
    A, n = unit_gram(K)  # (T, T) cosine matrix, (T,) norms: K = diag(n) A diag(n)
    a, ok = _newton(A, max_iter, tol)
    if not ok or not bool(torch.isfinite(a).all()):
        a, _ = _newton(A + ridge * torch.eye(T, dtype=K.dtype, device=K.device), max_iter, tol)
    return a / n


class NashMTL(Weighting):
    needs_grads = True
    needs_all_tasks = True

    def __init__(
        self, tasks: list[str], *, max_iter: int = 50, tol: float = 1e-10, ridge: float = 1e-8
    ):
        super().__init__(tasks)
        self.max_iter, self.tol, self.ridge = int(max_iter), float(tol), float(ridge)

    def combine(self, losses: Tensor, tasks: list[str], gram: Tensor | None = None):
        check_all_tasks(self, tasks)
        T = len(tasks)
        K = check_gram(gram, T, "nashmtl")  # (T, T)
        active = active_mask(K)
        alpha = torch.zeros(T, dtype=K.dtype, device=K.device)
        if active.any():
            on = active.nonzero()[:, 0]
            alpha[on] = nash_weights(K[on][:, on], self.max_iter, self.tol, self.ridge)
        alpha = alpha.to(device=losses.device, dtype=losses.dtype)
        return self.weighted_sum(losses, alpha), alpha
