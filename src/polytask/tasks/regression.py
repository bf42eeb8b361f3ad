"""Regression on one text or a text pair (e.g. STS-B similarity, 0-5).

Targets are standardised with the training mean and standard deviation (saved with the label
vocabularies) so that the mean-squared-error loss has unit scale like the other tasks' losses;
predictions are mapped back to the original scale. Metrics: Pearson, Spearman, MSE (default
main: pearson).
"""

from __future__ import annotations

import math
import reprlib
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from polytask import metrics as M
from polytask.tasks.base import Example, SequenceHead, Task


class RegressionTask(Task):
    type_name = "regression"
    reads = frozenset({"tokens", "pixels"})  # the pooled head fits token states and feature maps alike
    default_metric = "pearson"
    metric_names = ("pearson", "spearman", "mse")
    target_field = "target"

    def __init__(self, cfg):
        super().__init__(cfg)
        self.mean, self.std = 0.0, 1.0

    def check_target(self, value: Any) -> tuple[Any, str | None]:
        if isinstance(value, bool):  # float(True) is 1.0: a label column named as the target
            return value, f"expected a number, got {reprlib.repr(value)}"
        try:
            number = float(value)
        except (TypeError, ValueError):
            return value, f"expected a number, got {reprlib.repr(value)}"
        if not math.isfinite(number):
            return number, f"target is not a finite number ({reprlib.repr(value)})"
        return number, None

    def fit(self, train: list[Example]) -> None:
        ys = torch.tensor([e.fields["target"] for e in train], dtype=torch.float64)
        self.mean = float(ys.mean())
        self.std = float(ys.std()) if len(ys) > 1 and float(ys.std()) > 0 else 1.0
        self.warnings = extreme_targets(ys, train)


    def vocab_state(self) -> dict:
        return {"mean": self.mean, "std": self.std}

    def load_vocab_state(self, state: dict) -> None:
        self.mean, self.std = float(state["mean"]), float(state["std"])

    def encode_target(self, value: float) -> float:
        return (value - self.mean) / self.std

    def collate_labels(self, labels: list, width: int) -> Tensor:
        return torch.tensor(labels, dtype=torch.float)

    def make_head(self, hidden_size: int) -> nn.Module:
        return SequenceHead(hidden_size, 1, self.cfg.pooling, self.cfg.head_dropout)

    def loss(self, out: Tensor, batch: dict[str, Tensor]) -> Tensor:
        return F.mse_loss(out.squeeze(-1), batch["labels"])

    def decode(self, out: Tensor, batch: dict[str, Tensor]) -> list[float]:
        return (out.squeeze(-1).double() * self.std + self.mean).tolist()

    def metrics(self, preds: list, refs: list) -> dict[str, float]:
        mse = sum((p - r) ** 2 for p, r in zip(preds, refs)) / max(len(refs), 1)
        return {"pearson": M.pearson(refs, preds), "spearman": M.spearman(refs, preds), "mse": mse}


def extreme_targets(ys: Tensor, train: list[Example], ratio: float = 1e6) -> list[str]:
    """Targets more than ``ratio`` median absolute deviations from the median: one such value
    sets the standardisation's scale, and every other target becomes ~0 (a typo like 1e30)."""
    median = ys.median()
    mad = (ys - median).abs().median()
    if len(ys) < 3 or float(mad) == 0.0:
        return []
    far = ((ys - median).abs() > ratio * mad).nonzero(as_tuple=True)[0].tolist()
    if not far:
        return []
    where = ", ".join(f"{train[i].source} ({float(ys[i]):g})" for i in far[:3])
    return [f"{len(far)} regression target(s) over {ratio:g} median absolute deviations from the median "
            f"({float(median):g}): {where}; standardising by them flattens every other target"]
