"""The training loop: one function, read top to bottom.

    prepare data -> build model, weighting, sampler, optimizer -> for each step:
        pick task(s) -> forward each batch -> losses -> (task gradients) -> weighting.combine
        -> backward -> clip -> optimizer step -> log -> every eval_every: evaluate, keep best

Nothing here names a weighting method, an architecture or a task type: they plug in through
``Weighting.combine``, ``Architecture.forward`` and ``Task.loss``.
"""

from __future__ import annotations

import json
import math
import random
import time
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm
from transformers import get_scheduler

from polytask import checkpoint as ckpt
from polytask.backbones.encoder import load_encoder
from polytask.batching import BatchStream
from polytask.config import Config, load_config, to_dict
from polytask.dataset import encode_all, prepare
from polytask.evaluate import evaluate, macro_score
from polytask.gradients import balance_params, cosines, task_gram
from polytask.model import MultiTaskModel, build_model
from polytask.report import plot_training
from polytask.sampling import build_sampler
from polytask.weighting import build_weighting


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def make_optimizer(cfg: Config, model: MultiTaskModel, weighting: torch.nn.Module) -> torch.optim.Optimizer:
    """AdamW; weight decay on weight matrices only (not biases or LayerNorm), heads may get their own lr."""
    t = cfg.train
    groups: dict[tuple[float, float], list] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        lr = t.head_lr if (t.head_lr and name.startswith("heads.")) else t.lr
        decay = t.weight_decay if p.ndim >= 2 else 0.0
        groups.setdefault((lr, decay), []).append(p)
    params = [{"params": ps, "lr": lr, "weight_decay": wd} for (lr, wd), ps in groups.items()]
    extra = [p for p in weighting.parameters() if p.requires_grad]
    if extra:
        params.append({"params": extra, "lr": t.weighting_lr, "weight_decay": 0.0})
    return torch.optim.AdamW(params, lr=t.lr)


class Logger:
    """Appends events to metrics.jsonl and keeps running per-task losses for the progress bar."""

    def __init__(self, path: Path):
        self.path = path
        self.running: dict[str, float] = {}

    def update_loss(self, task: str, loss: float, beta: float = 0.9) -> None:
        prev = self.running.get(task)
        self.running[task] = loss if prev is None else beta * prev + (1 - beta) * loss

    def write(self, event: dict) -> None:
        with open(self.path, "a") as fh:
            fh.write(json.dumps(event) + "\n")


