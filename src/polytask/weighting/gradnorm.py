"""GradNorm: balance the task gradient norms with learned weights.

Chen, Badrinarayanan, Lee & Rabinovich, "GradNorm: Gradient Normalization for Adaptive Loss
Balancing in Deep Multitask Networks", ICML 2018.

Learned weights ``w_t`` (an ``nn.Parameter``) scale the losses. With ``n_t = ||g_t||`` the norm of
task t's gradient in the balance space (``sqrt(K_tt)``, detached), the relative inverse training
rate ``r_t = (L_t / L_t(0)) / mean_s (L_s / L_s(0))`` and ``Gbar = mean_s w_s n_s`` (detached),

    gradnorm_loss = sum_t | w_t n_t - Gbar * r_t ** alpha |
    total         = sum_t w_t.detach() * L_t + gradnorm_loss

so the model follows ``sum_t w_t g_t`` and the weights (only) are pushed towards equal
``w_t n_t`` scaled by the training rates. At the start of every ``combine`` the weights are
clamped positive and renormalised to sum to T (no_grad), as in the paper. ``L_t(0)`` are the
losses of the first step seen. Reported weights are the renormalised ``w``.

Hyper-parameters:
    alpha: asymmetry, strength of the pull towards equal training rates (default 1.5).

Limits: needs the gradients (only the diagonal of K is used), every task every step, and the
weights in the optimizer (``has_parameters``). Cost O(T).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from polytask.weighting._utils import ABS_EPS, check_all_tasks, check_gram, grad_norms
from polytask.weighting.base import Weighting


class GradNorm(Weighting):
    needs_grads = True
    needs_all_tasks = True
    has_parameters = True

    def __init__(self, tasks: list[str], *, alpha: float = 1.5):
        super().__init__(tasks)
        self.alpha = float(alpha)
        self.loss_weights = nn.Parameter(torch.ones(len(tasks)))  # (T_all,)
        self.register_buffer("initial_losses", torch.zeros(len(tasks), dtype=torch.float64))
        self.register_buffer("started", torch.zeros((), dtype=torch.bool))

    def combine(self, losses: Tensor, tasks: list[str], gram: Tensor | None = None):
        check_all_tasks(self, tasks)
        T = len(tasks)
        K = check_gram(gram, T, "gradnorm")  # (T, T)
        idx = self.index(tasks).to(self.loss_weights.device)
        with torch.no_grad():
            self.loss_weights.clamp_(min=1e-6)
            self.loss_weights.mul_(len(self.tasks) / self.loss_weights.sum())
        L = losses.detach().to(torch.float64)  # (T,)
        if not bool(self.started):
            self.initial_losses[idx] = L.to(self.initial_losses)
            self.started.fill_(True)
        w = self.loss_weights[idx]  # (T,) attached to the parameter
        ratio = L / self.initial_losses[idx].to(L).clamp(min=ABS_EPS)  # (T,)
        rate = ratio / ratio.mean().clamp(min=ABS_EPS)  # relative inverse training rate
        norms = grad_norms(K).to(w)  # (T,)
        gw = w * norms  # (T,) ||grad of w_t L_t||
        target = (gw.mean() * rate.to(w) ** self.alpha).detach()  # (T,)
        gradnorm_loss = (gw - target).abs().sum()
        total = self.weighted_sum(losses, w) + gradnorm_loss.to(losses.dtype)
        return total, w.detach().to(losses.dtype)
