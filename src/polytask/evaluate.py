"""Per-task evaluation, the macro average used for model selection, and prediction batching."""

from __future__ import annotations

import math

import torch

from polytask.batching import eval_batches
from polytask.devices import module_device, to_device
from polytask.dataset import TaskData
from polytask.model import MultiTaskModel
from polytask.tasks import Task


@torch.no_grad()
def predict_features(model: MultiTaskModel, task: Task, feats: list[dict], pad_id: int,
                     batch_size: int) -> list:
    """Predictions for encoded examples, in their original order."""
    model.eval()
    device = module_device(model)
    preds: list = [None] * len(feats)
    for idx in eval_batches([len(f["input_ids"]) for f in feats], batch_size):
        batch = to_device(task.collate([feats[i] for i in idx], pad_id), device)
        for i, p in zip(idx, task.predict_batch(model, batch)):
            preds[i] = p
    return preds


def evaluate(model: MultiTaskModel, data: dict[str, TaskData], split: str, pad_id: int,
             batch_size: int, predictions: dict | None = None) -> dict[str, dict[str, float]]:
    """``{task: {metric: value}}`` on ``split`` for every task that has it; with a
    ``predictions`` dict, also ``predictions[task] = {"predictions": [...], "references": [...]}``."""
    results = {}
    for name, td in data.items():
        feats = td.features.get(split)
        if not feats:
            continue
        preds = predict_features(model, td.task, feats, pad_id, batch_size)
        refs = [td.task.reference(e) for e in td.examples[split]]
        results[name] = td.task.metrics(preds, refs)
        if predictions is not None:
            predictions[name] = {"predictions": preds, "references": refs}
    return results


def macro_score(results: dict[str, dict[str, float]], tasks: dict[str, Task]) -> float:
    """Mean over tasks of the main metric (negated when lower is better): the selection score."""
    scores = []
    for name, metrics in results.items():
        task = tasks[name]
        value = metrics[task.main_metric]
        scores.append(value if task.higher_is_better else -value)
    return sum(scores) / len(scores) if scores else math.nan
