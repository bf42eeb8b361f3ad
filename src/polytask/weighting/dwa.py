"""Dynamic weight average (DWA).

Liu, Johns & Davison, "End-to-End Multi-Task Learning with Attention", CVPR 2019.

Weights follow the rate of change of each task's loss:

    r_t = Lbar_t(k-1) / Lbar_t(k-2),    w_t = T * softmax(r / temperature)_t

where ``Lbar_t(k)`` is the mean loss of task t over window k. The paper uses epochs; here a window
is ``window`` optimisation steps (epochs are ill-defined with task sampling). Until two windows
have completed every weight is 1. Weights sum to T.

Hyper-parameters:
    temperature: softmax temperature (default 2.0, as in the paper).
    window: steps per averaging window (default 100).

Limits: needs every task every step (the windows average every task's loss). Cost O(T).
"""

from __future__ import annotations

import torch
from torch import Tensor

from polytask.weighting._utils import ABS_EPS, check_all_tasks
from polytask.weighting.base import Weighting


class DynamicWeightAverage(Weighting):
    needs_all_tasks = True

    def __init__(self, tasks: list[str], *, temperature: float = 2.0, window: int = 100):
        super().__init__(tasks)
        if temperature <= 0 or window < 1:
            raise ValueError("dwa: temperature must be > 0 and window >= 1")
        self.temperature = float(temperature)
        self.window = int(window)
        T = len(tasks)
        self.register_buffer("running", torch.zeros(T, dtype=torch.float64))  # sum in window
        self.register_buffer("count", torch.zeros((), dtype=torch.long))  # steps in window
        self.register_buffer("last", torch.zeros(T, dtype=torch.float64))  # Lbar(k-1)
        self.register_buffer("before", torch.zeros(T, dtype=torch.float64))  # Lbar(k-2)
        self.register_buffer("windows", torch.zeros((), dtype=torch.long))  # completed windows

    def combine(self, losses: Tensor, tasks: list[str], gram: Tensor | None = None):
        check_all_tasks(self, tasks)
        idx = self.index(tasks).to(self.running.device)
        T = len(tasks)
        if int(self.windows) >= 2:
            r = self.last[idx] / self.before[idx].clamp(min=ABS_EPS)  # (T,)
            w = T * torch.softmax(r / self.temperature, dim=0)
        else:
            w = torch.ones(T, dtype=torch.float64, device=idx.device)
        # record this step's losses; weights above only use completed windows
        self.running[idx] += losses.detach().to(self.running)
        self.count += 1
        if int(self.count) == self.window:
            self.before.copy_(self.last)
            self.last.copy_(self.running / self.window)
            self.running.zero_()
            self.count.zero_()
            self.windows += 1
        w = w.to(device=losses.device, dtype=losses.dtype)
        return self.weighted_sum(losses, w), w
