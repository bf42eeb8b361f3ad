"""Single-label classification of one text or a text pair (SST-2, CoLA, MRPC, TREC).

Head: pooled encoder state -> linear over the label set. Loss: cross-entropy.
Metrics: accuracy, macro-F1, Matthews correlation; for two labels also the F1 of the positive
class (the second label in sorted order, e.g. "1" or "positive"). Default main metric: accuracy
(set ``main_metric: matthews`` for CoLA, ``f1`` for MRPC).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from polytask import metrics as M
from polytask.errors import ConfigError
from polytask.tasks.base import Example, SequenceHead, Task


class ClassificationTask(Task):
    type_name = "classification"
    reads = frozenset({"tokens", "pixels"})  # the pooled head fits token states and feature maps alike
    default_metric = "accuracy"
    metric_names = ("accuracy", "macro_f1", "matthews", "f1")

    def __init__(self, cfg):
        super().__init__(cfg)
        self.labels: list[str] = list(cfg.labels) if cfg.labels else []

    def check_target(self, value):
        """A label as text, renamed by ``label_names`` when the task has them (every value must be named)."""
        value, problem = super().check_target(value)
        names = {str(k): str(v) for k, v in (self.cfg.label_names or {}).items()}
        if problem or not names:
            return value, problem
        if value not in names:
            return value, f"label {value!r} has no entry in label_names (named: {sorted(names)})"
        return names[value], None

    def fit(self, train: list[Example]) -> None:
        if not self.cfg.labels:
            self.labels = sorted({e.fields["label"] for e in train})
        if self.main_metric == "f1" and len(self.labels) != 2:
            raise ConfigError(f"tasks[{self.name}].main_metric: 'f1' is the binary F1 of the second label, but "
                              f"this task has {len(self.labels)} labels; use macro_f1, accuracy or matthews")
        positive = self.cfg.positive_label
        if positive is not None and (len(self.labels) != 2 or positive not in self.labels):
            raise ConfigError(f"tasks[{self.name}].positive_label: {positive!r} must be one of the two labels of a "
                              f"binary task (labels: {self.labels})")

    @property
    def positive_label(self) -> str | None:
        """The class whose F1 is reported as ``f1`` (binary tasks): ``positive_label`` or the second label."""
        if len(self.labels) != 2:
            return None
        return self.cfg.positive_label or self.labels[1]

    def check_eval(self, example: Example) -> str | None:
        if example.fields["label"] not in self.labels:
            return f"label {example.fields['label']!r} not seen in training (known: {self.labels})"
        return None

    def vocab_state(self) -> dict:
        return {"labels": self.labels}

    def load_vocab_state(self, state: dict) -> None:
        self.labels = list(state["labels"])

    def encode_target(self, value: Any) -> int:
        return self.labels.index(value)

    def collate_labels(self, labels: list, width: int) -> Tensor:
        return torch.tensor(labels, dtype=torch.long)

    def make_head(self, hidden_size: int) -> nn.Module:
        return SequenceHead(hidden_size, len(self.labels), self.cfg.pooling, self.cfg.head_dropout)

    def loss(self, out: Tensor, batch: dict[str, Tensor]) -> Tensor:
        return F.cross_entropy(out, batch["labels"])

    def decode(self, out: Tensor, batch: dict[str, Tensor]) -> list[str]:
        return [self.labels[i] for i in out.argmax(-1).tolist()]

    def metrics(self, preds: list, refs: list) -> dict[str, float]:
        result = {
            "accuracy": M.accuracy(refs, preds),
            "macro_f1": M.macro_f1(refs, preds),
            "matthews": M.matthews(refs, preds),
        }
        if len(self.labels) == 2:
            result["f1"] = M.f1_binary(refs, preds, positive=self.positive_label)
        return result
