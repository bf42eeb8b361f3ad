"""Hard parameter sharing (Caruana 1997): one encoder shared by every task, one head per task.

The simplest and, for related NLP tasks, strongest default: every task's batch runs through
the same backbone; its head reads the final hidden states. No hyper-parameters.
"""

from __future__ import annotations

from torch import Tensor

from polytask.architectures.base import Architecture, Features


class HardSharing(Architecture):
    shared_encoder = True

    def forward(self, batch: dict[str, Tensor], task: str) -> Features:
        return self.task_features(self.encode(batch), batch, task)

    def encode(self, batch: dict[str, Tensor]) -> Tensor:
        return self.backbone(**self.backbone_inputs(batch)).last_hidden_state  # (B, T, H)

    def task_features(self, encoded: Tensor, batch: dict[str, Tensor], task: str) -> Features:
        return Features(hidden=encoded, mask=self.positions_mask(batch, encoded), shared=encoded)

    @classmethod
    def refuses(cls, io) -> str | None:
        return None  # any backbone: the heads read its last states (token states, or a map's positions)
