"""Aligned-MTL: align the task gradients through the eigendecomposition of their Gram matrix.

Senushkin, Patakin, Kuznetsov & Konushin, "Independent Component Alignment for Multi-Task
Learning", CVPR 2023.

With ``K = V diag(lambda) V^T`` (eigenvalues above a rank tolerance kept), the balance matrix

    B = sigma * V diag(lambda^{-1/2}) V^T

turns the gradients into ``B G``, whose rows are orthogonal with equal norm ``sigma`` (singular
values of the stabilised system all equal; condition number 1). The direction is the sum of the
aligned gradients with unit preferences, ``d = 1^T B G``, so ``alpha = B 1``. ``sigma`` is the
smallest kept singular value ``sqrt(lambda_min)`` (the paper's choice), or their median or RMS.
For orthogonal gradients of equal norm ``B = I`` and ``d`` is the plain sum.

Hyper-parameters:
    scale: "min" (default), "median" or "rmse", the choice of sigma.

Limits: needs the gradients and every task every step. Cost O(T^3) (eigendecomposition).
"""

from __future__ import annotations

import torch
from torch import Tensor

from polytask.weighting._utils import check_all_tasks, check_gram
from polytask.weighting.base import Weighting

SCALES = ("min", "median", "rmse")


class AlignedMTL(Weighting):
    needs_grads = True
    needs_all_tasks = True

    def __init__(self, tasks: list[str], *, scale: str = "min"):
        super().__init__(tasks)
        if scale not in SCALES:
            raise ValueError(f"alignedmtl: scale must be one of {SCALES}")
        self.scale = scale

    def combine(self, losses: Tensor, tasks: list[str], gram: Tensor | None = None):
        check_all_tasks(self, tasks)
        T = len(tasks)
        K = check_gram(gram, T, "alignedmtl")  # (T, T)
        lam, V = torch.linalg.eigh(K)  # (T,), (T, T)
        tol = float(lam.max().clamp(min=0.0)) * T * torch.finfo(torch.float64).eps
        keep = lam > max(tol, 1e-300)
        if not keep.any():  # all gradients zero: any alpha gives d = 0
            alpha = torch.ones(T, dtype=K.dtype, device=K.device)
        else:
            lam, V = lam[keep], V[:, keep]  # (r,), (T, r)
            sigma = {
                "min": lam.min().sqrt(),
                "median": lam.sqrt().median(),
                "rmse": lam.mean().sqrt(),
            }[self.scale]
            B = sigma * (V / lam.sqrt()[None, :]) @ V.T  # (T, T)
            alpha = B.sum(1)  # B symmetric: B 1
        alpha = alpha.to(device=losses.device, dtype=losses.dtype)
        return self.weighted_sum(losses, alpha), alpha
