"""Cross-stitch units on a CNN: per-task conv towers over the backbone's last feature map
(``architecture: cross_stitch`` on images).

Misra, Shrivastava, Gupta & Hebert, "Cross-stitch Networks for Multi-task Learning", CVPR 2016
(built on AlexNet: one network per task, their activation maps at the same layer mixed by
learned cross-stitch units). Here the pretrained CNN is shared up to its last map
``p_L`` (B, C, H, W), and each task t has a tower of ``layers`` residual bottleneck blocks
(He et al. 2016: 1x1 conv to ``bottleneck`` channels -> BN -> ReLU -> 3x3 conv -> BN -> ReLU ->
1x1 conv back to C, added to the input; the last conv starts at zero, Goyal et al. 2017). After
every block ``l`` a learned T x T matrix ``A_l`` mixes the towers' maps:

    x_t  <-  sum_s A_l[t, s] * x_s          (per channel: A_l[t, s] is a (C,) vector)

``A_l`` starts as the identity and every block as the identity map, so at initialisation each
task reads exactly hard sharing's features; the off-diagonal entries learn how much each task
reads from the others. All T towers run on every batch (a batch belongs to one task, the mixing
needs every tower); the head reads the batch's task's map as positions (B, 1 + H * W, C), its
global average first. Differences from the paper: the towers are new blocks on top of the
pretrained network, not copies of its layers (a backbone family exposes its stages' outputs, not
the stages as modules), and they sit after the last stage only.

Arguments (``architecture: {name: cross_stitch, args: {...}}``):
    layers: blocks per tower (default 2).
    bottleneck: the blocks' inner channels (default 64; about 2 * C * 64 + 9 * 64^2 weights per
        block and task: 0.2 M for EfficientNet-Lite0's 1280 channels).
    per_channel: one mixing weight per channel instead of one per task pair (default false).

Ownership: task t owns its tower and row t of every ``A_l``; shared: the backbone.
``Features.shared`` is the last map as positions (what every tower reads, where representation
gradients are taken); ``Features.maps`` the lower stages and the task's mixed last map.
Limits: needs a backbone with a pyramid (not a ViT's token states).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from polytask.architectures.base import Architecture, Features
from polytask.backbones.vision import as_positions
from polytask.errors import ConfigError


class Bottleneck(nn.Module):
    """x + conv(x): 1x1 down, 3x3, 1x1 up (zero-initialised), so the block starts as the identity."""

    def __init__(self, channels: int, bottleneck: int):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(channels, bottleneck, 1, bias=False), nn.BatchNorm2d(bottleneck), nn.ReLU(inplace=True),
            nn.Conv2d(bottleneck, bottleneck, 3, padding=1, bias=False), nn.BatchNorm2d(bottleneck),
            nn.ReLU(inplace=True), nn.Conv2d(bottleneck, channels, 1))
        nn.init.zeros_(self.body[-1].weight)
        nn.init.zeros_(self.body[-1].bias)

    def forward(self, x: Tensor) -> Tensor:  # (B, C, H, W)
        return x + self.body(x)


def positive_int(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"architecture.args.{name}: expected a positive integer, got {value!r}")
    return value


class ConvCrossStitch(Architecture):
    passes_maps = True

    def __init__(self, backbone, tasks: list[str], layers: int = 2, bottleneck: int = 64, per_channel: bool = False):
        super().__init__(backbone, tasks)
        if not getattr(backbone.config, "pyramid", True):
            raise ConfigError(f"architecture.name: cross_stitch on images mixes conv feature maps; "
                              f"{backbone.config.source} gives token states only (a vision transformer): use hard")
        self.n_layers, channels = positive_int("layers", layers), backbone.config.channels[-1]
        positive_int("bottleneck", bottleneck)
        self.per_channel = bool(per_channel)
        self.towers = nn.ModuleDict({t: nn.ModuleList([Bottleneck(channels, bottleneck) for _ in range(layers)])
                                     for t in self.tasks})
        T = len(self.tasks)
        rows = {}
        for i, t in enumerate(self.tasks):
            row = torch.zeros(layers, T)
            row[:, i] = 1.0  # identity: tower t reads only itself
            rows[t] = nn.Parameter(row.unsqueeze(-1).repeat(1, 1, channels) if self.per_channel else row)
        self.stitch = nn.ParameterDict(rows)  # task -> row t of every layer's mixing matrix

    def mixing(self) -> Tensor:
        """The mixing matrices, (L, T, T) or (L, T, T, C) per channel: [l, t, s] = weight of s in t."""
        return torch.stack([self.stitch[t] for t in self.tasks], dim=1)

    def forward(self, batch: dict[str, Tensor], task: str) -> Features:
        maps = self.backbone(**self.backbone_inputs(batch)).maps  # [(B, C_j, H_j, W_j)], finest first
        shared = as_positions(maps[-1])  # (B, 1 + H * W, C): every tower reads the map back from it
        last = shared[:, 1:].transpose(1, 2).reshape(maps[-1].shape)  # (B, C, H, W)
        A = self.mixing()
        states = [last] * len(self.tasks)
        for layer in range(self.n_layers):
            out = torch.stack([self.towers[t][layer](states[i]) for i, t in enumerate(self.tasks)])  # (T, B, C, H, W)
            equation = "tsc,sbchw->tbchw" if self.per_channel else "ts,sbchw->tbchw"
            states = list(torch.einsum(equation, A[layer], out).unbind(0))
        mine = states[self.task_index(task)]
        hidden = as_positions(mine)
        return Features(hidden=hidden, mask=self.positions_mask(batch, hidden), shared=shared,
                        maps=list(maps[:-1]) + [mine])

    def task_parameters(self, task: str) -> list[nn.Parameter]:
        return [p for p in self.towers[task].parameters() if p.requires_grad] + [self.stitch[task]]

    @classmethod
    def refuses(cls, io) -> str | None:
        return None if "pyramid" in io.produces else "it mixes per-task conv towers over a pyramid of feature maps"
