"""IMTL-G: impartial multi-task learning, gradient balance.

Liu, Li, Kuang, Xue, Chen, Yang, Liao & Zhang, "Towards Impartial Multi-task Learning",
ICLR 2021.

Finds ``alpha`` with ``sum_t alpha_t = 1`` such that the combined direction
``d = sum_t alpha_t g_t`` has the same projection onto every unit task gradient
``u_t = g_t / ||g_t||``. The paper's closed form, with ``D`` the rows ``g_1 - g_t`` and ``U`` the
rows ``u_1 - u_t`` (t = 2..T), is

    alpha_{2..T} = g_1 U^T (D U^T)^{-1},     alpha_1 = 1 - sum_{t>=2} alpha_t.

Here the same conditions are solved in a scale-free form: with ``K = N C N`` (``N`` the
diagonal of gradient norms, ``C`` the cosine matrix) and ``y = N alpha / min(n)``, the
conditions ``u_t . d = c`` for all t and ``sum alpha = 1`` are the bordered linear system

    C y - c 1 = 0,     sum_t y_t min(n) / n_t = 1,

whose solution is the paper's when it is unique. Singular systems (linearly dependent
gradients, exact opposites) take the minimum-norm least-squares solution, which satisfies the
conditions whenever any alpha does (e.g. ``g, -g`` gives ``alpha = (1/2, 1/2)``, both
projections 0). Solving on ``C`` makes the result independent of the norms' scale, so a task
1e-12 times smaller than another is balanced like any other. Tasks with an exactly zero
gradient get alpha 0 (``u_t`` does not exist) and the others are balanced among themselves.
``alpha`` can be negative, as in the paper.

Hyper-parameters: none.

Limits: needs the gradients and every task every step. Cost O(T^3).
"""

from __future__ import annotations

import torch
from torch import Tensor

from polytask.weighting._utils import active_mask, check_all_tasks, check_gram, unit_gram
from polytask.weighting.base import Weighting


def imtl_g(K: Tensor) -> Tensor:
    """IMTL-G coefficients (T,) for a Gram matrix with non-zero diagonal (T, T)."""
    T = K.shape[0]
    if T == 1:
        return torch.ones(1, dtype=K.dtype, device=K.device)
    C, n = unit_gram(K)  # K = diag(n) C diag(n)
    r = n.min() / n  # (T,) in (0, 1]
    M = torch.zeros(T + 1, T + 1, dtype=K.dtype, device=K.device)
    M[:T, :T] = C
    M[:T, T] = -1.0
    M[T, :T] = r
    rhs = torch.zeros(T + 1, dtype=K.dtype, device=K.device)
    rhs[T] = 1.0
    y = (torch.linalg.pinv(M) @ rhs)[:T]  # minimum-norm least squares if singular
    alpha = y * r  # alpha_t = y_t min(n) / n_t
    total = alpha.sum()
    if not bool(torch.isfinite(alpha).all()) or float(total.abs()) == 0.0:
        return torch.full((T,), 1.0 / T, dtype=K.dtype, device=K.device)
    return alpha / total  # exactly 1 when the system is consistent


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
