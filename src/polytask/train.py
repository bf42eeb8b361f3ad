"""The training loop: one function, read top to bottom.

    prepare data -> build model, weighting, sampler, optimizer -> (resume from a checkpoint)
    for each step:
        pick task(s) -> forward each batch -> losses -> (task gradients) -> weighting.combine
        -> backward -> non-finite check -> clip -> optimizer step -> log
        every eval_every: evaluate, keep the best; every checkpoint_every: checkpoint

Nothing here names a weighting method, an architecture or a task type: they plug in through
``Weighting.combine``, ``Architecture.forward`` and ``Task.loss``. Everything that changes
during training (model, optimizer, scheduler, weighting, sampler, batch streams, RNGs, the
loop's own counters) is in the checkpoint, so ``--resume`` continues the exact trajectory.
"""

from __future__ import annotations

import json
import math
import random
import signal
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm
from transformers import get_scheduler

from polytask import checkpoint as ckpt
from polytask.backbones.encoder import load_encoder
from polytask.batching import BatchStream
from polytask.config import Config, from_dict, load_config, to_dict
from polytask.dataset import encode_all, prepare
from polytask.errors import CheckpointError, ConfigError, PolytaskError
from polytask.evaluate import evaluate, macro_score
from polytask.gradients import balance_params, cosines, task_gram
from polytask.model import MultiTaskModel, build_model
from polytask.report import plot_training
from polytask.sampling import build_sampler
from polytask.state_io import load_state, save_state
from polytask.weighting import build_weighting


class NonFiniteError(PolytaskError):
    """A NaN or infinite loss/gradient that the run's policy does not skip."""


class Interrupted(PolytaskError):
    """SIGINT/SIGTERM during training; a checkpoint was written first."""


@dataclass
class LoopState:
    """The loop's own counters: saved in every checkpoint."""

    step: int = 0
    best: float = -math.inf
    best_step: int = 0
    stale: int = 0
    skipped_steps: list[int] = field(default_factory=list)
    running: dict[str, float] = field(default_factory=dict)
    elapsed: float = 0.0

    def update_loss(self, task: str, loss: float, beta: float = 0.9) -> None:
        prev = self.running.get(task)
        self.running[task] = loss if prev is None else beta * prev + (1 - beta) * loss


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def build_components(cfg: Config, tasks: list[str], sizes: list[int]):
    """Weighting method and sampler from the config; bad arguments name their config key."""
    try:
        weighting = build_weighting(cfg.weighting.name, tasks, cfg.weighting.args)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"weighting.args: {exc}") from exc
    try:
        sampler = build_sampler(cfg.sampling.name, tasks, sizes, cfg.seed, cfg.sampling.args)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"sampling.args: {exc}") from exc
    return weighting, sampler


def make_optimizer(cfg: Config, model: MultiTaskModel, weighting: torch.nn.Module) -> torch.optim.Optimizer:
    """AdamW; weight decay on weight matrices only (not biases or LayerNorm); heads may get their own lr."""
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


class Events:
    """metrics.jsonl: one JSON object per line, appended and flushed as it happens."""

    def __init__(self, path: Path):
        self.path = path

    def write(self, event: dict) -> None:
        with open(self.path, "a") as fh:
            fh.write(json.dumps(event) + "\n")

    def truncate_after(self, step: int) -> None:
        """Drop events logged after ``step`` (they are replayed by a resumed run)."""
        if not self.path.exists():
            return
        keep = [line for line in self.path.read_text().splitlines()
                if line.strip() and json.loads(line)["step"] <= step]
        ckpt.atomic_write(self.path, ("\n".join(keep) + "\n" if keep else "").encode())


class StopFlag:
    """Turns SIGINT/SIGTERM into a flag the loop checks after each step."""

    def __init__(self):
        self.signum: int | None = None
        self._old = {}

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._old[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame):
        if self.signum is None:
            self.signum = signum
        elif signum == signal.SIGINT:  # a second Ctrl-C: a person wants it to stop now
            raise KeyboardInterrupt
        # a repeated SIGTERM (schedulers, parent-death signals) must not cut the checkpoint short

    def __exit__(self, *exc):
        for sig, old in self._old.items():
            signal.signal(sig, old)