def train(cfg: Config | str | Path, overrides: list[str] | None = None, progress: bool = True) -> Path:
    """Train a multi-task model; returns the run folder."""
    if not isinstance(cfg, Config):
        cfg = load_config(cfg, overrides)
    t = cfg.train
    seed_everything(cfg.seed)
    if t.num_threads:
        torch.set_num_threads(t.num_threads)
    run_dir = cfg.run_dir
    run_dir.mkdir(parents=True, exist_ok=True)

    # --- data and model ------------------------------------------------------------------
    data = prepare(cfg)  # raises DataError listing every problem before anything is built
    backbone, tokenizer = load_encoder(cfg.model.backbone)
    encode_all(data, tokenizer, cfg.model.max_length)
    tasks = {name: td.task for name, td in data.items()}
    seed_everything(cfg.seed)  # heads are initialised the same whatever loading consumed
    model = build_model(cfg, backbone, tasks)
    weighting = build_weighting(cfg.weighting.name, list(tasks), cfg.weighting.args)
    sizes = [len(data[n].features["train"]) for n in tasks]
    sampler = build_sampler(cfg.sampling.name, list(tasks), sizes, cfg.seed, cfg.sampling.args)
    streams = {
        n: BatchStream([len(f["input_ids"]) for f in data[n].features["train"]], t.batch_size,
                       cfg.seed + i, grouped=t.length_grouping)
        for i, n in enumerate(tasks)
    }
    optimizer = make_optimizer(cfg, model, weighting)
    scheduler = get_scheduler(
        "constant_with_warmup" if t.schedule == "constant" else t.schedule, optimizer,
        num_warmup_steps=int(t.warmup_ratio * t.max_steps), num_training_steps=t.max_steps,
    )
    grad_params = balance_params(model, t.grad_space, t.grad_layers) if weighting.needs_grads else None
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    save_run_files(cfg, run_dir, tasks, tokenizer, backbone)
    log = Logger(run_dir / "metrics.jsonl")
    log.path.write_text("")
    log.write({"kind": "start", "step": 0, "params": model.describe(), "train_sizes": dict(zip(tasks, sizes))})

    # --- the loop ------------------------------------------------------------------------
    best, best_step, stale = -math.inf, 0, 0
    bar = tqdm(range(t.max_steps), desc="train", disable=not progress, dynamic_ncols=True)
    started = time.perf_counter()
    for step in bar:
        model.train()
        step_weights: dict[str, float] = {}
        step_cos = None
        for _ in range(t.grad_accum):
            names = list(tasks) if weighting.needs_all_tasks else [sampler.sample(step, t.max_steps)]
            losses, feats = [], []
            for name in names:
                idx = streams[name].next()
                batch = tasks[name].collate([data[name].features["train"][i] for i in idx], pad_id)
                out, f = model(batch, name)
                losses.append(tasks[name].loss(out, batch))
                feats.append(f)
            want_cos = len(names) > 1 and (step + 1) % t.log_every == 0
            gram = None
            if weighting.needs_grads or want_cos:
                gram = task_gram(losses, t.grad_space, feats, grad_params)
                step_cos = cosines(gram)
            total, weights = weighting.combine(torch.stack(losses), names, gram if weighting.needs_grads else None)
            reg = model.arch.regularizer()
            if reg is not None:
                total = total + reg
            (total / t.grad_accum).backward()
            for name, loss, w in zip(names, losses, weights.tolist()):
                log.update_loss(name, float(loss.detach()))
                step_weights[name] = w
        if t.grad_clip:
            torch.nn.utils.clip_grad_norm_(model.parameters(), t.grad_clip)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        bar.set_postfix({k: f"{v:.3f}" for k, v in log.running.items()}, refresh=False)

        if (step + 1) % t.log_every == 0:
            event = {"kind": "train", "step": step + 1, "loss": dict(log.running), "weights": step_weights,
                     "lr": scheduler.get_last_lr()[0], "elapsed": time.perf_counter() - started}
            if step_cos is not None:
                event["cosine"] = {f"{a}|{b}": float(step_cos[i, j]) for i, a in enumerate(names)
                                   for j, b in enumerate(names) if i < j}
            log.write(event)

        if (step + 1) % t.eval_every == 0 or step + 1 == t.max_steps:
            results = evaluate(model, data, "dev", pad_id, t.eval_batch_size)
            score = macro_score(results, tasks)
            log.write({"kind": "eval", "step": step + 1, "split": "dev", "metrics": results, "macro": score,
                       "main": {n: r[tasks[n].main_metric] for n, r in results.items()}})
            if not results or score > best:
                best, best_step, stale = score, step + 1, 0
                ckpt.save_weights(model, run_dir / "model.safetensors", {"step": step + 1, "dev_macro": score})
            else:
                stale += 1
            bar.write(format_eval(step + 1, results, score, tasks))
            if t.early_stopping and stale >= t.early_stopping:
                bar.write(f"early stopping: no improvement in {stale} evaluations")
                break
    bar.close()
    elapsed = time.perf_counter() - started

    # --- final: best weights on dev (and test) ---------------------------------------------
    ckpt.load_weights(model, run_dir / "model.safetensors")
    summary = {"best_step": best_step, "train_seconds": elapsed, "params": model.describe()}
    for split in ("dev", "test"):
        results = evaluate(model, data, split, pad_id, t.eval_batch_size)
        if results:
            summary[split] = results
            summary[f"{split}_macro"] = macro_score(results, tasks)
    ckpt.write_json(run_dir / "summary.json", summary)
    plot_training(log.path, run_dir / "training.png")
    return run_dir


def save_run_files(cfg: Config, run_dir: Path, tasks, tokenizer, backbone) -> None:
    ckpt.write_yaml(run_dir / "config.yaml", to_dict(cfg))
    ckpt.write_json(run_dir / "vocab.json", {n: t.vocab_state() for n, t in tasks.items()})
    tokenizer.save_pretrained(run_dir / "tokenizer")
    backbone.config.save_pretrained(run_dir / "backbone")


def format_eval(step: int, results: dict, score: float, tasks) -> str:
    parts = [f"{n}: {tasks[n].main_metric}={r[tasks[n].main_metric]:.4f}" for n, r in results.items()]
    return f"step {step} dev | " + " | ".join(parts) + f" | macro={score:.4f}"
