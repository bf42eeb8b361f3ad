"""Cross-stitch units between per-task towers.

Misra, Shrivastava, Gupta & Hebert, "Cross-stitch Networks for Multi-task Learning", CVPR 2016.

Each task gets its own copy of the top ``layers`` transformer blocks (a tower), initialised to
the pretrained blocks; below them the encoder is shared. After every tower block ``l`` a
learned T x T matrix ``A_l`` mixes the towers' states:

    x_t  <-  sum_s A_l[t, s] * x_s          (per channel: A_l[t, s] is an (H,) vector)

``A_l`` starts as the identity, which is exactly T independent towers on a shared bottom; the
off-diagonal entries learn how much each task reads from the others. A batch belongs to one
task, but the mixing needs every tower's state, so all T towers run on the batch and the
batch's task's tower output is returned (compute in the towers: T times hard sharing's).

Arguments (``architecture: {name: cross_stitch, args: {...}}``):
    layers: number of top blocks in each tower, or ``"all"`` (default 2).
    per_channel: one mixing weight per hidden channel instead of one per task pair (default false).

Ownership: task t owns its tower and row t of every ``A_l`` (how tower t reads the others);
with off-diagonal mixing, task t's loss also depends on the other towers, which are still
reported as theirs. Shared: embeddings and the blocks below the towers.

On a vision backbone (``model.kind: vision``) the same name builds
:class:`polytask.architectures.cross_stitch_conv.ConvCrossStitch`: per-task conv towers over the
CNN's last feature map, mixed by cross-stitch units.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from polytask.architectures._towers import TowerArchitecture
from polytask.architectures.base import Features
from polytask.backbones.io import PIXELS, TOKENS
from polytask.backbones.layout import hidden_size


class CrossStitch(TowerArchitecture):
    def __init__(self, backbone, tasks: list[str], layers: int | str = 2, per_channel: bool = False):
        super().__init__(backbone, tasks, layers)
        self.per_channel = bool(per_channel)
        T, K = len(self.tasks), self.n_tower_blocks
        rows = {}
        for i, t in enumerate(self.tasks):
            row = torch.zeros(K, T)
            row[:, i] = 1.0  # identity: tower t reads only itself
            if self.per_channel:
                row = row.unsqueeze(-1).repeat(1, 1, hidden_size(backbone))  # (K, T, H)
            rows[t] = nn.Parameter(row)
        self.stitch = nn.ParameterDict(rows)  # task -> row t of every layer's mixing matrix

    def mixing(self) -> Tensor:
        """The mixing matrices, (K, T, T) or (K, T, T, H) per channel: [l, t, s] = weight of s in t."""
        return torch.stack([self.stitch[t] for t in self.tasks], dim=1)

    def forward(self, batch: dict[str, Tensor], task: str) -> Features:
        shared, call = self.enter(batch)
        A = self.mixing()
        states = [shared] * len(self.tasks)
        for layer in range(self.n_tower_blocks):
            out = torch.stack([call(layer, self.towers[t][layer], states[i]) for i, t in enumerate(self.tasks)])
            if self.per_channel:
                mixed = torch.einsum("tsh,sbnh->tbnh", A[layer], out)
            else:
                mixed = torch.einsum("ts,sbnh->tbnh", A[layer], out)
            states = list(mixed.unbind(0))
        hidden = self.finish(states[self.task_index(task)])
        return Features(hidden=hidden, mask=batch["attention_mask"], shared=shared)

    def task_parameters(self, task: str) -> list[nn.Parameter]:
        return super().task_parameters(task) + [self.stitch[task]]

    @classmethod
    def refuses(cls, io) -> str | None:
        return None if io.consumes == TOKENS or "pyramid" in io.produces else \
            "it mixes per-task towers, and this backbone has no pyramid of feature maps"

    @classmethod
    def variant_for(cls, io) -> type:
        """On a CNN: conv towers over its last map (:class:`polytask.architectures.cross_stitch_conv.ConvCrossStitch`)."""
        if io.consumes == PIXELS:
            from polytask.architectures.cross_stitch_conv import ConvCrossStitch

            return ConvCrossStitch
        return cls