def train(cfg: Config | str | Path | None = None, overrides: list[str] | None = None,
          progress: bool = True, resume: str | Path | None = None) -> Path:
    """Train a multi-task model (or continue ``resume``, a run folder); returns the run folder."""
    if resume is not None:
        resume = Path(resume)
        cfg = resumed_config(resume, overrides)
    elif not isinstance(cfg, Config):
        if cfg is None:
            raise ConfigError("give a config file, or --resume RUN_DIR")
        cfg = load_config(cfg, overrides)
    t = cfg.train
    seed_everything(cfg.seed)
    if t.num_threads:
        torch.set_num_threads(t.num_threads)
    run_dir = resume or cfg.run_dir
    run_dir.mkdir(parents=True, exist_ok=True)

    # --- data and model ------------------------------------------------------------------
    data = prepare(cfg)  # raises DataError listing every problem before anything is built
    if cfg.model.kind == "causal_lm":  # a decoder LLM for generation tasks (docs/llm.md)
        from polytask.backbones.causal_lm import load_causal_lm

        backbone, tokenizer = load_causal_lm(cfg.model.backbone, cfg.model.dtype)
    else:
        backbone, tokenizer = load_encoder(cfg.model.backbone)
    encode_all(data, tokenizer, cfg.model.max_length)
    tasks = {name: td.task for name, td in data.items()}
    seed_everything(cfg.seed)  # heads are initialised the same whatever loading consumed
    model = build_model(cfg, backbone, tasks)
    sizes = [len(data[n].features["train"]) for n in tasks]
    weighting, sampler = build_components(cfg, list(tasks), sizes)
    lengths = {n: [len(f["input_ids"]) for f in data[n].features["train"]] for n in tasks}
    streams = {n: BatchStream(lengths[n], t.batch_size, cfg.seed + i, grouped=t.length_grouping)
               for i, n in enumerate(tasks)}
    # separate streams for cosine probes, so that probing does not change what is trained on
    probes = {n: BatchStream(lengths[n], t.batch_size, cfg.seed + 1000 + i, grouped=t.length_grouping)
              for i, n in enumerate(tasks)}
    cosine_every = t.eval_every if t.cosine_every is None else t.cosine_every
    optimizer = make_optimizer(cfg, model, weighting)
    scheduler = get_scheduler(
        "constant_with_warmup" if t.schedule == "constant" else t.schedule, optimizer,
        num_warmup_steps=int(t.warmup_ratio * t.max_steps), num_training_steps=t.max_steps,
    )
    grad_params = balance_params(model, t.grad_space, t.grad_layers)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    log = Events(run_dir / "metrics.jsonl")
    state = LoopState()
    stateful = {"optimizer": optimizer, "scheduler": scheduler, "weighting": weighting,
                "sampler": sampler, **{f"stream:{n}": s for n, s in streams.items()},
                **{f"probe:{n}": s for n, s in probes.items()}}

    if resume is not None:
        state = restore_checkpoint(run_dir, model, stateful)
        log.truncate_after(state.step)
        print(f"resuming {run_dir} at step {state.step}")
    else:
        save_run_files(cfg, run_dir, tasks, tokenizer, backbone)
        log.path.write_text("")
        log.write({"kind": "start", "step": 0, "params": model.describe(), "train_sizes": dict(zip(tasks, sizes))})

    def checkpoint() -> None:
        ckpt.save_checkpoint(run_dir, state.step, lambda d: write_checkpoint(d, model, stateful, state),
                             keep=t.keep_checkpoints)

    # --- the loop ------------------------------------------------------------------------
    bar = tqdm(total=t.max_steps, initial=state.step, desc="train", disable=not progress, dynamic_ncols=True)
    started = time.perf_counter() - state.elapsed
    with StopFlag() as stop:
        while state.step < t.max_steps:
            step = state.step
            model.train()
            step_weights: dict[str, float] = {}
            grad_norms: dict[str, float] = {}
            step_cos, fault = None, None
            for _ in range(t.grad_accum):
                names = list(tasks) if weighting.needs_all_tasks else [sampler.sample(step, t.max_steps)]
                indices = {n: streams[n].next() for n in names}
                batches = {n: train_batch(data[n], indices[n], pad_id) for n in names}
                want_gram = len(names) > 1 and (step + 1) % t.log_every == 0
                result = forward_backward(model, tasks, batches, weighting, t, grad_params, want_gram, t.grad_accum)
                if result.bad_task is not None:
                    fault = ("loss", result.bad_task, indices[result.bad_task])
                    break
                if result.gram is not None:
                    step_cos = cosines(result.gram)
                    grad_norms.update(zip(names, result.gram.diagonal().clamp(min=0).sqrt().tolist()))
                for name, loss, w in zip(names, result.losses, result.weights):
                    state.update_loss(name, loss)
                    step_weights[name] = w
            norm = torch.nn.utils.clip_grad_norm_(model.parameters(), t.grad_clip or math.inf)
            if fault is None and not torch.isfinite(norm):
                fault = ("gradient", names[0] if len(names) == 1 else ",".join(names), indices[names[0]])
            if len(names) == 1 and t.grad_accum == 1:
                grad_norms.setdefault(names[0], float(norm))
            if fault is None:
                optimizer.step()
                scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            state.step += 1
            if fault is not None:
                handle_fault(cfg, state, log, fault, data, bar)
            bar.update(1)
            bar.set_postfix({k: f"{v:.3f}" for k, v in state.running.items()}, refresh=False)

            if state.step % t.log_every == 0:
                event = {"kind": "train", "step": state.step, "loss": dict(state.running), "weights": step_weights,
                         "grad_norm": grad_norms, "lr": scheduler.get_last_lr()[0],
                         "elapsed": time.perf_counter() - started}
                cos_names = names  # the tasks step_cos is about
                if step_cos is None and len(tasks) > 1 and probe_due(state.step, t.log_every, cosine_every):
                    cos_names = list(tasks)
                    batches = {n: train_batch(data[n], probes[n].next(), pad_id) for n in cos_names}
                    gram = probe_gram(model, tasks, batches, t, grad_params)
                    step_cos = cosines(gram)
                    event["probe_grad_norm"] = dict(zip(cos_names, gram.diagonal().clamp(min=0).sqrt().tolist()))
                if step_cos is not None:
                    event["cosine"] = {f"{a}|{b}": float(step_cos[i, j]) for i, a in enumerate(cos_names)
                                       for j, b in enumerate(cos_names) if i < j}
                log.write(event)

            stop_early = False
            if state.step % t.eval_every == 0 or state.step == t.max_steps:
                results = evaluate(model, data, "dev", pad_id, t.eval_batch_size)
                score = macro_score(results, tasks)
                log.write({"kind": "eval", "step": state.step, "split": "dev", "metrics": results, "macro": score,
                           "main": {n: r[tasks[n].main_metric] for n, r in results.items()}})
                if not results or score > state.best:
                    state.best, state.best_step, state.stale = score, state.step, 0
                    ckpt.save_weights(model, run_dir / "model.safetensors", {"step": state.step, "dev_macro": score})
                else:
                    state.stale += 1
                bar.write(format_eval(state.step, results, score, tasks))
                stop_early = bool(t.early_stopping and state.stale >= t.early_stopping)
            state.elapsed = time.perf_counter() - started
            if state.step % (t.checkpoint_every or t.eval_every) == 0 or stop.signum is not None:
                checkpoint()
            if stop.signum is not None:
                bar.close()
                name = signal.Signals(stop.signum).name
                log.write({"kind": "interrupted", "step": state.step, "signal": name})
                raise Interrupted(f"{name} at step {state.step}: checkpoint saved; "
                                  f"continue with: polytask train --resume {run_dir}")
            if stop_early:
                bar.write(f"early stopping: no improvement in {state.stale} evaluations")
                break
    bar.close()

    # --- final: best weights on dev (and test) ---------------------------------------------
    ckpt.load_weights(model, run_dir / "model.safetensors")
    summary = {"best_step": state.best_step, "train_seconds": state.elapsed, "steps": state.step,
               "skipped_batches": len(state.skipped_steps), "params": model.describe()}
    for split in ("dev", "test"):
        results = evaluate(model, data, split, pad_id, t.eval_batch_size)
        if results:
            summary[split] = results
            summary[f"{split}_macro"] = macro_score(results, tasks)
    ckpt.write_json(run_dir / "summary.json", summary)
    plot_training(log.path, run_dir / "training.png")
    return run_dir


