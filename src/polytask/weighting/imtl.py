"""IMTL-G: impartial multi-task learning, gradient balance.

Liu, Li, Kuang, Xue, Chen, Yang, Liao & Zhang, "Towards Impartial Multi-task Learning",
ICLR 2021.

Finds ``alpha`` with ``sum_t alpha_t = 1`` such that the combined direction
``d = sum_t alpha_t g_t`` has the same projection onto every unit task gradient
``u_t = g_t / ||g_t||``. In closed form, with ``D`` the rows ``g_1 - g_t`` and ``U`` the rows
``u_1 - u_t`` (t = 2..T),

    alpha_{2..T} = g_1 U^T (D U^T)^{-1},     alpha_1 = 1 - sum_{t>=2} alpha_t,

where every product is read off K (``g_s . u_t = K_st / ||g_t||``). Singular systems (linearly
dependent gradients) use the least-squares (pseudo-inverse) solution; tasks with a zero
gradient get alpha 0 and the others are balanced among themselves. ``alpha`` can be negative,
as in the paper.

Hyper-parameters: none.

Limits: needs the gradients and every task every step. Cost O(T^3).
"""

from __future__ import annotations

import torch
from torch import Tensor

from polytask.weighting._utils import active_mask, check_all_tasks, check_gram, grad_norms
from polytask.weighting.base import Weighting


def imtl_g(K: Tensor) -> Tensor:
    """IMTL-G coefficients (T,) for a Gram matrix with non-zero diagonal (T, T)."""
    T = K.shape[0]
    if T == 1:
        return torch.ones(1, dtype=K.dtype, device=K.device)
    GU = K / grad_norms(K)[None, :]  # (T, T) GU[s, t] = g_s . u_t
    # (D U^T)[a, b] = (g_1 - g_a) . (u_1 - u_b), a, b = 2..T
    DU = GU[0, 0] - GU[0, 1:][None, :] - GU[1:, 0][:, None] + GU[1:, 1:]  # (T-1, T-1)
    gU = GU[0, 0] - GU[0, 1:]  # (T-1,) g_1 U^T
    rest = torch.linalg.pinv(DU.T) @ gU  # (T-1,) least squares if singular
    return torch.cat([1.0 - rest.sum().reshape(1), rest])


class IMTLG(Weighting):
    needs_grads = True
    needs_all_tasks = True

    def combine(self, losses: Tensor, tasks: list[str], gram: Tensor | None = None):
        check_all_tasks(self, tasks)
        T = len(tasks)
        K = check_gram(gram, T, "imtl")  # (T, T)
        active = active_mask(K)
        alpha = torch.zeros(T, dtype=K.dtype, device=K.device)
        if active.any():
            on = active.nonzero()[:, 0]
            alpha[on] = imtl_g(K[on][:, on])
        else:
            alpha.fill_(1.0 / T)
        alpha = torch.nan_to_num(alpha).to(device=losses.device, dtype=losses.dtype)
        return self.weighted_sum(losses, alpha), alpha
