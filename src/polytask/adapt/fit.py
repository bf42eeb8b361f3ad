"""One adaptation run: AdamW with warm-up, ``train.max_steps`` steps, the best dev weights kept.

The same optimisation as ``polytask train`` for one task (AdamW, weight decay on weight matrices
only, linear warm-up then the configured schedule, gradient clipping, an evaluation on dev every
``train.eval_every`` steps and the best one kept), over the parameters the tuning mode trains.
Batches are ``min(train.batch_size, K)`` examples, reshuffled each epoch with the run's seed.
"""

from __future__ import annotations

import math
import time

import torch
from tqdm.auto import tqdm

from polytask.steps import adamw, make_scheduler


def batches(train_idx: list[int], batch_size: int, seed: int):
    """Endless batches of ``train_idx``: a new seeded permutation each epoch."""
    g = torch.Generator().manual_seed(seed)
    size = min(batch_size, len(train_idx))
    while True:
        order = torch.randperm(len(train_idx), generator=g).tolist()
        for s in range(0, len(order) - size + 1, size):
            yield [train_idx[i] for i in order[s:s + size]]


def score(task, metrics: dict) -> float:
    value = metrics[task.main_metric]
    return value if task.higher_is_better else -value


def evaluate_split(learner, task, refs: dict, split: str, batch_size: int, out: dict | None = None) -> dict | None:
    """``task``'s metrics on ``split`` (None when it has no such split)."""
    if not refs.get(split):
        return None
    preds = learner.predict(split, batch_size)
    if out is not None:
        out[split] = {"predictions": preds, "references": refs[split]}
    return task.metrics(preds, refs[split])


def fit(learner, task, train_idx: list[int], refs: dict, t, seed: int, progress: bool = False,
        desc: str = "adapt") -> dict:
    """Train; restore the best dev weights; returns ``{best_step, steps, seconds, dev, test}``."""
    params = learner.params()
    heads = learner.head_ids()
    optimizer = adamw(t, [(p, id(p) in heads) for p in params])  # as polytask train does
    scheduler = make_scheduler(t, optimizer)
    best, best_step, best_state = -math.inf, 0, None
    started = time.perf_counter()
    stream = batches(train_idx, t.batch_size, seed)
    for step in tqdm(range(1, t.max_steps + 1), desc=desc, disable=not progress, leave=False, dynamic_ncols=True):
        loss = learner.loss(next(stream))
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, t.grad_clip or math.inf)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        if step % t.eval_every == 0 or step == t.max_steps:
            dev = evaluate_split(learner, task, refs, "dev", t.eval_batch_size)
            value = score(task, dev) if dev is not None else float(step)  # no dev: keep the last weights
            if value > best:
                best, best_step, best_state = value, step, [p.detach().clone() for p in params]
    with torch.no_grad():
        for p, v in zip(params, best_state):
            p.copy_(v)
    return {"best_step": best_step, "steps": t.max_steps, "seconds": time.perf_counter() - started}
