"""The Architecture interface: how the shared backbone produces features for one task's batch.

An architecture owns the forward pass up to the task heads. It declares which parameters are
shared and which belong to one task (gradient methods take gradients in the shared ones), and
may add a regulariser to the loss (soft sharing's distance penalty).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from polytask.backbones.layout import transformer_blocks

MODEL_INPUTS = ("input_ids", "attention_mask", "token_type_ids")


@dataclass
class Features:
    hidden: Tensor  # (B, T, H) token states the task head reads
    mask: Tensor  # (B, T) 1 for real tokens
    shared: Tensor  # the shared representation (B, T, H), where representation gradients are taken


class Architecture(nn.Module):
    def __init__(self, backbone: nn.Module, tasks: list[str]):
        super().__init__()
        self.backbone = backbone
        self.tasks = list(tasks)

    def forward(self, batch: dict[str, Tensor], task: str) -> Features:
        raise NotImplementedError

    def backbone_inputs(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        keys = MODEL_INPUTS if getattr(self.backbone.config, "type_vocab_size", 0) > 1 else MODEL_INPUTS[:2]
        return {k: batch[k] for k in keys if k in batch}

    def shared_parameters(self) -> list[nn.Parameter]:
        """Parameters every task's loss depends on."""
        return [p for p in self.backbone.parameters() if p.requires_grad]

    def task_parameters(self, task: str) -> list[nn.Parameter]:
        """Parameters of the architecture that only ``task`` uses (heads live in the model)."""
        return []

    def balance_parameters(self, k: int) -> list[nn.Parameter]:
        """Shared parameters of the top ``k`` transformer blocks (for ``grad_space: last_layers``)."""
        blocks = transformer_blocks(self.backbone)
        shared = {id(p) for p in self.shared_parameters()}
        return [p for b in blocks[-k:] for p in b.parameters() if id(p) in shared]

    def regularizer(self) -> Tensor | None:
        return None

    def describe(self) -> dict[str, int]:
        """Parameter counts: total, trainable, shared, and task-specific per task."""
        total = sum(p.numel() for p in self.parameters())
        trainable = sum(p.numel() for p in self.parameters() if p.requires_grad)
        shared = sum(p.numel() for p in self.shared_parameters())
        out = {"total": total, "trainable": trainable, "shared": shared}
        for t in self.tasks:
            out[f"task:{t}"] = sum(p.numel() for p in self.task_parameters(t))
        return out
