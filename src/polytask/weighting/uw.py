"""Uncertainty weighting (homoscedastic task uncertainty).

Kendall, Gal & Cipolla, "Multi-Task Learning Using Uncertainty to Weigh Losses for Scene
Geometry and Semantics", CVPR 2018.

Each task learns a log-variance ``s_t = log sigma_t^2`` (an ``nn.Parameter``) and the total loss is

    total = sum_t 0.5 * exp(-s_t) * L_t + 0.5 * s_t

(the paper's regression form, used for every task as in common practice; the classification form
``exp(-s_t) L_t + 0.5 s_t`` differs only by a constant factor on the weight). The gradient on
``s_t`` is ``0.5 (1 - exp(-s_t) L_t)``: tasks with a large loss get a larger variance, hence a
smaller weight. The reported weights are ``0.5 * exp(-s_t)``.

Hyper-parameters:
    init: initial log-variance of every task (default 0.0, i.e. weight 0.5).

Limits: the ``s_t`` must be in the optimizer (``has_parameters``); works with any subset of tasks
per step (only the present tasks' ``s_t`` receive gradient). Cost O(T).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from polytask.weighting.base import Weighting


class UncertaintyWeighting(Weighting):
    has_parameters = True

    def __init__(self, tasks: list[str], *, init: float = 0.0):
        super().__init__(tasks)
        self.init = float(init)
        self.log_vars = nn.Parameter(torch.full((len(tasks),), self.init))  # (T_all,)

    def combine(self, losses: Tensor, tasks: list[str], gram: Tensor | None = None):
        s = self.log_vars[self.index(tasks).to(self.log_vars.device)]  # (T,)
        precision = 0.5 * torch.exp(-s)  # (T,)
        total = (precision * losses + 0.5 * s).sum()
        return total, precision.detach()
