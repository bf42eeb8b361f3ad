"""Soft parameter sharing: per-task copies of the top blocks, kept close by an L2 penalty.

Duong, Cohn, Bird & Cook, "Low Resource Dependency Parsing: Cross-lingual Parameter Sharing in
a Neural Network Parser", ACL 2015 (the L2 distance between the tasks' parameters); overview in
Ruder, "An Overview of Multi-Task Learning in Deep Neural Networks", arXiv:1706.05098, 2017.

Each task gets its own copy of the top ``layers`` transformer blocks (``"all"``: every block, the
whole encoder above the embeddings; sensible for small models such as MiniLM), initialised to
the pretrained blocks, so all copies start identical. The embeddings and the blocks below stay
shared. The training loss becomes

    sum_t L_t  +  strength * sum_{a < b} || theta_a - theta_b ||^2

where ``theta_t`` are all parameters of task t's copy (weights, biases, LayerNorms) and the sum
runs over unordered pairs of tasks (:meth:`regularizer`, added by the trainer). ``strength = 0``
gives independent towers on a shared bottom; a large strength pulls towards hard sharing.

Arguments (``architecture: {name: soft, args: {...}}``):
    layers: number of top blocks copied per task, or ``"all"`` (default 2).
    strength: lambda, the weight of the pairwise squared distance (default 0.1).

Cost: T copies of the top blocks (parameters and optimizer state); the forward pass of a
batch runs only its task's copy, so compute equals hard sharing.
"""

from __future__ import annotations

import itertools

import torch
from torch import Tensor

from polytask.architectures._towers import TowerArchitecture
from polytask.architectures.base import Features
from polytask.errors import ConfigError


class SoftSharing(TowerArchitecture):
    def __init__(self, backbone, tasks: list[str], layers: int | str = 2, strength: float = 0.1):
        super().__init__(backbone, tasks, layers)
        if not isinstance(strength, (int, float)) or strength < 0:
            raise ConfigError(f"architecture.args.strength: expected a number >= 0, got {strength!r}")
        self.strength = float(strength)

    def forward(self, batch: dict[str, Tensor], task: str) -> Features:
        shared, call = self.enter(batch)
        h = shared
        for j, block in enumerate(self.towers[task]):
            h = call(j, block, h)
        return Features(hidden=self.finish(h), mask=batch["attention_mask"], shared=shared)

    def distance(self) -> Tensor:
        """sum over task pairs a < b of ||theta_a - theta_b||^2 (exactly 0 for identical copies)."""
        params = {t: list(self.towers[t].parameters()) for t in self.tasks}
        first = params[self.tasks[0]][0]
        total = torch.zeros((), dtype=first.dtype, device=first.device)
        for a, b in itertools.combinations(self.tasks, 2):
            for pa, pb in zip(params[a], params[b]):
                total = total + (pa - pb).pow(2).sum()
        return total

    def regularizer(self) -> Tensor | None:
        if self.strength == 0 or len(self.tasks) < 2:
            return None
        return self.strength * self.distance()
