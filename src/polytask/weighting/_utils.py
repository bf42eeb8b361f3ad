"""Small helpers shared by the weighting methods (not part of the public API).

Everything here works on the Gram matrix ``K = G G^T`` of the task gradients, in float64, so
the methods stay readable: a method turns ``K`` into coefficients ``alpha`` (T,) and the trainer
back-propagates ``sum_t alpha_t L_t``.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

#: Relative threshold under which a squared gradient norm counts as zero.
REL_EPS = 1e-12
#: Absolute floor for divisions (norms, losses).
ABS_EPS = 1e-20


def gram_eps(gram: Tensor) -> float:
    """Relative rounding error of the Gram matrix as it was passed (float32: 1.2e-7, else 2.2e-16)."""
    dtype = gram.dtype if gram.is_floating_point() else torch.float64
    return max(float(torch.finfo(dtype).eps), float(torch.finfo(torch.float64).eps))


def check_gram(gram: Tensor | None, n: int, name: str) -> Tensor:
    """Validate the Gram matrix and return it detached, symmetrised, in float64 (n, n)."""
    if gram is None:
        raise ValueError(f"weighting '{name}' needs the Gram matrix of the task gradients")
    if gram.shape != (n, n):
        shape = tuple(gram.shape)
        raise ValueError(f"weighting '{name}': gram has shape {shape}, expected ({n}, {n})")
    K = gram.detach().to(torch.float64)
    K = 0.5 * (K + K.T)  # (T, T)
    if not torch.isfinite(K).all():
        raise ValueError(f"weighting '{name}': gram contains non-finite values")
    return K


def check_all_tasks(method, tasks: list[str]) -> None:
    """Raise unless ``tasks`` is a permutation of ``method.tasks`` (for ``needs_all_tasks``)."""
    if len(tasks) != len(method.tasks) or set(tasks) != set(method.tasks):
        raise ValueError(
            f"weighting '{type(method).__name__}' needs every task in every step; "
            f"got {tasks}, expected {method.tasks}"
        )


def active_mask(K: Tensor) -> Tensor:
    """(T,) bool: tasks whose gradient is not exactly zero (``K_tt > 0``).

    No relative cut-off: a gradient 1e-12 times smaller than the largest is a real gradient,
    and every method handles it through :func:`unit_gram` (per-task scaling) or
    :func:`rescale` (global scaling). Only an exactly zero gradient (or one whose squared norm
    underflows float64) is left out, and each method says what it does with it.
    """
    return K.diagonal() > 0.0


def rescale(K: Tensor) -> tuple[Tensor, float]:
    """``(K / s, s)`` with ``s`` the largest diagonal entry (1 if K is zero).

    Every gradient method solves its problem on the rescaled matrix, whose entries lie in
    [-1, 1], so solver tolerances and pseudo-inverse cut-offs mean the same at every scale.
    """
    s = float(K.diagonal().max()) if K.numel() else 0.0
    if not s > 0.0:
        return K, 1.0
    return K / s, s


def unit_gram(K: Tensor) -> tuple[Tensor, Tensor]:
    """Cosine matrix and norms of the (all non-zero) gradients: ``K = D C D``, ``D = diag(n)``.

    Returns ``(C (T, T), n (T,))``; ``C`` has a unit diagonal and entries clipped to [-1, 1]
    (float32 Gram matrices can be slightly inconsistent). Methods that are invariant to
    rescaling each task gradient (up to a known change of the coefficients) solve on ``C``,
    so tasks whose norms differ by 1e16 are handled as well as equal-norm tasks.
    """
    n = K.diagonal().clamp(min=0.0).sqrt()  # (T,)
    C = (K / n[:, None]) / n[None, :]
    C = C.clamp(-1.0, 1.0)
    C.diagonal().fill_(1.0)
    return C, n


def grad_norms(K: Tensor) -> Tensor:
    """(T,) gradient norms ``sqrt(K_tt)``, clamped at zero."""
    return K.diagonal().clamp(min=0.0).sqrt()


def min_norm_2(k11: float, k12: float, k22: float) -> float:
    """Weight ``gamma`` on g1 of the min-norm point ``gamma g1 + (1-gamma) g2``, gamma in [0, 1].

    Closed form of Sener & Koltun (2018), Algorithm 1; equal gradients give 0.5.
    """
    denom = k11 + k22 - 2.0 * k12  # ||g1 - g2||^2
    if denom <= REL_EPS * max(k11, k22, ABS_EPS):
        return 0.5
    return min(max((k22 - k12) / denom, 0.0), 1.0)


def min_norm_simplex(K: Tensor, max_iter: int = 250, tol: float = 1e-7) -> Tensor:
    """argmin over the simplex of ``a^T K a``: the min-norm point of the convex hull (T,).

    Frank-Wolfe with exact line search, started from the best pair (Sener & Koltun 2018,
    Algorithm 2). ``K`` (T, T) float64.
    """
    T = K.shape[0]
    if T == 1:
        return torch.ones(1, dtype=K.dtype, device=K.device)
    # start from the best pairwise min-norm point
    best, a = None, None
    for i in range(T):
        for j in range(i + 1, T):
            g = min_norm_2(float(K[i, i]), float(K[i, j]), float(K[j, j]))
            cost = g * g * K[i, i] + 2 * g * (1 - g) * K[i, j] + (1 - g) ** 2 * K[j, j]
            if best is None or cost < best:
                best = float(cost)
                a = torch.zeros(T, dtype=K.dtype, device=K.device)
                a[i], a[j] = g, 1.0 - g
    for _ in range(max_iter):
        Ka = K @ a  # (T,)
        t = int(torch.argmin(Ka))
        # line search between v = G^T a and g_t: min ||(1-gamma) v + gamma g_t||^2
        gamma = 1.0 - min_norm_2(float(a @ Ka), float(Ka[t]), float(K[t, t]))
        new = (1.0 - gamma) * a
        new[t] += gamma
        if (new - a).abs().sum() < tol:
            a = new
            break
        a = new
    return a


def min_norm_wolfe(K: Tensor, max_iter: int = 1000) -> Tensor:
    """argmin over the simplex of ``a^T K a``, exactly, by Wolfe's min-norm-point algorithm (T,).

    P. Wolfe, "Finding the nearest point in a polytope", Math. Programming 11 (1976). Works on
    inner products only: keeps a "corral" S of affinely independent points and the affine
    minimiser over S, dropping points whose barycentric weight goes non-positive. Terminates
    in finitely many steps; ``K`` (T, T) float64.
    """
    T = K.shape[0]
    K, scale = rescale(K)  # tolerances and the pseudo-inverse cut-off are relative to max K_tt
    a = torch.zeros(T, dtype=K.dtype, device=K.device)
    if T == 1 or float(K.diagonal().max()) <= 0.0:
        return a.fill_(1.0 / T) if T > 1 else a.fill_(1.0)
    # stop when the Frank-Wolfe gap x.x - min_t p_t.x (an upper bound on x.x - min) is within
    # the rounding error of the sums that compute it (relative to their terms, not to the
    # largest gradient: a gradient 1e-12 times the largest is resolved as well as any other)
    tol = 100.0 * T * float(torch.finfo(torch.float64).eps)
    Kabs = K.abs()
    prev, prev_a = math.inf, a
    a[int(torch.argmin(K.diagonal()))] = 1.0
    S = [int(torch.argmin(K.diagonal()))]
    for _ in range(max_iter):
        Ka = K @ a  # (T,) p_t . x
        j = int(torch.argmin(Ka))
        xx = float(a @ Ka)
        Kabs_a = Kabs @ a  # (T,) sums of |terms| of K a
        noise = max(float(a @ Kabs_a), float(Kabs_a[j]))
        if xx >= prev:  # rounding stalled the decrease: keep the previous point
            a = prev_a
            break
        if xx - float(Ka[j]) <= tol * noise or j in S:
            break  # x is (numerically) the nearest point
        prev, prev_a = xx, a.clone()
        S.append(j)
        while True:  # minor cycle: move towards the affine minimiser of S
            mu = affine_minimiser(K, S)
            if bool((mu > 1e-15).all()):
                a.zero_()
                a[S] = mu
                break
            cur = a[S]
            neg = mu <= 1e-15
            theta = float(torch.min(cur[neg] / (cur[neg] - mu[neg]).clamp(min=1e-300)))
            theta = min(max(theta, 0.0), 1.0)
            new = cur + theta * (mu - cur)
            a.zero_()
            a[S] = new.clamp(min=0.0)
            S = [s for s in S if float(a[s]) > 1e-15]
            a[[t for t in range(T) if t not in S]] = 0.0
            if not S:  # numerical breakdown: restart from the best vertex
                j = int(torch.argmin(K.diagonal()))
                a.zero_()
                a[j], S = 1.0, [j]
                break
    return a / a.sum()


def affine_minimiser(K: Tensor, S: list[int]) -> Tensor:
    """Weights (len(S),) summing to 1 of the min-norm point of the affine hull of the points S.

    Solves the bordered system ``[[K_S, 1], [1^T, 0]] [mu; lambda] = [0; 1]``. The minimiser
    does not change with a scale of K_S: K_S is scaled to unit largest diagonal, so the
    pseudo-inverse cut-off does not drop a corral of small gradients against the border's ones.
    """
    n = len(S)
    M = torch.zeros(n + 1, n + 1, dtype=K.dtype, device=K.device)
    KS = K[S][:, S]
    M[:n, :n] = KS / KS.diagonal().max().clamp(min=1e-300)
    M[:n, n] = M[n, :n] = 1.0
    rhs = torch.zeros(n + 1, dtype=K.dtype, device=K.device)
    rhs[n] = 1.0
    return (torch.linalg.pinv(M) @ rhs)[:n]


def cosine_frame(K: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """The set-up of the projection methods that work on unit gradients (PCGrad, GradVac).

    Returns ``(active, C, on, cos, n)``: the mask of non-zero gradients (T,), the identity (T, T)
    as starting coefficients of ``g_i' / ||g_i||`` over the unit gradients, the indices of the
    active tasks, their cosine matrix (T, T; zero rows and columns for inactive tasks) and the
    gradient norms (T,; 1 for inactive tasks, so mapping back divides by nothing zero).
    """
    T = K.shape[0]
    active = active_mask(K)  # (T,)
    C = torch.eye(T, dtype=K.dtype, device=K.device)
    on = active.nonzero()[:, 0]
    cos = torch.zeros_like(K)
    n = torch.ones(T, dtype=K.dtype, device=K.device)
    if len(on):
        cos[on[:, None], on[None, :]], n[on] = unit_gram(K[on][:, on])
    return active, C, on, cos, n


def psd_sqrt_factor(K: Tensor) -> Tensor:
    """R (T, T) with ``R^T R = K`` (K clipped to its PSD part), via eigendecomposition."""
    lam, V = torch.linalg.eigh(K)  # (T,), (T, T)
    return lam.clamp(min=0.0).sqrt()[:, None] * V.T


class SeededGenerator:
    """Mixin for methods that draw random numbers: a method-owned ``torch.Generator``.

    Seeded from the ``seed`` hyper-parameter; its state travels in ``state_dict`` (extra state),
    so a resumed run draws the same numbers as an uninterrupted one.
    """

    def _init_generator(self, seed: int) -> None:
        self.seed = int(seed)
        self.generator = torch.Generator().manual_seed(self.seed)

    def get_extra_state(self) -> dict:
        return {"generator": self.generator.get_state()}

    def set_extra_state(self, state: dict) -> None:
        self.generator.set_state(state["generator"].detach().cpu().to(torch.uint8))
