"""Hard parameter sharing (Caruana 1997): one encoder shared by every task, one head per task.

The simplest and, for related NLP tasks, strongest default: every task's batch runs through
the same backbone; its head reads the final hidden states. No hyper-parameters.

On a vision backbone the features also carry its pyramid (``Features.maps``) for dense task
heads; the last map is read back from the shared positions, so representation gradients of a
dense task see the last stage (its finer stages reach the backbone directly: use MTAN, or
``train.grad_space: shared``, for gradients over every stage).
"""

from __future__ import annotations

from torch import Tensor

from polytask.architectures.base import Architecture, Features


class HardSharing(Architecture):
    shared_encoder = True
    passes_maps = True

    def forward(self, batch: dict[str, Tensor], task: str) -> Features:
        return self.task_features_maps(*self.encode_maps(batch), batch, task)

    def encode(self, batch: dict[str, Tensor]) -> Tensor:
        return self.backbone(**self.backbone_inputs(batch)).last_hidden_state  # (B, T, H)

    def encode_maps(self, batch: dict[str, Tensor]) -> tuple[Tensor, list[Tensor] | None]:
        out = self.backbone(**self.backbone_inputs(batch))
        return out.last_hidden_state, getattr(out, "maps", None)  # (B, T, H), [(B, C_j, H_j, W_j)] or None

    def task_features_maps(self, encoded: Tensor, maps: list[Tensor] | None, batch: dict[str, Tensor],
                           task: str) -> Features:
        feats = self.task_features(encoded, batch, task)
        if maps:  # the last map read back from the shared positions (B, 1 + H * W, C) -> (B, C, H, W)
            last = feats.shared[:, 1:].transpose(1, 2).reshape(maps[-1].shape)
            feats.maps = list(maps[:-1]) + [last]
        return feats

    def task_features(self, encoded: Tensor, batch: dict[str, Tensor], task: str) -> Features:
        return Features(hidden=encoded, mask=self.positions_mask(batch, encoded), shared=encoded)

    @classmethod
    def refuses(cls, io) -> str | None:
        return None  # any backbone: the heads read its last states (token states, or a map's positions)