@dataclass
class StepResult:
    losses: list[float]
    weights: list[float]
    gram: torch.Tensor | None = None  # (T, T) when task gradients were taken
    bad_task: str | None = None  # the first task whose loss was not finite (nothing was back-propagated)


def forward_backward(model: MultiTaskModel, tasks: dict, batches: dict[str, dict], weighting, t,
                     grad_params, want_gram: bool = False, accum: int = 1) -> StepResult:
    """One micro-step: forward each task's batch, combine the losses, back-propagate.

    The weighting method decides the coefficients (from the Gram matrix of the task gradients
    if it needs them); the architecture's regulariser is added; gradients accumulate in
    ``.grad`` scaled by ``1/accum``.
    """
    names = list(batches)
    losses, feats = task_losses(model, tasks, batches)
    for name, loss in zip(names, losses):
        if not torch.isfinite(loss):
            return StepResult([], [], bad_task=name)
    gram = None
    if weighting.needs_grads or want_gram:
        gram = task_gram(losses, t.grad_space, feats, grad_params)
    total, weights = weighting.combine(torch.stack(losses), names, gram if weighting.needs_grads else None)
    reg = model.arch.regularizer()
    if reg is not None:
        total = total + reg
    (total / accum).backward()
    return StepResult([float(x.detach()) for x in losses], weights.tolist(), gram)


def train_batch(task_data, indices: list[int], pad_id: int) -> dict:
    """The padded tensors of these training examples of one task."""
    return task_data.task.collate([task_data.features["train"][i] for i in indices], pad_id)


