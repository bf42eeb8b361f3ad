"""Per-task evaluation, the macro average used for model selection, and prediction batching.

Under several processes (``accelerator`` with ``num_processes > 1``) each process predicts
every N-th batch of each task and the predictions are gathered to every process
(``accelerate.utils.gather_object``), so every process computes the same metrics as one
process would, in about 1/N of the time.
"""

from __future__ import annotations

import math

import torch
from tqdm.auto import tqdm

from polytask.batching import eval_batches, feature_length
from polytask.devices import module_device, to_device
from polytask.dataset import TaskData
from polytask.model import MultiTaskModel
from polytask.tasks import Task


@torch.no_grad()
def predict_features(model: MultiTaskModel, task: Task, feats: list[dict], pad_id: int,
                     batch_size: int, shard: tuple[int, int] = (0, 1), bar=None) -> list:
    """Predictions for encoded examples, in their original order.

    ``shard=(rank, processes)``: only every ``processes``-th batch from ``rank`` on is
    predicted (the others stay None). ``bar``: a tqdm bar advanced once per batch.
    """
    model.eval()
    device = module_device(model)
    preds: list = [None] * len(feats)
    rank, processes = shard
    for idx in eval_batches(lengths(feats), batch_size)[rank::processes]:
        batch = to_device(task.collate([feats[i] for i in idx], pad_id), device)
        for i, p in zip(idx, task.predict_batch(model, batch)):
            preds[i] = p
        if bar is not None:
            bar.update(1)
    return preds


def gathered_predictions(model: MultiTaskModel, task: Task, feats: list[dict], pad_id: int, batch_size: int,
                         accelerator, bar=None) -> list:
    """:func:`predict_features` split over the processes; every process gets them all."""
    from accelerate.utils import gather_object

    shard = (accelerator.process_index, accelerator.num_processes)
    preds = predict_features(model, task, feats, pad_id, batch_size, shard, bar)
    mine = [(i, preds[i]) for idx in eval_batches(lengths(feats), batch_size)[shard[0]::shard[1]] for i in idx]
    for i, p in gather_object(mine):  # every process's (index, prediction) pairs
        preds[i] = p
    return preds


def evaluate(model: MultiTaskModel, data: dict[str, TaskData], split: str, pad_id: int,
             batch_size: int, predictions: dict | None = None, progress: bool = False,
             accelerator=None) -> dict[str, dict[str, float]]:
    """``{task: {metric: value}}`` on ``split`` for every task that has it; with a
    ``predictions`` dict, also ``predictions[task] = {"predictions": [...], "references": [...],
    "inputs": [...]}`` (each example's input as :func:`shown_input` writes it).

    ``progress``: a progress bar over the split's batches (all tasks). ``accelerator`` with
    several processes: the batches are shared out and the predictions gathered (every process
    must call this; each returns the same results).
    """
    several = accelerator is not None and accelerator.num_processes > 1
    rank, processes = (accelerator.process_index, accelerator.num_processes) if several else (0, 1)
    batches = sum(len(eval_batches(lengths(td.features.get(split) or []), batch_size)[rank::processes])
                  for td in data.values())
    bar = tqdm(total=batches, desc=f"eval {split}", leave=False, dynamic_ncols=True,
               disable=not progress or batches == 0 or rank != 0)
    results = {}
    for name, td in data.items():
        feats = td.features.get(split)
        if not feats:
            continue
        if several:
            preds = gathered_predictions(model, td.task, feats, pad_id, batch_size, accelerator, bar)
        else:
            preds = predict_features(model, td.task, feats, pad_id, batch_size, bar=bar)
        refs = [td.task.reference(e) for e in td.examples[split]]
        results[name] = td.task.metrics(preds, refs)
        if predictions is not None:
            predictions[name] = {"predictions": preds, "references": refs,
                                 "inputs": [shown_input(td.task, e) for e in td.examples[split]]}
    bar.close()
    return results


SHOWN_CHARS = 300  # an input's text is cut to this many characters in the saved predictions


def shown_input(task: Task, example) -> str:
    """An example's input as saved with its prediction (``predictions/<split>.json``, the report):
    its text fields joined by `` || `` (a tagging task's words by spaces), cut to
    :data:`SHOWN_CHARS`; an image's path, or for an image array where it was read (``file:row``)."""
    parts = []
    for f in (*task.input_fields, *task.optional_fields):
        value = example.fields.get(f)
        if isinstance(value, str):
            parts.append(value)
        elif isinstance(value, (list, tuple)):
            parts.append(" ".join(map(str, value)))
        elif value is not None:  # an image array (an .npz row)
            parts.append(example.source)
    text = " || ".join(parts)
    return text if len(text) <= SHOWN_CHARS else text[: SHOWN_CHARS - 3] + "..."


def lengths(feats: list[dict]) -> list[int]:
    return [feature_length(f) for f in feats]


def macro_score(results: dict[str, dict[str, float]], tasks: dict[str, Task]) -> float:
    """Mean over tasks of the main metric (negated when lower is better): the selection score."""
    scores = []
    for name, metrics in results.items():
        task = tasks[name]
        value = metrics[task.main_metric]
        scores.append(value if task.higher_is_better else -value)
    return sum(scores) / len(scores) if scores else math.nan
