"""Serving cost: predicting every task with one multi-task model vs T single-task models.

Measured, not estimated, on the first seed's runs, in this process: every model of a set is
loaded at once (:class:`polytask.predict.Predictor`, each at its run's precision, as
``--precision auto`` chooses), then the same encoded inputs -- the first
``compare.inference_examples`` dev examples of each task, from the comparison's
:class:`~polytask.compare.prepared.Prepared` data -- are predicted after one warm-up batch.
The measurements are cached in ``inference.json``.
"""

from __future__ import annotations

import math
import time
from typing import Any, Callable

from polytask.compare.plan import SINGLE, Plan
from polytask.compare.prepared import Prepared
from polytask.config import CompareConfig
from polytask.files import read_json, write_json
from polytask.run_folder import RunFolder

INFERENCE = "inference.json"


def measure_inference(plan: Plan, echo: Callable[[str], None] = print,
                      prepared: Prepared | None = None) -> dict[str, Any]:
    """Time to predict the dev inputs of every task, per model set; cached in inference.json."""
    n = (plan.cfg.compare or CompareConfig()).inference_examples
    if n <= 0:
        return {}
    path = plan.root / INFERENCE
    cached = read_json(path) if path.exists() else {}
    seed = plan.seeds[0]
    wanted = {k: v for k, v in _model_sets(plan, seed).items()
              if not (k in cached and cached[k].get("seed") == seed and cached[k].get("examples_per_task") == n)}
    if not wanted:
        return cached
    if prepared is None or "dev" not in prepared.splits:
        prepared = Prepared(plan.cfg, splits=("train", "dev"))
    inputs: dict[str, list[dict]] | None = None
    for key, folders in wanted.items():
        if not all(f.is_finished() for f in folders):
            continue
        measured, inputs = _serve(folders, prepared, n, inputs)
        cached[key] = {"seed": seed, "examples_per_task": n, **measured}
        echo(f"serving cost {key}: {measured['models']} model(s), {measured['examples']} dev examples "
             f"in {measured['predict_seconds']:.1f}s")
    write_json(path, cached)
    return cached


def _model_sets(plan: Plan, seed: int) -> dict[str, list[RunFolder]]:
    """The single-task models together, and each method's model, of one seed."""
    sets = {SINGLE: [r.folder for r in plan.select(SINGLE, seed)]}
    sets.update({m: [r.folder for r in plan.select(m, seed)] for m in plan.methods})
    return sets


def _dev_inputs(prepared: Prepared, tokenizer, n: int) -> dict[str, list[dict]]:
    """The first ``n`` dev examples of every task, encoded once for every model set."""
    max_length = prepared.cfg.model.max_length
    return {name: td.task.encode(td.examples.get("dev", [])[:n], tokenizer, max_length)
            for name, td in prepared.data.items()}


def _predict_every_task(owner: dict, inputs: dict[str, list[dict]], batch: int, limit: int | None = None) -> None:
    """Each task's inputs through its model, at that run's precision (``Predictor.precision``)."""
    from polytask.devices import module_device
    from polytask.evaluate import predict_features
    from polytask.precision import autocast

    for name, feats in inputs.items():
        if feats:
            pred = owner[name]
            with autocast(pred.precision, module_device(pred.model).type):
                predict_features(pred.model, pred.tasks[name], feats[:limit], pred.pad_id, batch)


def _serve(folders: list[RunFolder], prepared: Prepared, n: int,
           inputs: dict[str, list[dict]] | None) -> tuple[dict[str, Any], dict[str, list[dict]]]:
    """Load one model set and time its predictions; returns the numbers and the encoded inputs."""
    import torch

    from polytask.predict import Predictor

    started = time.perf_counter()
    preds = [Predictor.load(f.path) for f in folders]
    load_s = time.perf_counter() - started
    owner = {name: p for p in preds for name in p.tasks}
    if inputs is None:
        inputs = _dev_inputs(prepared, preds[0].tokenizer, n)
    batch = prepared.cfg.train.eval_batch_size
    _predict_every_task(owner, inputs, batch, limit=4)  # warm-up: one small batch per model and task
    started = time.perf_counter()
    with torch.inference_mode():
        _predict_every_task(owner, inputs, batch)
    secs = time.perf_counter() - started
    total = sum(len(f) for f in inputs.values())
    return {
        "models": len(preds), "examples": total,
        "params_served": sum(sum(p.numel() for p in pr.model.parameters()) for pr in preds),
        "weight_bytes": sum(f.weights_bytes() for f in folders),
        "load_seconds": load_s, "predict_seconds": secs, "examples_per_s": total / secs if secs else math.nan,
        "torch_threads": torch.get_num_threads(), "precision": sorted({p.precision for p in preds}),
    }, inputs
