"""Batches with dynamic padding and length grouping, with an explicit, resumable position.

Length grouping (as in most fine-tuning libraries): shuffle the examples, cut them into
mega-chunks of ``batch_size * group`` examples, sort each chunk by length, cut it into batches
and shuffle the batch order. Batches then hold similar lengths, so padding to each batch's
longest example wastes little, while the order stays random. The order of epoch ``e`` is a
pure function of ``(seed, e)``, so the position ``(epoch, index)`` is the whole state.

Row caps: an example may become several rows of the forward pass (an extractive QA question:
one row per window, :meth:`polytask.tasks.base.Task.batch_rows`). With ``rows`` and ``max_rows``
a batch stops taking examples once the next one would push its rows past ``max_rows`` (and
never takes more than ``batch_size`` examples), so a step's rows are bounded however length
grouping gathers the many-row examples. Examples stay whole: one example with more rows than
the cap is a batch of its own. The cut is still a pure function of ``(seed, epoch)``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


def feature_length(feat: dict) -> int:
    """An encoded example's length, for length grouping and token counts: its tokens; 1 for an
    input without tokens (an image: every image is resized to the same size)."""
    ids = feat.get("input_ids")
    return len(ids) if ids is not None else 1


def cut(order: list[int], batch_size: int, rows: list[int] | None = None,
        max_rows: int | None = None) -> list[list[int]]:
    """``order`` cut into consecutive batches of at most ``batch_size`` examples and, with a cap,
    at most ``max_rows`` rows (an example over the cap alone)."""
    if rows is None or max_rows is None:
        return [order[s:s + batch_size] for s in range(0, len(order), batch_size)]
    batches: list[list[int]] = []
    current: list[int] = []
    used = 0
    for i in order:
        if current and (len(current) == batch_size or used + rows[i] > max_rows):
            batches.append(current)
            current, used = [], 0
        current.append(i)
        used += rows[i]
    return batches + ([current] if current else [])


def epoch_batches(lengths: list[int], batch_size: int, seed: int, epoch: int, group: int = 50,
                  grouped: bool = True, rows: list[int] | None = None,
                  max_rows: int | None = None) -> list[list[int]]:
    """Indices of every batch of one epoch (the last batch may be smaller; with a row cap, any)."""
    g = torch.Generator().manual_seed(seed * 100_003 + epoch)
    order = torch.randperm(len(lengths), generator=g).tolist()
    if grouped:
        chunk = batch_size * group
        order = [i for s in range(0, len(order), chunk)
                 for i in sorted(order[s:s + chunk], key=lambda i: lengths[i])]
    batches = cut(order, batch_size, rows, max_rows)
    if grouped:
        perm = torch.randperm(len(batches), generator=g).tolist()
        batches = [batches[i] for i in perm]
    return batches


def eval_batches(lengths: list[int], batch_size: int) -> list[list[int]]:
    """Deterministic batches sorted by length (fast evaluation; order restored by index)."""
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    return cut(order, batch_size)


@dataclass
class BatchStream:
    """An endless stream of training batches for one task, resumable from ``(epoch, index)``."""

    lengths: list[int]
    batch_size: int
    seed: int
    grouped: bool = True
    epoch: int = 0
    index: int = 0
    rows: list[int] | None = None  # rows per example, with max_rows: the cap on a batch's rows
    max_rows: int | None = None

    def __post_init__(self):
        self._batches = self._epoch()

    def _epoch(self) -> list[list[int]]:
        return epoch_batches(self.lengths, self.batch_size, self.seed, self.epoch, grouped=self.grouped,
                             rows=self.rows, max_rows=self.max_rows)

    def next(self) -> list[int]:
        if self.index >= len(self._batches):
            self.epoch, self.index = self.epoch + 1, 0
            self._batches = self._epoch()
        batch = self._batches[self.index]
        self.index += 1
        return batch

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "index": self.index}

    def load_state_dict(self, state: dict) -> None:
        self.epoch, self.index = int(state["epoch"]), int(state["index"])
        self._batches = self._epoch()
