"""UPGrad: unconflicting projection of gradients.

Quinton & Rey, "Jacobian Descent for Multi-Objective Optimization", arXiv:2406.16700 (2024).

Each task gradient ``g_i`` is projected onto the dual cone of the gradients,
``{x : g_t . x >= 0 for all t}``; the direction is the mean of the projections. The projection of
``G^T u`` is ``G^T v*`` with

    v* = argmin_{v >= u} v^T K v,

a small non-negative QP: with ``v = u + z``, ``z >= 0`` and ``R^T R = K`` (eigendecomposition),
it is ``min_z ||R z + R u||`` solved exactly by ``scipy.optimize.nnls``. Here ``u = e_i / T``
and ``alpha = sum_i v*_i``. Its KKT conditions give ``K v*_i >= 0``, so the direction never
conflicts with any task: ``g_t . d >= 0`` for all t. If the gradients do not conflict, d is the
average gradient.

Hyper-parameters: none (uniform preferences, as the paper's default).

Limits: needs the gradients and every task every step. Cost: T NNLS solves of size T, O(T^4)
worst case; fine for tens of tasks.
"""

from __future__ import annotations

import torch
from torch import Tensor

from polytask.weighting._utils import check_all_tasks, check_gram, psd_sqrt_factor
from polytask.weighting.base import Weighting


def upgrad_weights(K: Tensor) -> Tensor:
    """UPGrad coefficients (T,) from the Gram matrix (T, T) float64."""
    from scipy.optimize import nnls  # imported lazily: scipy is slow to import

    T = K.shape[0]
    scale = float(K.diagonal().max())
    if scale <= 0.0:
        return torch.full((T,), 1.0 / T, dtype=K.dtype, device=K.device)
    R = psd_sqrt_factor(K / scale).cpu().numpy()  # (T, T), R^T R = K / scale
    alpha = torch.zeros(T, dtype=torch.float64)
    for i in range(T):
        u = torch.zeros(T, dtype=torch.float64)
        u[i] = 1.0 / T
        z, _ = nnls(R, -(R @ u.numpy()), maxiter=50 * T)
        alpha += u + torch.as_tensor(z)
    return alpha.to(device=K.device)


class UPGrad(Weighting):
    needs_grads = True
    needs_all_tasks = True

    def combine(self, losses: Tensor, tasks: list[str], gram: Tensor | None = None):
        check_all_tasks(self, tasks)
        K = check_gram(gram, len(tasks), "upgrad")  # (T, T)
        alpha = upgrad_weights(K).to(device=losses.device, dtype=losses.dtype)
        return self.weighted_sum(losses, alpha), alpha
