"""The Architecture interface: how the shared backbone produces features for one task's batch.

An architecture owns the forward pass up to the task heads. It declares which parameters are
shared and which belong to one task (gradient methods take gradients in the shared ones), and
may add a regulariser to the loss (soft sharing's distance penalty).

Contract for an architecture (see tests/architectures/):
- it is built from ``(backbone, tasks, **args)`` alone and deterministically: a saved run is
  rebuilt from the backbone's config and the YAML arguments, then its weights are loaded
  strictly, so the parameter names and shapes may depend on nothing else;
- it owns the backbone and may change it (insert adapters, replace the top blocks), but keeps
  model-family knowledge in :mod:`polytask.backbones.layout`;
- ``forward(batch, task)`` returns :class:`Features` for a batch of ONE task; ``shared`` is a
  tensor in the graph of every task's loss where representation gradients are taken;
- ``shared_parameters()`` and ``task_parameters(task)`` partition the trainable parameters of
  the architecture by ownership (heads live in the model).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor, nn

from polytask.backbones.io import PIXELS, BackboneIO
from polytask.backbones.layout import accepts_token_type_ids, transformer_blocks
from polytask.errors import ConfigError

MODEL_INPUTS = ("input_ids", "attention_mask", "token_type_ids")
PIXEL_INPUTS = ("pixel_values",)  # (B, 3, S, S): what a backbone that consumes pixels reads


@dataclass
class Features:
    hidden: Tensor  # what the task head reads: token states (B, T, H); causal_lm: logits (N, V)
    mask: Tensor  # (B, T) 1 for real tokens
    # the shared representation, where representation gradients are taken (summed over every
    # axis but the last): (B, T, H) for most architectures; MTAN: every hidden state of the
    # shared encoder (L + 1, B, T, H)
    shared: Tensor
    # a vision backbone's pyramid as the task sees it ((B, C_j, H_j, W_j), finest first), for the
    # heads of dense tasks (segmentation, detection); None where the architecture gives no maps
    maps: list[Tensor] | None = None


class Architecture(nn.Module):
    def __init__(self, backbone: nn.Module, tasks: list[str]):
        super().__init__()
        self.backbone = backbone
        self.tasks = list(tasks)

    #: Whether the encoder pass is the same for every task: ``forward(batch, task)`` equals
    #: ``task_features(encode(batch), batch, task)``, so prediction for many tasks can encode an
    #: input once and run only the cheap per-task part for each task (``Predictor.predict_all``).
    #: Architectures whose encoder pass depends on the task (per-task adapters, soft-sharing
    #: towers, cross-stitch, MTAN attention over every layer, causal_lm) leave it False and get
    #: one pass per task.
    shared_encoder: ClassVar[bool] = False

    #: Whether :class:`Features` carry the backbone's pyramid (``maps``), which dense task heads
    #: read; ``check`` refuses a dense task on an architecture that leaves it None.
    passes_maps: ClassVar[bool] = False

    def encode(self, batch: dict[str, Tensor]) -> Tensor:
        """The task-independent encoder output (B, T, H) (``shared_encoder`` architectures only)."""
        raise NotImplementedError(f"{type(self).__name__} has no task-independent encoder pass")

    def task_features(self, encoded: Tensor, batch: dict[str, Tensor], task: str) -> Features:
        """``task``'s features from :meth:`encode`'s output (rows may be a subset of a larger batch,
        cut to ``batch``'s width; ``batch`` holds at least ``attention_mask``)."""
        raise NotImplementedError(f"{type(self).__name__} has no task-independent encoder pass")

    def encode_maps(self, batch: dict[str, Tensor]) -> tuple[Tensor, list[Tensor] | None]:
        """:meth:`encode`'s output (B, T, H) and the backbone's pyramid [(B, C_j, H_j, W_j)] where
        the features carry it (``passes_maps``), else None (``shared_encoder`` architectures only)."""
        return self.encode(batch), None

    def task_features_maps(self, encoded: Tensor, maps: list[Tensor] | None, batch: dict[str, Tensor],
                           task: str) -> Features:
        """:meth:`task_features` with the pyramid of :meth:`encode_maps` (the same rows of both):
        ``forward(batch, task)`` equals ``task_features_maps(*encode_maps(batch), batch, task)``."""
        return self.task_features(encoded, batch, task)

    @classmethod
    def refuses(cls, io: BackboneIO) -> str | None:
        """Why this architecture cannot share a backbone of interface ``io`` (None: it can).
        Default: token-state backbones only; an architecture that works on images says so."""
        if io.consumes == PIXELS:
            return (f"it shares transformer blocks over token states and has no version for {io.describe}; "
                    f"on images use hard, mtan, cross_stitch, mmoe or ple")
        return None

    @classmethod
    def variant_for(cls, io: BackboneIO) -> type["Architecture"]:
        """The class that implements this architecture on a backbone of interface ``io`` (default: itself)."""
        return cls

    @classmethod
    def saves_backbone(cls, args: dict) -> bool:
        """Whether a run's weights include the backbone's (else only adapters are saved and the
        backbone is loaded again from its pretrained source when the run is loaded)."""
        return True

    def forward(self, batch: dict[str, Tensor], task: str) -> Features:
        raise NotImplementedError

    def backbone_inputs(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        keys = MODEL_INPUTS if accepts_token_type_ids(self.backbone) else MODEL_INPUTS[:2]
        return {k: batch[k] for k in keys + PIXEL_INPUTS if k in batch}

    @staticmethod
    def positions_mask(batch: dict[str, Tensor], hidden: Tensor) -> Tensor:
        """Which positions of ``hidden`` (B, T, H) are real: the batch's attention mask for tokens;
        every position of a feature map (B, T) when there is none."""
        mask = batch.get("attention_mask")
        return mask if mask is not None else torch.ones(hidden.shape[:2], dtype=torch.long, device=hidden.device)

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
        return self._nonempty([p for b in blocks[-k:] for p in b.parameters() if id(p) in shared], k)

    def shared_adapter_parameters(self) -> list[nn.Parameter]:
        """Adapter parameters that every task trains (for ``grad_space: adapters``)."""
        raise ConfigError(f"train.grad_space=adapters: architecture {type(self).__name__} has no adapter shared by "
                          f"all tasks (causal_lm with peft: shared_lora has one); use train.grad_space=representation")

    def _nonempty(self, params: list[nn.Parameter], k: int) -> list[nn.Parameter]:
        if not params:
            raise ConfigError(
                f"train.grad_space=last_layers: architecture {type(self).__name__} has no trainable shared "
                f"parameters in its top {k} shared block(s); use train.grad_space=representation"
            )
        return params

    def task_index(self, task: str) -> int:
        try:
            return self.tasks.index(task)
        except ValueError:
            raise KeyError(f"unknown task '{task}'; this architecture has: {', '.join(self.tasks)}") from None

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
