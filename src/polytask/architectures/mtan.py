"""Task-specific attention over the shared encoder's layers and tokens (MTAN-style).

Liu, Johns & Davison, "End-to-End Multi-Task Learning with Attention", CVPR 2019 (MTAN).

MTAN keeps one shared network as a feature pool and gives each task a soft-attention module
per stage that selects, with a sigmoid mask, which shared features the task uses; the
attended features of one stage feed the task's attention at the next. Here the stages are the
encoder's hidden states ``p_0`` (embeddings) .. ``p_L`` (last block), all computed once by the
shared encoder (``output_hidden_states``). For task t:

    a_0 = sigmoid(g_0(p_0))                    u_0 = a_0 * p_0
    a_j = sigmoid(g_j([p_j ; u_{j-1}]))        u_j = a_j * p_j        (j = 1..L)

where ``g_j`` is a per-task bottleneck MLP (Linear -> GELU -> Linear, the 1x1 convolutions of the
paper) and ``a_j`` is a (B, T, H) mask in [0, 1] over every token and channel of layer j. The
task's features are ``u_L``: the last layer's states, gated by masks that were computed from
every layer of the encoder, so each task reads the layers and tokens it needs.

Arguments (``architecture: {name: mtan, args: {...}}``):
    bottleneck: hidden width of each attention MLP (default 64).

Ownership: the encoder is shared (every task's loss depends on all of it); task t owns its
L + 1 attention modules. ``Features.shared`` is the stack of all hidden states (L+1, B, T, H),
since every layer feeds the task features; representation gradients are summed over layers.
Cost: one encoder pass plus (L + 1) small MLPs per batch.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from polytask.architectures.base import Architecture, Features
from polytask.backbones.io import PIXELS, TOKENS
from polytask.backbones.layout import hidden_size, transformer_blocks
from polytask.errors import ConfigError


class TaskAttention(nn.Module):
    """One task's attention module at one layer: (B, T, in) -> mask (B, T, H) in [0, 1]."""

    def __init__(self, in_dim: int, hidden: int, bottleneck: int):
        super().__init__()
        self.down = nn.Linear(in_dim, bottleneck)
        self.up = nn.Linear(bottleneck, hidden)

    def forward(self, x: Tensor) -> Tensor:
        return torch.sigmoid(self.up(F.gelu(self.down(x))))


class MTAN(Architecture):
    def __init__(self, backbone, tasks: list[str], bottleneck: int = 64):
        super().__init__(backbone, tasks)
        if isinstance(bottleneck, bool) or not isinstance(bottleneck, int) or bottleneck < 1:
            raise ConfigError(f"architecture.args.bottleneck: expected a positive integer, got {bottleneck!r}")
        self.bottleneck = bottleneck
        H = hidden_size(backbone)
        self.n_states = len(transformer_blocks(backbone)) + 1  # embeddings + every block
        self.attention = nn.ModuleDict({
            t: nn.ModuleList([TaskAttention(H if j == 0 else 2 * H, H, bottleneck) for j in range(self.n_states)])
            for t in self.tasks
        })

    def hidden_states(self, batch: dict[str, Tensor]) -> Tensor:
        """All hidden states of the shared encoder, stacked: (L + 1, B, T, H)."""
        out = self.backbone(**self.backbone_inputs(batch), output_hidden_states=True)
        states = out.hidden_states
        if states is None or len(states) != self.n_states:
            got = None if states is None else len(states)
            raise RuntimeError(f"{type(self.backbone).__name__} returned {got} hidden states, expected {self.n_states}")
        return torch.stack(states)

    def attend(self, states: Tensor, task: str) -> tuple[Tensor, list[Tensor]]:
        """The task's features (B, T, H) and its masks, one (B, T, H) tensor in [0, 1] per layer."""
        modules = self.attention[task]
        masks, u = [], None
        for j in range(self.n_states):
            p = states[j]
            a = modules[j](p if u is None else torch.cat([p, u], dim=-1))
            u = a * p
            masks.append(a)
        return u, masks

    def masks(self, batch: dict[str, Tensor], task: str) -> list[Tensor]:
        return self.attend(self.hidden_states(batch), task)[1]

    def forward(self, batch: dict[str, Tensor], task: str) -> Features:
        states = self.hidden_states(batch)
        hidden, _ = self.attend(states, task)
        return Features(hidden=hidden, mask=batch["attention_mask"], shared=states)

    def task_parameters(self, task: str) -> list[nn.Parameter]:
        return [p for p in self.attention[task].parameters() if p.requires_grad]

    @classmethod
    def refuses(cls, io) -> str | None:
        return None if io.consumes == TOKENS or "pyramid" in io.produces else \
            "it attends over the backbone's stages, and this backbone has no pyramid of feature maps"

    @classmethod
    def variant_for(cls, io) -> type[Architecture]:
        """On a CNN: attention over its stages (:class:`polytask.architectures.mtan_conv.ConvMTAN`)."""
        if io.consumes == PIXELS:
            from polytask.architectures.mtan_conv import ConvMTAN

            return ConvMTAN
        return cls