def task_losses(model: MultiTaskModel, tasks: dict, batches: dict[str, dict]) -> tuple[list, list]:
    """Each task's loss on its batch (scalars) and the features it was computed from."""
    losses, feats = [], []
    for name, batch in batches.items():
        out, f = model(batch, name)
        losses.append(tasks[name].loss(out, batch))
        feats.append(f)
    return losses, feats


def probe_gram(model: MultiTaskModel, tasks: dict, batches: dict[str, dict], t, grad_params) -> torch.Tensor:
    """(T, T) Gram matrix of the task gradients on one batch per task, without training.

    Eval mode (no dropout), so the torch RNG is not consumed and the run's trajectory is the
    same with or without probes; ``autograd.grad`` leaves ``.grad`` untouched.
    """
    was_training = model.training
    model.eval()
    try:
        losses, feats = task_losses(model, tasks, batches)
        return task_gram(losses, t.grad_space, feats, grad_params)
    finally:
        model.train(was_training)


def probe_due(step: int, log_every: int, every: int) -> bool:
    """A log step at or after a multiple of ``every`` (the first one in (step - log_every, step])."""
    return every > 0 and step % log_every == 0 and step // every != (step - log_every) // every


def handle_fault(cfg: Config, state: LoopState, log: Events, fault, data, bar) -> None:
    """Apply the non-finite policy: count and skip the batch, or stop with a report."""
    kind, task, indices = fault
    first = data[task.split(",")[0]].examples["train"][indices[0]].source
    report = (f"non-finite {kind} in task '{task}' at step {state.step} "
              f"(batch of {len(indices)} examples, first: {first})")
    log.write({"kind": "nonfinite", "step": state.step, "what": kind, "task": task, "first_example": first})
    if cfg.train.on_nonfinite == "stop":
        raise NonFiniteError(report + "; set train.on_nonfinite=skip to skip such batches")
    state.skipped_steps = [s for s in state.skipped_steps if s > state.step - cfg.train.skip_window] + [state.step]
    bar.write(f"skipped: {report}")
    if len(state.skipped_steps) > cfg.train.max_skips:
        raise NonFiniteError(f"{len(state.skipped_steps)} batches skipped within {cfg.train.skip_window} steps "
                             f"(train.max_skips={cfg.train.max_skips}); last: {report}")


def write_checkpoint(directory: Path, model: torch.nn.Module, stateful: dict, state: LoopState) -> None:
    ckpt.save_model_file(model, directory / "model.safetensors")
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    rng = {"torch": torch.get_rng_state(), "numpy": [kind, keys.tolist(), pos, has_gauss, gauss],
           "python": random.getstate()}
    save_state(directory, "state", {
        "components": {k: v.state_dict() for k, v in stateful.items()},
        "loop": state.__dict__, "rng": rng,
    })


def restore_checkpoint(run_dir: Path, model: torch.nn.Module, stateful: dict) -> LoopState:
    path = ckpt.latest_good_checkpoint(run_dir)
    if path is None:
        raise CheckpointError(f"no usable checkpoint under {run_dir / 'checkpoints'} to resume from")
    ckpt.load_model_file(model, path / "model.safetensors")
    saved = load_state(path, "state")
    for key, obj in stateful.items():
        obj.load_state_dict(saved["components"][key])
    rng = saved["rng"]
    torch.set_rng_state(rng["torch"])
    np_state = rng["numpy"]
    np.random.set_state((np_state[0], np.asarray(np_state[1], dtype=np.uint32), *np_state[2:]))
    py = rng["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    return LoopState(**saved["loop"])


def resumed_config(run_dir: Path, overrides: list[str] | None) -> Config:
    """The run's own resolved config (overrides may extend it, e.g. train.max_steps)."""
    import yaml

    from polytask.config import apply_override

    ckpt.check_format(run_dir)
    path = run_dir / "config.yaml"
    if not path.exists():
        raise CheckpointError(f"{run_dir} is not a run folder (no config.yaml)")
    raw = yaml.safe_load(path.read_text())
    for item in overrides or []:
        apply_override(raw, item)
    return from_dict(raw, source=str(path))


def save_run_files(cfg: Config, run_dir: Path, tasks, tokenizer, backbone) -> None:
    ckpt.write_format_marker(run_dir)
    ckpt.write_yaml(run_dir / "config.yaml", to_dict(cfg))
    ckpt.write_json(run_dir / "vocab.json", {n: t.vocab_state() for n, t in tasks.items()})
    tokenizer.save_pretrained(run_dir / "tokenizer")
    backbone.config.save_pretrained(run_dir / "backbone")


def format_eval(step: int, results: dict, score: float, tasks) -> str:
    parts = [f"{n}: {tasks[n].main_metric}={r[tasks[n].main_metric]:.4f}" for n, r in results.items()]
    return f"step {step} dev | " + " | ".join(parts) + f" | macro={score:.4f}"
