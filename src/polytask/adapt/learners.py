"""What one adaptation run trains, behind one small interface (``loss``, ``predict``, ``params``).

- :class:`CachedHead` (``--tune head``): the encoder is frozen and in eval mode, so its output
  for an example never changes; each example is encoded once (:func:`encode_cached`) and only
  the new head trains, on the cached token states. The same numbers as running the frozen
  encoder every step, at the cost of the head alone.
- :class:`ModelLearner` (``--tune lora`` / ``full``): a :class:`MultiTaskModel` whose new task's
  parameters train (its LoRA adapter, or the whole encoder) through the normal forward pass.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.nn.utils.rnn import pad_sequence
from tqdm.auto import tqdm

from polytask.architectures.base import Architecture
from polytask.batching import eval_batches, feature_length
from polytask.evaluate import predict_features


@torch.no_grad()
def encode_cached(arch, task, feats: list[dict], indices, pad_id: int, batch_size: int,
                  desc: str = "encode", progress: bool = True) -> dict[int, list[Tensor]]:
    """``{i: [(T_r, H) states of each row]}`` of examples ``indices`` from a shared-encoder
    architecture. An example is ``task.batch_rows`` rows of the forward pass, in the order its
    collation puts them (one, or an extractive QA question's windows). A text row's real token
    states (padding cut by the attention mask); an image's every position of its last feature
    map (B, 1 + H * W, C), the global average first, all real."""
    arch.eval()
    indices = sorted(set(indices))
    out: dict[int, list[Tensor]] = {}
    order = eval_batches([feature_length(feats[i]) for i in indices], batch_size)
    for rows in tqdm(order, desc=desc, disable=not progress, leave=False, dynamic_ncols=True):
        idx = [indices[r] for r in rows]
        batch = task.collate([feats[i] for i in idx], pad_id)
        hidden = arch.encode(batch)  # (W, T, H): W >= B rows
        real = arch.positions_mask(batch, hidden).sum(dim=1)  # (W,) positions before the padding
        row = 0
        for i in idx:
            n = task.batch_rows(feats[i])
            out[i] = [hidden[r, :int(real[r])].clone() for r in range(row, row + n)]
            row += n
    return out


class CachedHead:
    """A new task head trained on cached encoder states (``--tune head``)."""

    def __init__(self, task, head: nn.Module, feats: dict[str, list[dict]], cache: dict[str, dict[int, list[Tensor]]],
                 pad_id: int):
        self.task, self.head, self.feats, self.cache, self.pad_id = task, head, feats, cache, pad_id

    def params(self) -> list[nn.Parameter]:
        return list(self.head.parameters())

    def head_ids(self) -> set[int]:
        return {id(p) for p in self.head.parameters()}

    def modules(self) -> list[nn.Module]:
        return [self.head]

    def _forward(self, split: str, idx: list[int]) -> tuple[Tensor, dict]:
        batch = self.task.collate([self.feats[split][i] for i in idx], self.pad_id)
        hidden = pad_sequence([r for i in idx for r in self.cache[split][i]], batch_first=True)  # (W, T, H)
        return self.head(hidden, Architecture.positions_mask(batch, hidden)), batch

    def loss(self, idx: list[int]) -> Tensor:
        self.head.train()
        out, batch = self._forward("train", idx)
        return self.task.loss(out, batch)

    @torch.no_grad()
    def predict(self, split: str, batch_size: int) -> list:
        self.head.eval()
        feats = self.feats[split]
        preds: list = [None] * len(feats)
        for idx in eval_batches([feature_length(f) for f in feats], batch_size):
            out, batch = self._forward(split, idx)
            for i, p in zip(idx, self.task.decode(out, batch)):
                preds[i] = p
        return preds


class ModelLearner:
    """The new task of a :class:`MultiTaskModel`, with ``trainable`` its parameters that train."""

    def __init__(self, model, task, feats: dict[str, list[dict]], pad_id: int, trainable: list[nn.Parameter]):
        self.model, self.task, self.feats, self.pad_id = model, task, feats, pad_id
        self._params = trainable

    def params(self) -> list[nn.Parameter]:
        return self._params

    def head_ids(self) -> set[int]:
        return {id(p) for p in self.model.heads[self.task.name].parameters()}

    def modules(self) -> list[nn.Module]:
        return [self.model]

    def loss(self, idx: list[int]) -> Tensor:
        self.model.train()
        batch = self.task.collate([self.feats["train"][i] for i in idx], self.pad_id)
        out, _ = self.model(batch, self.task.name)
        return self.task.loss(out, batch)

    def predict(self, split: str, batch_size: int) -> list:
        return predict_features(self.model, self.task, self.feats[split], self.pad_id, batch_size)
