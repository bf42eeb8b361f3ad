"""Multi-label classification: each text carries zero or more labels from a fixed set.

The label field is a list of labels, or one string split on ``label_separator`` (default ",").
Head: pooled state -> one logit per label. Loss: binary cross-entropy. A label is predicted
when its probability exceeds 0.5. Metrics: micro- and macro-F1 (default main: micro_f1).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from polytask import metrics as M
from polytask.tasks.base import Example, SequenceHead, Task


class MultiLabelTask(Task):
    type_name = "multilabel"
    reads = frozenset({"tokens", "pixels"})  # the pooled head fits token states and feature maps alike
    default_metric = "micro_f1"
    metric_names = ("micro_f1", "macro_f1")

    def __init__(self, cfg):
        super().__init__(cfg)
        self.labels: list[str] = list(cfg.labels) if cfg.labels else []

    def check_target(self, value: Any) -> tuple[Any, str | None]:
        if isinstance(value, str):
            value = [v.strip() for v in value.split(self.cfg.label_separator) if v.strip()]
        if not isinstance(value, list):
            return value, f"expected a list of labels or a '{self.cfg.label_separator}'-separated string"
        return sorted({str(v) for v in value}), None

    def fit(self, train: list[Example]) -> None:
        if not self.cfg.labels:
            self.labels = sorted({label for e in train for label in e.fields["label"]})

    def check_eval(self, example: Example) -> str | None:
        unknown = [x for x in example.fields["label"] if x not in self.labels]
        return f"labels {unknown} not seen in training" if unknown else None

    def vocab_state(self) -> dict:
        return {"labels": self.labels}

    def load_vocab_state(self, state: dict) -> None:
        self.labels = list(state["labels"])

    def encode_target(self, value: list[str]) -> list[float]:
        return [1.0 if label in value else 0.0 for label in self.labels]

    def collate_labels(self, labels: list, width: int) -> Tensor:
        return torch.tensor(labels, dtype=torch.float)

    def make_head(self, hidden_size: int) -> nn.Module:
        return SequenceHead(hidden_size, len(self.labels), self.cfg.pooling, self.cfg.head_dropout)

    def loss(self, out: Tensor, batch: dict[str, Tensor]) -> Tensor:
        return F.binary_cross_entropy_with_logits(out, batch["labels"])

    def decode(self, out: Tensor, batch: dict[str, Tensor]) -> list[list[str]]:
        on = (out.sigmoid() > 0.5).tolist()
        return [[label for label, v in zip(self.labels, row) if v] for row in on]

    def metrics(self, preds: list, refs: list) -> dict[str, float]:
        to_rows = lambda sets: [[1 if x in s else 0 for x in self.labels] for s in sets]  # noqa: E731
        yt, yp = to_rows(refs), to_rows(preds)
        return {
            "micro_f1": M.multilabel_f1(yt, yp, average="micro"),
            "macro_f1": M.multilabel_f1(yt, yp, average="macro"),
        }
