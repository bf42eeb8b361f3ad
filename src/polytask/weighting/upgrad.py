"""UPGrad: unconflicting projection of gradients.

Quinton & Rey, "Jacobian Descent for Multi-Objective Optimization", arXiv:2406.16700 (2024).

Each task gradient ``g_i`` is projected onto the dual cone of the gradients,
``{x : g_t . x >= 0 for all t}``; the direction is the mean of the projections. The projection of
``G^T u`` is ``G^T v*`` with

    v* = argmin_{v >= u} v^T K v,

a small non-negative QP (the paper's Proposition on the dual of the projection). Here
``u = e_i / T`` and ``alpha = sum_i v*_i``. Its KKT conditions give ``K v*_i >= 0``, so the
direction never conflicts with any task: ``g_t . d >= 0`` for all t. If the gradients do not
conflict, d is the average gradient.

Numerics (see docs/weighting.md, "Numerics"):
- the QP is solved on the cosine matrix ``C = D^-1 K D^-1`` (``D`` the gradient norms), with
  ``w = D v``: the constraint ``v >= u`` becomes ``w >= D u``, so per-task scales from 1e-150 to
  1e150 are handled alike. With ``R^T R = C`` (eigendecomposition) each solve is
  ``min_{z >= 0} ||R (w0 + z)||^2 + rho ||z||^2`` by ``scipy.optimize.nnls``. The tiny ridge
  ``rho`` (the rounding error of the Gram matrix's dtype, times T) selects the smallest ``z``
  when K is singular (duplicated, opposite or zero gradients, T > dim), where the dual has a
  whole line of solutions giving the same direction; without it the solver may return weights
  of 1e16. It moves the direction by at most ``sqrt(rho) ||z||`` relative to the largest norm.
- a task with an exactly zero gradient has no constraint (``0 . x >= 0`` always) and projects
  to 0: its weight is its preference ``1/T``, and it is left out of the other solves.

Hyper-parameters: none (uniform preferences, as the paper's default).

Limits: needs the gradients and every task every step. Cost: T NNLS solves of size T, O(T^4)
worst case; fine for tens of tasks.
"""

from __future__ import annotations

import torch
from torch import Tensor

import math

import numpy as np

from polytask.weighting._utils import (
    check_all_tasks,
    check_gram,
    gram_eps,
    psd_sqrt_factor,
    unit_gram,
)
from polytask.weighting.base import Weighting


def dual_cone_weights(K: Tensor, u: Tensor, eps: float = 2.2e-16) -> Tensor:
    """``argmin_{v >= u} v^T K v`` for each column of ``u`` (T, m): the projection of ``G^T u``
    onto the dual cone of the gradients is ``G^T v``. ``K`` (T, T) float64, ``u >= 0``.

    Exactly-zero gradients keep ``v = u``. Returns (T, m).
    """
    from scipy.optimize import nnls  # imported lazily: scipy is slow to import

    T, m = u.shape
    v = u.clone()
    on = (K.diagonal() > 0.0).nonzero()[:, 0]
    if len(on) == 0:
        return v
    C, n = unit_gram(K[on][:, on])  # K_on = D C D
    k = len(on)
    R = psd_sqrt_factor(C).cpu().numpy()  # (k, k), R^T R = C
    rho = max(eps, 2.2e-16) * k
    A = np.vstack([R, math.sqrt(rho) * np.eye(k)])  # (2k, k)
    for col in range(m):
        w0 = (n * u[on, col]).cpu().numpy()  # (k,) w = D v >= D u
        top = float(w0.max())
        if top <= 0.0:
            continue
        w0 = w0 / top  # the problem is homogeneous: solve with max(w0) = 1
        b = np.concatenate([-(R @ w0), np.zeros(k)])
        z, _ = nnls(A, b, maxiter=50 * k)
        w = torch.as_tensor((w0 + z) * top, dtype=K.dtype)
        v[on, col] = (w / n.cpu()).to(v)
    return v


def upgrad_weights(K: Tensor, eps: float = 2.2e-16) -> Tensor:
    """UPGrad coefficients (T,) from the Gram matrix (T, T) float64.

    ``eps``: relative rounding error of the Gram matrix (see :func:`gram_eps`).
    """
    T = K.shape[0]
    u = torch.eye(T, dtype=K.dtype, device=K.device) / T  # column i: e_i / T
    return dual_cone_weights(K, u, eps).sum(1)


class UPGrad(Weighting):
    needs_grads = True
    needs_all_tasks = True

    def combine(self, losses: Tensor, tasks: list[str], gram: Tensor | None = None):
        check_all_tasks(self, tasks)
        K = check_gram(gram, len(tasks), "upgrad")  # (T, T)
        alpha = upgrad_weights(K, gram_eps(gram)).to(device=losses.device, dtype=losses.dtype)
        return self.weighted_sum(losses, alpha), alpha
