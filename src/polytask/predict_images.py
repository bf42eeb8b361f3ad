"""One backbone pass per distinct image view for ``Predictor.predict_all`` (image tasks).

On an architecture whose encoder pass does not depend on the task
(``Architecture.shared_encoder``: hard sharing, MMoE, PLE), the image features of every task are
grouped by ``Task.view_key``: tasks whose evaluation-time preprocessing is the same (one view: the
same resize and crop or squash, size, mean and std) run the backbone ONCE per distinct image
(a file path, or an array's pixels), batched ``batch_size`` images at a time, and every head of
the group reads that output (``Architecture.task_features_maps``: the token or pooled states,
and the pyramid for a dense head). Tasks of different views keep a pass each: classification
(shorter side resized, centre crop, JPEGs decoded at reduced scale) and the dense tasks
(segmentation, detection: the whole image squashed to a square at full-resolution decode) are two
views, so a model with both runs two passes per image, not one per task.

What each row goes through is the computation of ``model(batch, task)``: the task's own
collation, the same backbone, the same features and head. Predictions equal the per-task ones bit
for bit when a batch holds the same images as the per-task batch would (every task given every
input, no repeated image); otherwise (a different batch size) up to the float rounding of
batch-size-dependent kernels.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Hashable

import torch

from polytask.batching import eval_batches
from polytask.devices import module_device, to_device
from polytask.model import MultiTaskModel
from polytask.tasks import Task


@dataclass
class ViewGroup:
    """The distinct images of one view: ``rows[r]`` the (task, feature position) that first had
    image r; ``users[r]`` every (task, position) reading it; ``index``: image identity -> r."""

    index: dict[Hashable, int] = field(default_factory=dict)
    rows: list[tuple[str, int]] = field(default_factory=list)
    users: list[list[tuple[str, int]]] = field(default_factory=list)

    def add(self, item: Hashable, name: str, pos: int) -> None:
        r = self.index.setdefault(item, len(self.rows))
        if r == len(self.rows):
            self.rows.append((name, pos))
            self.users.append([])
        self.users[r].append((name, pos))


def view_groups(keys: dict[str, list[tuple[Hashable, Hashable]]]) -> dict[Hashable, ViewGroup]:
    """``{view: ViewGroup}`` from each task's ``[(view, item)]`` keys (``Task.view_key`` per feature)."""
    groups: dict[Hashable, ViewGroup] = {}
    for name, ks in keys.items():
        for pos, (view, item) in enumerate(ks):
            groups.setdefault(view, ViewGroup()).add(item, name, pos)
    return groups


def view_pass(model: MultiTaskModel, tasks: dict[str, Task], feats: dict[str, list[dict]],
              keys: dict[str, list[tuple[Hashable, Hashable]]], pad: int, batch_size: int,
              scores: bool) -> dict[str, tuple[list, list]]:
    """Predictions (and probabilities) of every task in ``feats`` with one backbone pass per
    distinct ``(view, image)`` key (``keys[task][i]`` is ``feats[task][i]``'s) per batch."""
    out = {name: ([None] * len(fs), [None] * len(fs)) for name, fs in feats.items()}
    for group in view_groups(keys).values():
        for idx in eval_batches([1] * len(group.rows), batch_size):
            group_batch(model, tasks, feats, group, idx, pad, scores, out)
    return out


def group_batch(model: MultiTaskModel, tasks: dict[str, Task], feats: dict[str, list[dict]], group: ViewGroup,
                idx: list[int], pad: int, scores: bool, out: dict[str, tuple[list, list]]) -> None:
    """Rows ``idx`` of ``group``: collated once (by the task that first had each image: a view's
    tasks collate each other's features alike), one backbone pass, then each task's head on its rows."""
    owner = tasks[group.rows[idx[0]][0]]
    batch = owner.collate([feats[n][p] for n, p in (group.rows[r] for r in idx)], pad)
    batch = to_device(batch, module_device(model))  # pixel_values (B, 3, S, S), dense: sizes (B, 2)
    encoded, maps = model.arch.encode_maps(batch)  # (B, T, H), [(B, C_j, H_j, W_j)] or None
    per_task: dict[str, list[tuple[int, int]]] = {}
    for b, r in enumerate(idx):
        for name, pos in group.users[r]:
            per_task.setdefault(name, []).append((b, pos))
    for name, pairs in per_task.items():
        rows = [b for b, _ in pairs]
        if rows == list(range(len(idx))):  # every row: the very tensors model(batch, task) would use
            sub, hidden, levels = batch, encoded, maps
        else:
            sel = torch.tensor(rows, device=encoded.device)
            sub = {k: v[sel] if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
            hidden, levels = encoded[sel], None if maps is None else [m[sel] for m in maps]
        logits = model.head_output(model.arch.task_features_maps(hidden, levels, sub, name), name)
        t = tasks[name]
        preds, probs = t.decode(logits, sub), probabilities(t, logits, scores)
        for (_, pos), p, q in zip(pairs, preds, probs):
            out[name][0][pos], out[name][1][pos] = p, q


def probabilities(t: Task, logits: torch.Tensor, wanted: bool) -> list:
    """``[{label: probability}]`` per row for label-set tasks with one score per label, else Nones:
    softmax for a single label (classification), independent sigmoids for a label set (multilabel)."""
    labels = getattr(t, "labels", None)
    if not wanted or not labels or logits.dim() != 2 or logits.shape[1] != len(labels):
        return [None] * logits.shape[0]
    p = torch.sigmoid(logits) if t.type_name == "multilabel" else torch.softmax(logits.float(), -1)
    return [{label: round(float(v), 6) for label, v in zip(labels, row)} for row in p.tolist()]
