"""Multi-gate mixture of experts over the shared encoder's token states (MMoE).

Ma, Zhao, Yi, Chen, Hong & Chi, "Modeling Task Relationships in Multi-task Learning with
Multi-gate Mixture-of-Experts", KDD 2018.

The shared encoder produces token states ``h`` (B, T, H). ``n_experts`` expert feed-forward
networks ``E_i`` (H -> expert_hidden -> H) are shared by all tasks; each task has its own gate,
a linear layer followed by a softmax over the experts, computed per token:

    g_t(h) = softmax(W_t h)            (B, T, n_experts), sums to one over experts
    f_t    = h + sum_i g_t,i(h) * E_i(h)      (``residual: true``; without it, f_t = the sum)

The gates let tasks that conflict use different experts and related tasks share them. With the
residual, each expert's output layer starts at zero, so the model starts as hard sharing with
the pretrained states intact (the paper's MLP-on-features setting has no pretrained input to
keep; set ``residual: false`` for the plain mixture, experts then start randomly).

Arguments (``architecture: {name: mmoe, args: {...}}``):
    n_experts: number of shared experts (default 4).
    expert_hidden: inner width of each expert (default: the encoder's hidden size).
    residual: add the mixture to the encoder states (default true).

Ownership: encoder and experts are shared; task t owns its gate. Cost: every expert runs on
every batch (n_experts small FFNs on top of one encoder pass).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from polytask.architectures.base import Architecture, Features
from polytask.backbones.layout import hidden_size
from polytask.errors import ConfigError


class Expert(nn.Module):
    """A position-wise feed-forward expert: Linear -> GELU -> Linear, (..., H) -> (..., H)."""

    def __init__(self, hidden: int, inner: int, zero_output: bool):
        super().__init__()
        self.inp = nn.Linear(hidden, inner)
        self.out = nn.Linear(inner, hidden)
        if zero_output:  # the residual architecture starts as the identity
            nn.init.zeros_(self.out.weight)
            nn.init.zeros_(self.out.bias)

    def forward(self, x: Tensor) -> Tensor:
        return self.out(F.gelu(self.inp(x)))


def mix(gate: Tensor, outputs: list[Tensor]) -> Tensor:
    """sum_i gate[..., i] * outputs[i]: gate (B, T, n) probabilities, outputs n x (B, T, H)."""
    return torch.einsum("btn,nbth->bth", gate, torch.stack(outputs))


def positive_int(value, key: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"architecture.args.{key}: expected a positive integer, got {value!r}")
    return value


class MMoE(Architecture):
    def __init__(self, backbone, tasks: list[str], n_experts: int = 4, expert_hidden: int | None = None,
                 residual: bool = True):
        super().__init__(backbone, tasks)
        H = hidden_size(backbone)
        self.n_experts = positive_int(n_experts, "n_experts")
        self.expert_hidden = positive_int(expert_hidden or H, "expert_hidden")
        self.residual = bool(residual)
        self.experts = nn.ModuleList([Expert(H, self.expert_hidden, self.residual) for _ in range(self.n_experts)])
        self.gates = nn.ModuleDict({t: nn.Linear(H, self.n_experts) for t in self.tasks})

    def gate(self, hidden: Tensor, task: str) -> Tensor:
        """Task ``task``'s gate over the experts for each token: (B, T, n_experts), rows sum to one."""
        return torch.softmax(self.gates[task](hidden), dim=-1)

    shared_encoder = True  # the gates and experts run on the one task-independent encoder output

    def forward(self, batch: dict[str, Tensor], task: str) -> Features:
        return self.task_features(self.encode(batch), batch, task)

    def encode(self, batch: dict[str, Tensor]) -> Tensor:
        return self.backbone(**self.backbone_inputs(batch)).last_hidden_state  # (B, T, H)

    def task_features(self, encoded: Tensor, batch: dict[str, Tensor], task: str) -> Features:
        h = encoded
        mixed = mix(self.gate(h, task), [e(h) for e in self.experts])
        return Features(hidden=h + mixed if self.residual else mixed, mask=self.positions_mask(batch, h), shared=h)

    @classmethod
    def refuses(cls, io) -> str | None:
        return None  # position-wise experts: on a CNN they mix every position of the last map, the pooled one first

    def shared_parameters(self) -> list[nn.Parameter]:
        return super().shared_parameters() + [p for p in self.experts.parameters() if p.requires_grad]

    def task_parameters(self, task: str) -> list[nn.Parameter]:
        return [p for p in self.gates[task].parameters() if p.requires_grad]
