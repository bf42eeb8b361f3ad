"""MGDA: the min-norm point of the convex hull of the task gradients.

Sener & Koltun, "Multi-Task Learning as Multi-Objective Optimization", NeurIPS 2018.

Solves ``min_{a in simplex} || sum_t a_t g_t / n_t ||^2`` from the Gram matrix, by default
exactly with Wolfe's min-norm-point algorithm (Wolfe 1976; for two tasks it is the paper's closed
form), or with the paper's Frank-Wolfe (Algorithm 2: exact line search, started from the best
pair), which is approximate when the optimum lies on a face. ``n_t`` is the gradient normaliser:

    none: 1;  l2: ||g_t||;  loss: L_t;  loss+: L_t * ||g_t||.

The combined direction is the min-norm point of the *normalised* gradients,
``d = sum_t (a_t / n_t) g_t``, so the coefficients are ``alpha_t = a_t / n_t``. (The authors'
code applies ``a`` to the raw losses instead; dividing by ``n_t`` keeps ``d`` a common descent
direction of all tasks, since positive rescaling does not change the signs of inner products.)
With ``none`` the coefficients sum to 1.

Numerics: the solvers run on the normalised Gram matrix divided by its largest diagonal entry
(``a`` does not change with a global scale), so their tolerances and the pseudo-inverse cut-off
of Wolfe's bordered system are relative, and norms from 1e-150 to 1e150 (or losses of 1e-3 with
``normalization: loss``) give the same ``a``. A task with an exactly zero gradient makes 0 the
min-norm point: all its weight goes to that task (d = 0), which is the definition.

Hyper-parameters:
    normalization: "none" (default), "l2", "loss" or "loss+".
    solver: "wolfe" (default, exact) or "frank-wolfe" (the paper's).
    max_iter: Frank-Wolfe iterations (default 250); tol: its stopping tolerance (default 1e-7).

Limits: needs the gradients and every task every step. Cost: Wolfe O(T^3) per major step, a few
steps in practice; Frank-Wolfe O(T^2) per iteration plus O(T^3) for the pairwise start.
"""

from __future__ import annotations

import torch
from torch import Tensor

from polytask.weighting._utils import (
    ABS_EPS,
    active_mask,
    check_all_tasks,
    check_gram,
    grad_norms,
    min_norm_simplex,
    min_norm_wolfe,
    rescale,
)
from polytask.weighting.base import Weighting

NORMALIZATIONS = ("none", "l2", "loss", "loss+")
SOLVERS = ("wolfe", "frank-wolfe")


class MGDA(Weighting):
    needs_grads = True
    needs_all_tasks = True

    def __init__(
        self,
        tasks: list[str],
        *,
        normalization: str = "none",
        solver: str = "wolfe",
        max_iter: int = 250,
        tol: float = 1e-7,
    ):
        super().__init__(tasks)
        if normalization not in NORMALIZATIONS:
            raise ValueError(f"mgda: normalization must be one of {NORMALIZATIONS}")
        if solver not in SOLVERS:
            raise ValueError(f"mgda: solver must be one of {SOLVERS}")
        self.normalization, self.solver = normalization, solver
        self.max_iter, self.tol = int(max_iter), float(tol)

    def combine(self, losses: Tensor, tasks: list[str], gram: Tensor | None = None):
        check_all_tasks(self, tasks)
        K = check_gram(gram, len(tasks), "mgda")  # (T, T)
        L = losses.detach().to(K).clamp(min=ABS_EPS)  # (T,)
        norms = torch.where(active_mask(K), grad_norms(K), torch.ones_like(L))  # (T,), 1 if g_t=0
        n = {
            "none": torch.ones_like(L),
            "l2": norms,
            "loss": L,
            "loss+": L * norms,
        }[self.normalization]  # (T,)
        Kn = (K / n[:, None]) / n[None, :]  # (T, T) Gram of the normalised gradients
        Kn, _ = rescale(Kn)  # the simplex weights a do not change with a global scale
        if self.solver == "wolfe":
            a = min_norm_wolfe(Kn)  # (T,)
        else:
            a = min_norm_simplex(Kn, self.max_iter, self.tol)
        alpha = (a / n).to(device=losses.device, dtype=losses.dtype)
        return self.weighted_sum(losses, alpha), alpha
