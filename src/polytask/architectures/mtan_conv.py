"""MTAN on a CNN: task attention over the backbone's stages (``architecture: mtan`` on images).

Liu, Johns & Davison, "End-to-End Multi-Task Learning with Attention", CVPR 2019 (MTAN).

The shared CNN is a feature pool; each task has one soft-attention module per stage of the
backbone's pyramid ``p_1 .. p_L`` ((B, C_j, H_j, W_j), finest first). For task t:

    a_1 = sigmoid(g_1(p_1))                              u_1 = a_1 * p_1
    a_j = sigmoid(g_j([p_j ; pool(u_{j-1})]))            u_j = a_j * p_j        (j = 2..L)

``g_j`` is the paper's attention block (1x1 conv -> BN -> ReLU -> 1x1 conv -> BN -> sigmoid) and
``pool`` average-pools the previous stage's attended features to this stage's resolution (the
paper passes them through a 3x3 conv block before pooling; here the attention's own 1x1 convs
take that role, which keeps the module small enough for CPU training). The task's head reads
``u_L`` as positions (B, 1 + H_L * W_L, C_L), its global average first, like hard sharing's; a
dense task's head reads every attended stage ``u_1 .. u_L`` (``Features.maps``).

Ownership: the backbone is shared; task t owns its L attention modules. ``Features.shared`` is
every stage's map flattened and concatenated (B, sum_j C_j H_j W_j): the stages are cut back out
of it, so every task's loss reaches the backbone through it and representation gradients see
every stage.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from polytask.architectures.base import Architecture, Features
from polytask.backbones.vision import as_positions
from polytask.errors import ConfigError


class StageAttention(nn.Module):
    """One task's attention at one stage: (B, in, H, W) -> mask (B, out, H, W) in [0, 1]."""

    def __init__(self, in_ch: int, out_ch: int, bottleneck: int):
        super().__init__()
        self.block = nn.Sequential(
            nn.Conv2d(in_ch, bottleneck, 1), nn.BatchNorm2d(bottleneck), nn.ReLU(inplace=True),
            nn.Conv2d(bottleneck, out_ch, 1), nn.BatchNorm2d(out_ch), nn.Sigmoid())

    def forward(self, x: Tensor) -> Tensor:
        return self.block(x)


class ConvMTAN(Architecture):
    passes_maps = True

    def __init__(self, backbone, tasks: list[str], bottleneck: int = 64):
        super().__init__(backbone, tasks)
        if isinstance(bottleneck, bool) or not isinstance(bottleneck, int) or bottleneck < 1:
            raise ConfigError(f"architecture.args.bottleneck: expected a positive integer, got {bottleneck!r}")
        if not getattr(backbone.config, "pyramid", True):
            raise ConfigError(f"architecture.name: mtan attends over a CNN's stages; {backbone.config.source} gives "
                              f"token states only (a vision transformer): use hard")
        ch = list(backbone.config.channels)
        self.attention = nn.ModuleDict({
            t: nn.ModuleList([StageAttention(c if j == 0 else c + ch[j - 1], c, bottleneck) for j, c in enumerate(ch)])
            for t in self.tasks
        })

    def stages(self, batch: dict[str, Tensor]) -> tuple[Tensor, list[Tensor]]:
        """The pyramid flattened into one shared tensor (B, D), and the maps cut back out of it."""
        maps = self.backbone(**self.backbone_inputs(batch)).maps  # [(B, C_j, H_j, W_j)]
        flat = torch.cat([m.flatten(1) for m in maps], dim=1)  # (B, D)
        parts = flat.split([m[0].numel() for m in maps], dim=1)
        return flat, [p.view(m.shape) for p, m in zip(parts, maps)]

    def attend(self, maps: list[Tensor], task: str) -> list[Tensor]:
        """The task's attended stages [(B, C_j, H_j, W_j)], finest first."""
        out: list[Tensor] = []
        for p, g in zip(maps, self.attention[task]):
            side = (int(p.shape[-2]), int(p.shape[-1]))  # plain ints: a constant in an ONNX trace (fixed image size)
            x = torch.cat([p, F.adaptive_avg_pool2d(out[-1], side)], dim=1) if out else p
            out.append(g(x) * p)
        return out

    def forward(self, batch: dict[str, Tensor], task: str) -> Features:
        flat, maps = self.stages(batch)
        attended = self.attend(maps, task)
        hidden = as_positions(attended[-1])  # (B, 1 + H_L * W_L, C_L)
        return Features(hidden=hidden, mask=self.positions_mask(batch, hidden), shared=flat, maps=attended)

    def task_parameters(self, task: str) -> list[nn.Parameter]:
        return [p for p in self.attention[task].parameters() if p.requires_grad]

    @classmethod
    def refuses(cls, io) -> str | None:
        return None if "pyramid" in io.produces else "it attends over a pyramid of feature maps, which this backbone lacks"
