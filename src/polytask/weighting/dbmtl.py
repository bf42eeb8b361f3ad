"""DB-MTL: dual-balancing multi-task learning.

Lin, Ye, Zhang, Kwok & Zhang, "Dual-Balancing for Multi-Task Learning", arXiv:2308.12029 (2023).

Loss-scale balancing: the model trains on ``log(L_t + eps)``, whose gradient is
``g_t / (L_t + eps)``. Gradient-magnitude balancing: an EMA of the norms of these
log-loss gradients, ``u_t <- beta_k u_t + (1 - beta_k) ||g_t|| / (L_t + eps)`` with
``beta_k = beta / k ** beta_sigma``, and each log-loss gradient is rescaled to the largest EMA
norm ``M = max_s u_s``:

    d = sum_t M * g_t / ||g_t||,       i.e.   alpha_t = M / ||g_t||.

So every task contributes a gradient of the same norm M. Zero gradients get alpha 0.

Deviation from the paper: the paper keeps an EMA of the gradient *vectors* and combines the
EMA vectors; the trainer gives this method only the Gram matrix of the current step, and the
returned direction must lie in the span of the current gradients, so the EMA is kept over the
gradient *norms* and applied to the current (normalised) gradients. The EMA starts at the first
step's norms (no zero-initialisation bias).

Hyper-parameters:
    beta: EMA factor (default 0.9); beta_sigma: decay exponent of beta over steps (default 0.0).
    eps: added to the losses before the log (default 1e-8).

Limits: needs the gradients and every task every step. Cost O(T).
"""

from __future__ import annotations

import torch
from torch import Tensor

from polytask.weighting._utils import active_mask, check_all_tasks, check_gram, grad_norms
from polytask.weighting.base import Weighting


class DBMTL(Weighting):
    needs_grads = True
    needs_all_tasks = True

    def __init__(
        self, tasks: list[str], *, beta: float = 0.9, beta_sigma: float = 0.0, eps: float = 1e-8
    ):
        super().__init__(tasks)
        self.beta, self.beta_sigma, self.eps = float(beta), float(beta_sigma), float(eps)
        self.register_buffer("ema_norms", torch.zeros(len(tasks), dtype=torch.float64))
        self.register_buffer("steps", torch.zeros((), dtype=torch.long))

    def combine(self, losses: Tensor, tasks: list[str], gram: Tensor | None = None):
        check_all_tasks(self, tasks)
        K = check_gram(gram, len(tasks), "dbmtl")  # (T, T)
        idx = self.index(tasks).to(self.ema_norms.device)
        norms = grad_norms(K).to(self.ema_norms)  # (T,) ||g_t||
        L = losses.detach().to(self.ema_norms).clamp(min=0.0) + self.eps  # (T,)
        log_norms = norms / L  # (T,) ||grad log L_t||
        self.steps += 1
        if int(self.steps) == 1:
            self.ema_norms[idx] = log_norms
        else:
            b = self.beta / float(self.steps) ** self.beta_sigma
            self.ema_norms[idx] = b * self.ema_norms[idx] + (1 - b) * log_norms
        M = self.ema_norms[idx].max()
        active = active_mask(K).to(norms.device)
        alpha = torch.where(active, M / norms.clamp(min=1e-300), torch.zeros_like(norms))  # (T,)
        alpha = alpha.to(device=losses.device, dtype=losses.dtype)
        return self.weighted_sum(losses, alpha), alpha
