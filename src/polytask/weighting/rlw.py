"""Random loss weighting (RLW).

Lin, Ye, Xu, Shi & Zhang, "Reasonable Effectiveness of Random Weighting: A Litmus Test for
Multi-Task Learning", TMLR 2022.

Every step draws ``z ~ N(0, I)`` from the method's own generator and uses ``w = softmax(z)``, so
the weights of the tasks in the step sum to 1 (the paper's scaling; note that ``equal`` weighting
sums to T, so RLW's total loss is about T times smaller -- compensate with the learning rate if
comparing). One normal is drawn per known task every step, whatever subset is present, and the
softmax is taken over the tasks present.

Hyper-parameters:
    seed: seed of the method-owned ``torch.Generator`` (default 0); its state is saved in the
        state dict, so a resumed run draws the same weights.

Limits: works with any subset of tasks per step. Cost O(T).
"""

from __future__ import annotations

import torch
from torch import Tensor

from polytask.weighting._utils import SeededGenerator
from polytask.weighting.base import Weighting


class RandomLossWeighting(SeededGenerator, Weighting):
    def __init__(self, tasks: list[str], *, seed: int = 0):
        super().__init__(tasks)
        self._init_generator(seed)

    def combine(self, losses: Tensor, tasks: list[str], gram: Tensor | None = None):
        z = torch.randn(len(self.tasks), generator=self.generator, dtype=torch.float64)  # (T_all,)
        w = torch.softmax(z[self.index(tasks)], dim=0)  # (T,)
        w = w.to(device=losses.device, dtype=losses.dtype)
        return self.weighted_sum(losses, w), w
