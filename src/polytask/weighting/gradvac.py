"""GradVac: gradient vaccine, aligning task gradients to adaptive similarity targets.

Wang, Tsvetkov, Firat & Cao, "Gradient Vaccine: Investigating and Improving Multi-task
Optimization in Massively Multilingual Models", ICLR 2021.

Keeps an EMA target ``phi_ij`` of the cosine similarity of every task pair (starting at 0). For
each task i, ``g_i'`` starts at ``g_i``; for every other task j in a random order, with
``cos = cos(g_i', g_j)``: if ``cos < phi_ij``,

    g_i' <- g_i' + ||g_i'|| (phi_ij sqrt(1 - cos^2) - cos sqrt(1 - phi_ij^2))
                   / (||g_j|| sqrt(1 - phi_ij^2)) * g_j

which raises the cosine to exactly ``phi_ij``; then ``phi_ij <- (1 - beta) phi_ij + beta cos``.
The direction is ``d = sum_i g_i'``, tracked as coefficients over the original gradients.
With targets at 0 the first step is PCGrad. Pairs whose gradients already meet their target
are left alone.

Deviation from the paper: the paper applies the rule per parameter group (layer); here it acts
on the whole gradient of the balance space, which is what the Gram matrix describes.

Hyper-parameters:
    beta: EMA rate of the targets (default 0.01, the paper's value).
    seed: seed of the method-owned generator for the random orders (default 0).

Limits: needs the gradients and every task every step. Cost O(T^3).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from polytask.weighting._utils import (
    SeededGenerator,
    cosine_frame,
    check_all_tasks,
    check_gram,
)
from polytask.weighting.base import Weighting


def gradvac_coefficients(
    K: Tensor, targets: Tensor, orders: list[list[int]], beta: float
) -> Tensor:
    """Vaccinated gradients as coefficients over G (T, T): row i is ``g_i'``.

    ``targets`` (T, T) holds the EMA targets of these tasks, in K's order, and is updated in
    place; ``orders[i]`` is the order in which task i meets the other tasks.

    As in PCGrad, the updates run on the cosine matrix with ``g_i' / ||g_i||`` over the unit
    gradients, and are mapped back at the end, so any ratio of norms float64 can hold is
    handled alike. Exactly-zero gradients are skipped (no cosine exists) and keep ``g_i' = 0``.
    """
    active, C, on, cosm, n = cosine_frame(K)
    if len(on) == 0:
        return C
    for i in on.tolist():
        for j in orders[i]:
            if j == i or not active[j]:
                continue
            sq = float(C[i] @ cosm @ C[i])
            if sq <= 0.0:
                break  # g_i' vanished: nothing left to align
            norm_i = math.sqrt(sq)  # ||g_i'|| / ||g_i||; ||u_j|| = 1
            cos = max(-1.0, min(1.0, float(C[i] @ cosm[:, j]) / norm_i))
            target = float(targets[i, j])
            if cos < target:
                s_t = math.sqrt(max(1.0 - target * target, 1e-12))
                s_c = math.sqrt(max(1.0 - cos * cos, 0.0))
                C[i, j] += norm_i * (target * s_c - cos * s_t) / s_t
            targets[i, j] = (1 - beta) * target + beta * cos
    return (C * n[:, None]) / n[None, :]


class GradVac(SeededGenerator, Weighting):
    needs_grads = True
    needs_all_tasks = True

    def __init__(self, tasks: list[str], *, beta: float = 0.01, seed: int = 0):
        super().__init__(tasks)
        self.beta = float(beta)
        self._init_generator(seed)
        T = len(tasks)
        self.register_buffer("targets", torch.zeros(T, T, dtype=torch.float64))  # phi_ij

    def combine(self, losses: Tensor, tasks: list[str], gram: Tensor | None = None):
        check_all_tasks(self, tasks)
        T = len(tasks)
        K = check_gram(gram, T, "gradvac")  # (T, T)
        idx = self.index(tasks).to(self.targets.device)
        targets = self.targets[idx][:, idx].to(K)  # (T, T) in this step's order
        orders = [torch.randperm(T, generator=self.generator).tolist() for _ in range(T)]
        C = gradvac_coefficients(K, targets, orders, self.beta)
        self.targets[idx[:, None], idx[None, :]] = targets.to(self.targets)
        alpha = C.sum(0).to(device=losses.device, dtype=losses.dtype)  # (T,)
        return self.weighted_sum(losses, alpha), alpha
