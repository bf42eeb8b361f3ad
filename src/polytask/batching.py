"""Batches with dynamic padding and length grouping, with an explicit, resumable position.

Length grouping (as in most fine-tuning libraries): shuffle the examples, cut them into
mega-chunks of ``batch_size * group`` examples, sort each chunk by length, cut it into batches
and shuffle the batch order. Batches then hold similar lengths, so padding to each batch's
longest example wastes little, while the order stays random. The order of epoch ``e`` is a
pure function of ``(seed, e)``, so the position ``(epoch, index)`` is the whole state.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


def feature_length(feat: dict) -> int:
    """An encoded example's length, for length grouping and token counts: its tokens; 1 for an
    input without tokens (an image: every image is resized to the same size)."""
    ids = feat.get("input_ids")
    return len(ids) if ids is not None else 1


def epoch_batches(lengths: list[int], batch_size: int, seed: int, epoch: int,
                  group: int = 50, grouped: bool = True) -> list[list[int]]:
    """Indices of every batch of one epoch (the last batch may be smaller)."""
    g = torch.Generator().manual_seed(seed * 100_003 + epoch)
    order = torch.randperm(len(lengths), generator=g).tolist()
    if grouped:
        chunk = batch_size * group
        order = [i for s in range(0, len(order), chunk)
                 for i in sorted(order[s:s + chunk], key=lambda i: lengths[i])]
    batches = [order[s:s + batch_size] for s in range(0, len(order), batch_size)]
    if grouped:
        perm = torch.randperm(len(batches), generator=g).tolist()
        batches = [batches[i] for i in perm]
    return batches


def eval_batches(lengths: list[int], batch_size: int) -> list[list[int]]:
    """Deterministic batches sorted by length (fast evaluation; order restored by index)."""
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    return [order[s:s + batch_size] for s in range(0, len(order), batch_size)]


@dataclass
class BatchStream:
    """An endless stream of training batches for one task, resumable from ``(epoch, index)``."""

    lengths: list[int]
    batch_size: int
    seed: int
    grouped: bool = True
    epoch: int = 0
    index: int = 0

    def __post_init__(self):
        self._batches = epoch_batches(self.lengths, self.batch_size, self.seed, self.epoch, grouped=self.grouped)

    def next(self) -> list[int]:
        if self.index >= len(self._batches):
            self.epoch, self.index = self.epoch + 1, 0
            self._batches = epoch_batches(self.lengths, self.batch_size, self.seed, self.epoch, grouped=self.grouped)
        batch = self._batches[self.index]
        self.index += 1
        return batch

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "index": self.index}

    def load_state_dict(self, state: dict) -> None:
        self.epoch, self.index = int(state["epoch"]), int(state["index"])
        self._batches = epoch_batches(self.lengths, self.batch_size, self.seed, self.epoch, grouped=self.grouped)
