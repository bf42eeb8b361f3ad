"""Progressive Layered Extraction (PLE) and its single-level form, Customized Gate Control (CGC).

Tang, Liu, Zhao & Gong, "Progressive Layered Extraction (PLE): A Novel Multi-Task Learning (MTL)
Model for Personalized Recommendations", RecSys 2020.

Like MMoE, experts (feed-forward networks, H -> expert_hidden -> H) act on the shared encoder's
token states, but experts are split into shared ones and task-specific ones. In CGC task t's
gate (softmax per token, sums to one) chooses among ITS OWN experts and the shared experts only,
which separates what is shared from what is not (MMoE's gates can all collapse onto the same
experts: the "seesaw" the paper measures). PLE stacks ``levels`` extraction levels: at each
level but the last there is also a shared path whose gate chooses among all experts (shared and
every task's), and level l + 1 reads task t's and the shared path's outputs of level l:

    level l:  x_t <- x_t + sum_i g_t,i(x_t) * [E^t(x_t) ; E^s(x_s)]_i       (for every task t)
              x_s <- x_s + sum_i g_s,i(x_s) * [E^s(x_s) ; E^1(x_1) ; ... ; E^T(x_T)]_i
    all paths start at the encoder states h; task t's features are x_t after the last level.

(``residual: false`` drops the ``x +`` terms: the paper's plain form.) With the residual each
expert's output layer starts at zero, so the model starts as hard sharing. A batch belongs to
one task, but below the last level the shared path needs every task's experts, so with
``levels > 1`` all tasks' paths run on each batch.

Arguments (``architecture: {name: ple, args: {...}}``):
    n_shared_experts: shared experts per level (default 2).
    n_task_experts: experts per task per level (default 1).
    levels: extraction levels; 1 is CGC (default 1).
    expert_hidden: inner width of each expert (default: the encoder's hidden size).
    residual: add each level's mixture to its input (default true).

Ownership: the encoder, shared experts and shared gates are shared; task t owns its experts
and gates (with levels > 1 other tasks' losses also depend on them, through the shared path).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from polytask.architectures.base import Architecture, Features
from polytask.architectures.mmoe import Expert, mix, positive_int
from polytask.backbones.layout import hidden_size


class ExtractionLevel(nn.Module):
    def __init__(self, tasks: list[str], hidden: int, inner: int, n_shared: int, n_task: int, last: bool,
                 residual: bool):
        super().__init__()
        self.shared = nn.ModuleList([Expert(hidden, inner, residual) for _ in range(n_shared)])
        self.task_experts = nn.ModuleDict(
            {t: nn.ModuleList([Expert(hidden, inner, residual) for _ in range(n_task)]) for t in tasks}
        )
        self.gates = nn.ModuleDict({t: nn.Linear(hidden, n_task + n_shared) for t in tasks})
        self.shared_gate = None if last else nn.Linear(hidden, n_shared + len(tasks) * n_task)


class PLE(Architecture):
    def __init__(self, backbone, tasks: list[str], n_shared_experts: int = 2, n_task_experts: int = 1,
                 levels: int = 1, expert_hidden: int | None = None, residual: bool = True):
        super().__init__(backbone, tasks)
        H = hidden_size(backbone)
        self.n_shared_experts = positive_int(n_shared_experts, "n_shared_experts")
        self.n_task_experts = positive_int(n_task_experts, "n_task_experts")
        self.n_levels = positive_int(levels, "levels")
        self.expert_hidden = positive_int(expert_hidden or H, "expert_hidden")
        self.residual = bool(residual)
        self.levels = nn.ModuleList([
            ExtractionLevel(self.tasks, H, self.expert_hidden, self.n_shared_experts, self.n_task_experts,
                            last=(i == self.n_levels - 1), residual=self.residual)
            for i in range(self.n_levels)
        ])

    def gate(self, hidden: Tensor, task: str, level: int = 0) -> Tensor:
        """Task ``task``'s gate at ``level``: (B, T, n_task_experts + n_shared_experts), sums to one;
        the task's own experts come first."""
        return torch.softmax(self.levels[level].gates[task](hidden), dim=-1)

    def shared_gate(self, hidden: Tensor, level: int = 0) -> Tensor:
        """The shared path's gate over all experts (levels below the last only)."""
        return torch.softmax(self.levels[level].shared_gate(hidden), dim=-1)

    def _step(self, x: Tensor, gate: Tensor, outputs: list[Tensor]) -> Tensor:
        mixed = mix(gate, outputs)
        return x + mixed if self.residual else mixed

    shared_encoder = True  # the extraction levels run on the one task-independent encoder output

    def forward(self, batch: dict[str, Tensor], task: str) -> Features:
        return self.task_features(self.encode(batch), batch, task)

    def encode(self, batch: dict[str, Tensor]) -> Tensor:
        return self.backbone(**self.backbone_inputs(batch)).last_hidden_state  # (B, T, H)

    def task_features(self, encoded: Tensor, batch: dict[str, Tensor], task: str) -> Features:
        h = encoded
        xt = {t: h for t in self.tasks}
        xs = h
        for i, level in enumerate(self.levels):
            last = level.shared_gate is None
            names = [task] if last else self.tasks
            S = [e(xs) for e in level.shared]
            E = {t: [e(xt[t]) for e in level.task_experts[t]] for t in names}
            new = {t: self._step(xt[t], self.gate(xt[t], t, i), E[t] + S) for t in names}
            if not last:
                xs = self._step(xs, self.shared_gate(xs, i), S + [o for t in self.tasks for o in E[t]])
            xt = new
        return Features(hidden=xt[task], mask=self.positions_mask(batch, h), shared=h)

    @classmethod
    def refuses(cls, io) -> str | None:
        return None  # position-wise experts: on a CNN they mix every position of the last map, the pooled one first

    def shared_parameters(self) -> list[nn.Parameter]:
        extra = [p for level in self.levels for p in level.shared.parameters()]
        extra += [p for level in self.levels if level.shared_gate is not None for p in level.shared_gate.parameters()]
        return super().shared_parameters() + [p for p in extra if p.requires_grad]

    def task_parameters(self, task: str) -> list[nn.Parameter]:
        params = [p for level in self.levels for m in (level.task_experts[task], level.gates[task])
                  for p in m.parameters()]
        return [p for p in params if p.requires_grad]
