"""Equal (or static) weighting: ``L = sum_t w_t L_t`` with fixed ``w``.

The baseline every other method is measured against. With no weights given, every task has
weight 1, so the total is the plain sum of the task losses.

Hyper-parameters:
    weights: optional mapping task -> fixed weight (default 1.0 for unlisted tasks).
"""

from __future__ import annotations

import torch
from torch import Tensor

from polytask.weighting.base import Weighting


class EqualWeighting(Weighting):
    def __init__(self, tasks: list[str], weights: dict[str, float] | None = None):
        super().__init__(tasks)
        weights = dict(weights or {})
        unknown = set(weights) - set(tasks)
        if unknown:
            raise ValueError(f"weights given for unknown tasks: {sorted(unknown)}")
        self.weights = weights
        self.register_buffer(
            "static", torch.tensor([float(weights.get(t, 1.0)) for t in tasks]), persistent=False
        )

    def combine(self, losses: Tensor, tasks: list[str], gram: Tensor | None = None):
        w = self.static[self.index(tasks)]
        return self.weighted_sum(losses, w), w
