"""PCGrad: projecting conflicting gradients.

Yu, Kumar, Gupta, Levine, Hausman & Finn, "Gradient Surgery for Multi-Task Learning",
NeurIPS 2020.

For each task i, ``g_i'`` starts at ``g_i``; for every other task j in a random order, if
``g_i' . g_j < 0`` then ``g_i' <- g_i' - (g_i' . g_j / ||g_j||^2) g_j`` (projection onto the normal
plane of g_j). The direction is ``d = sum_i g_i'`` (the paper's sum). Each ``g_i'`` is tracked as a
coefficient vector over the original gradients, so all dot products come from K; ``alpha`` is
the sum of those vectors. The random orders come from the method's own generator.

Hyper-parameters:
    seed: seed of the method-owned generator (default 0); its state is saved in the state dict.

Limits: needs the gradients and every task every step. Cost O(T^3) (T^2 projections, each O(T)).
"""

from __future__ import annotations

import torch
from torch import Tensor

from polytask.weighting._utils import (
    SeededGenerator,
    cosine_frame,
    check_all_tasks,
    check_gram,
)
from polytask.weighting.base import Weighting


def pcgrad_coefficients(K: Tensor, orders: list[list[int]]) -> Tensor:
    """Projected gradients as coefficients over G (T, T): row i is ``g_i'``.

    ``orders[i]`` is the order in which task i meets the other tasks. ``K`` (T, T) float64.

    The projections run on the cosine matrix (unit gradients ``u_t = g_t / ||g_t||``), with
    ``g_i' / ||g_i||`` as the tracked vector, and are mapped back at the end: a projection
    ``x - (x . u_j) u_j`` needs no division, so norms that differ by 1e100 are handled exactly
    as equal norms. Exactly-zero gradients are never projected onto (there is no normal plane)
    and their own row stays ``e_i`` (``g_i' = 0``).
    """
    active, C, on, cos, n = cosine_frame(K)
    if len(on) == 0:
        return C
    for i in on.tolist():
        for j in orders[i]:
            if j == i or not active[j]:
                continue
            dot = C[i] @ cos[:, j]  # (g_i' . u_j) / ||g_i||
            if dot < 0:
                C[i, j] -= dot
    # back to coefficients over G: g_i' = ||g_i|| sum_k C[i, k] g_k / ||g_k||
    return (C * n[:, None]) / n[None, :]


class PCGrad(SeededGenerator, Weighting):
    needs_grads = True
    needs_all_tasks = True

    def __init__(self, tasks: list[str], *, seed: int = 0):
        super().__init__(tasks)
        self._init_generator(seed)

    def combine(self, losses: Tensor, tasks: list[str], gram: Tensor | None = None):
        check_all_tasks(self, tasks)
        T = len(tasks)
        K = check_gram(gram, T, "pcgrad")  # (T, T)
        orders = [torch.randperm(T, generator=self.generator).tolist() for _ in range(T)]
        alpha = pcgrad_coefficients(K, orders).sum(0)  # (T,)
        alpha = alpha.to(device=losses.device, dtype=losses.dtype)
        return self.weighted_sum(losses, alpha), alpha
