"""Hard parameter sharing (Caruana 1997): one encoder shared by every task, one head per task.

The simplest and, for related NLP tasks, strongest default: every task's batch runs through
the same backbone; its head reads the final hidden states. No hyper-parameters.
"""

from __future__ import annotations

from torch import Tensor

from polytask.architectures.base import Architecture, Features


class HardSharing(Architecture):
    def forward(self, batch: dict[str, Tensor], task: str) -> Features:
        out = self.backbone(**self.backbone_inputs(batch))
        hidden = out.last_hidden_state  # (B, T, H)
        return Features(hidden=hidden, mask=batch["attention_mask"], shared=hidden)
