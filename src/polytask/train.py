"""The training loop, read top to bottom: :func:`train` is set-up, loop, finish.

    set_up:  prepare data -> load backbone -> build model, weighting, draws, optimizer
             -> write the run folder (or restore the last checkpoint for --resume)
    loop:    for each step: draw task(s) and examples -> forward each batch -> losses
             -> (task gradients) -> weighting.combine -> backward -> non-finite check -> clip
             -> optimizer step -> log; every eval_every: evaluate, keep the best;
             every checkpoint_every: checkpoint. The coming micro-steps' batches are
             collated meanwhile on a thread (``train.prefetch``, :mod:`polytask.prefetch`)
    finish:  best weights -> dev and test metrics -> summary.json, training.png
    beside:  :mod:`polytask.train_folder` (the run folder, checkpoints), :mod:`polytask.train_faults`
             (non-finite faults, signals), :mod:`polytask.train_state` (Session, LoopState)

Nothing here names a weighting method, an architecture, a task type or a backbone kind: they
plug in through ``Weighting.combine``, ``Architecture.forward``, ``Task.loss`` and
:func:`polytask.backbones.load_backbone`. Everything that changes during training (model,
optimizer, scheduler, weighting, draws, RNGs, the loop's own counters) is in the checkpoint, so
``--resume`` continues the exact trajectory.

Several processes (``torchrun`` / ``accelerate launch``, docs/distributed.md) run this same loop
in lockstep: each trains on its slice of every step's global batch, the losses the weighting
sees and the gradients are the global batch's (:mod:`polytask.devices`), evaluation is shared
out and gathered, and only the main process writes the run folder. With ``train.shard: fsdp``
the model is sharded over them (:mod:`polytask.sharding`): FSDP averages its gradients, clipping
and the run folder's weights and optimizer state go through the full, gathered values.
"""

from __future__ import annotations

import contextlib
import copy
import math
import random
import signal
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from polytask.backbones import check_max_length, load_backbone, pad_id
from polytask.batching import feature_length
from polytask.config import Config
from polytask.dataset import data_warnings, encode_all, prepare
from polytask.devices import any_process, average_gradients, make_accelerator, on_main, process_state, shard
from polytask.draws import StepDraws, describe_rows, row_caps
from polytask.errors import ConfigError
from polytask.evaluate import evaluate, macro_score
from polytask.gradients import balance_params, cosines
from polytask.model import build_model
from polytask.precision import autocast
from polytask.prefetch import Lookahead, pins_memory, worker_pool
from polytask.registry import allowing_code, registered_only
from polytask.html_report import write_run_report
from polytask.interrupts import StopFlag
from polytask.report import plot_training
from polytask.run_folder import RunFolder
from polytask.steps import (compile_backbone, forward_backward, make_optimizer, make_scheduler, probe_due, probe_gram,
                            train_batch)
from polytask.sharding import clip_grad_norm, is_shard, is_sharded, maybe_shard, unsharded, weights_view
from polytask.sampling import build_sampler
from polytask.tracking import Trackers
# the names other modules and tests import from here (claim, handle_fault, NonFiniteError, ...) stay importable
from polytask.train_faults import (Interrupted, NonFiniteError, handle_fault, interrupted,  # noqa: F401
                                   nonfinite_examples)
from polytask.train_folder import (RESUME_CHANGEABLE, check_resume_changes, claim, own_folder,  # noqa: F401
                                   resolve_run, restore_checkpoint, save_checkpoint, save_run_files)
from polytask.train_state import LoopState, Session
from polytask.weighting import build_weighting


@dataclass
class StepOutcome:
    """What one optimizer step did, for the log."""

    names: list[str]  # the tasks of the last micro-step
    weights: dict[str, float]
    grad_norms: dict[str, float]
    cosine: torch.Tensor | None  # (T, T) over ``names`` when task gradients were taken
    fault: tuple | None  # (what, task, example indices) of a non-finite loss or gradient


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


def check_architecture(cfg: Config, backbone_config, tasks: list[str]) -> None:
    """``polytask check``: build the architecture as training will, on the meta device (shapes only:
    no memory, no weights), so its arguments (``architecture.args``: unknown keys, ``n_experts: 0``)
    fail here with their key rather than at ``train``. Encoder backbones only (others: at train)."""
    if cfg.model.kind != "encoder":
        return
    from transformers import AutoModel

    from polytask.architectures import build_architecture
    from polytask.registry import trust_remote_code

    with torch.device("meta"):
        backbone = AutoModel.from_config(backbone_config, trust_remote_code=trust_remote_code())
        try:
            build_architecture(cfg.architecture.name, backbone, tasks, cfg.architecture.args)
        except (TypeError, ValueError, KeyError) as exc:
            raise ConfigError(f"architecture.args: {exc}") from None


# ---------------------------------------------------------------------------------------------
# train(): set-up, loop, finish


def train(cfg: Config | str | Path | None = None, overrides: list[str] | None = None,
          progress: bool = True, resume: str | Path | None = None, overwrite: bool = False,
          allow_changes: bool = False, allow_code: bool = False) -> Path:
    """Train a multi-task model (or continue ``resume``, a run folder); returns the run folder.

    One run owns its folder: a second training into it fails while the first runs, and a new
    run into a folder that holds another run's files fails unless ``overwrite`` (which clears
    them first). ``resume`` continues the run's own config; overrides that would change its
    trajectory are refused unless ``allow_changes`` (see :data:`RESUME_CHANGEABLE`). A resumed
    run folder's components are built from the registries only, unless ``allow_code`` (a run
    folder may come from anywhere; see :func:`polytask.registry.registered_only`); ``allow_code``
    also lets Hugging Face folders (the backbone, the tokenizer) run their own code (``auto_map``).
    """
    cfg, run = resolve_run(cfg, overrides, resume)
    with contextlib.ExitStack() as held:  # the main process holds the folder's lock until the end
        records: list = []  # a resume's accepted changes, written once set-up has built everything
        on_main(process_state(cfg.train.device),
                lambda: records.extend(held.enter_context(own_folder(run, cfg, resume, overwrite, allow_changes))))
        trusted = resume is None or allow_code
        with contextlib.nullcontext() if trusted else registered_only(str(run.path / RunFolder.CONFIG)), \
                allowing_code() if allow_code else contextlib.nullcontext():
            s = set_up(cfg, run, resuming=resume is not None)
        for record in records:
            record()
        s.progress = progress
        state = restore(s) if resume is not None else start(s)
        s.trackers = Trackers.from_config(cfg, run.path) if s.main else Trackers()  # train.report_to
        for event in run.events() if s.main else []:  # the start event; after --resume, the history so far
            s.trackers.log(event)
        try:
            state = run_loop(s, state, progress)
            finish(s, state)
        finally:
            s.trackers.close(run.read_summary() if s.main and run.is_finished() else None)
    return run.path

def set_up(cfg: Config, run: RunFolder, resuming: bool) -> Session:
    """Data, model, weighting, draws and optimizer; nothing is trained yet."""
    t = cfg.train
    seed_everything(cfg.seed)
    if t.num_threads:
        torch.set_num_threads(t.num_threads)
    run.create()
    data = prepare(cfg)  # raises DataError listing every problem before anything is built
    for line in data_warnings(data):
        print(f"warning: {line}", file=sys.stderr)
    backbone, tokenizer = load_backbone(cfg.model)
    check_max_length(cfg.model.max_length, backbone.config)
    encode_all(data, tokenizer, cfg.model.max_length)
    tasks = {name: td.task for name, td in data.items()}
    seed_everything(cfg.seed)  # heads are initialised the same whatever loading consumed
    accelerator = make_accelerator(t.device, t.mixed_precision)
    model = build_model(cfg, backbone, tasks).to(accelerator.device)  # the same on every process
    maybe_shard(model, backbone, t, accelerator)  # train.shard: fsdp (polytask.sharding)
    compile_backbone(model, t, accelerator.device)  # train.compile
    if accelerator.process_index:  # other dropout masks on the other processes' examples
        torch.manual_seed(cfg.seed + 7919 * accelerator.process_index)
    lengths = {n: [feature_length(f) for f in data[n].features["train"]] for n in tasks}
    weighting, sampler = build_components(cfg, list(tasks), [len(v) for v in lengths.values()])
    weighting.to(accelerator.device)
    global_batch = t.batch_size * accelerator.num_processes  # every process draws it, and takes its slice
    rows, caps = row_caps(tasks, {n: data[n].features["train"] for n in tasks}, t.batch_size,
                          accelerator.num_processes)  # e.g. extractive QA: windows per batch
    draws = StepDraws(sampler, lengths, global_batch, cfg.seed, t.max_steps, weighting.needs_all_tasks,
                      grouped=t.length_grouping, rows=rows, max_rows=caps)
    optimizer = make_optimizer(cfg, model, weighting)
    scheduler = make_scheduler(t, optimizer)
    if accelerator.is_main_process:
        print(f"training on {accelerator.device} (mixed precision: {accelerator.mixed_precision}, "
              f"{accelerator.precision_reason}; torch threads: {torch.get_num_threads()})\n"
              f"{describe_batch(t, accelerator.num_processes)}", file=sys.stderr)
        for name, td in data.items():  # e.g. extractive QA: questions (what budgets count) and windows
            summary = td.task.data_summary(td.examples["train"], td.features["train"])
            if summary:
                print(f"task '{name}' train: {summary}", file=sys.stderr)
            if name in caps:
                print(f"task '{name}': {describe_rows(draws, name, td.task.row_unit, caps[name])}", file=sys.stderr)
    if not resuming and accelerator.is_main_process:
        save_run_files(cfg, run, tasks, tokenizer, backbone)
    return Session(cfg, run, data, tasks, model, weighting, draws, accelerator.prepare_optimizer(optimizer),
                   scheduler, balance_params(model, t.grad_space, t.grad_layers), pad_id(tokenizer), accelerator)


def effective_batch(t, processes: int) -> int:
    """Examples per task per step: ``train.batch_size`` is per process (the Hugging Face convention)."""
    return t.batch_size * processes * t.grad_accum


def describe_batch(t, processes: int) -> str:
    return (f"batch: {t.batch_size} per process x {processes} process{'es' if processes > 1 else ''} x "
            f"{t.grad_accum} grad_accum = {effective_batch(t, processes)} examples per task per step")


def start(s: Session) -> LoopState:
    if not s.main:
        return LoopState()
    s.run.reset_events()
    sizes = {n: len(s.data[n].features["train"]) for n in s.tasks}
    skipped = {n: {split: len(v) for split, v in s.data[n].skipped.items()} for n in s.tasks if s.data[n].skipped}
    s.run.append_event({"kind": "start", "step": 0, "params": s.model.describe(), "train_sizes": sizes,
                        "device": str(s.device), "mixed_precision": s.accelerator.mixed_precision,
                        "torch_threads": torch.get_num_threads(), "processes": s.accelerator.num_processes,
                        "sharded": is_sharded(s.model),
                        "effective_batch": effective_batch(s.cfg.train, s.accelerator.num_processes),
                        **({"skipped_rows": skipped} if skipped else {})})
    return LoopState()


def restore(s: Session) -> LoopState:
    state = restore_checkpoint(s.run, s.model, s.stateful, s.accelerator.process_index, s.accelerator.num_processes)
    if s.main:
        s.run.truncate_events_after(state.step)
        print(f"resuming {s.run.path} at step {state.step}")
    return state


def run_loop(s: Session, state: LoopState, progress: bool) -> LoopState:
    """Steps until ``max_steps``, early stopping, or a signal (checkpoint, then Interrupted)."""
    t = s.cfg.train
    bar = tqdm(total=t.max_steps, initial=state.step, desc="train", disable=not progress or not s.main,
               dynamic_ncols=True)
    started, waited = time.perf_counter() - state.elapsed, state.data_wait
    with StopFlag() as stop, feeding(s, state.step) as feed:
        while state.step < t.max_steps:
            outcome = train_step(s, state)
            state.step += 1
            state.data_wait = waited + feed.waited
            if outcome.fault is not None:
                handle_fault(s, state, outcome.fault, bar)
            bar.update(1)
            bar.set_postfix({k: f"{v:.3f}" for k, v in state.running.items()}, refresh=False)
            if state.step % t.log_every == 0:
                log_event(s, train_event(s, state, outcome, time.perf_counter() - started))
            stop_early = False
            if state.step % t.eval_every == 0 or state.step == t.max_steps:
                stop_early = evaluate_and_select(s, state, bar)
            state.elapsed = time.perf_counter() - started
            stopping = any_process(stop.signum is not None, s.accelerator)  # every process stops at one step
            if state.step % (t.checkpoint_every or t.eval_every) == 0 or stopping:
                save_checkpoint(s, state)
            if stopping:
                bar.close()
                raise interrupted(s, state, stop.signum or signal.SIGTERM)
            if stop_early:
                if s.main:
                    bar.write(f"early stopping: no improvement in {state.stale} evaluations")
                break
    bar.close()
    return state


@contextlib.contextmanager
def feeding(s: Session, step: int):
    """``s.feed`` for the loop from ``step`` on: ``train.prefetch`` micro-steps' batches made
    ahead on a thread (pinned on CUDA), their per-item work on ``train.workers`` processes;
    stopped and joined when the loop ends, however it ends."""
    t = s.cfg.train
    pinned = pins_memory(s.device, t.prefetch)
    s.feed = Lookahead(lambda indices: local_batches(s, indices, pinned), lambda: fork_draws(s.draws),
                       t.prefetch, t.grad_accum, t.max_steps)
    try:
        with worker_pool(t.workers), s.feed.start(step):  # the workers fork before the thread starts
            yield s.feed
    finally:
        s.feed = None


def fork_draws(draws: StepDraws) -> StepDraws:
    """An independent copy of ``draws`` at their position (their read-only token lengths shared)."""
    shared = {id(draws.lengths): draws.lengths, **{id(v): v for v in draws.lengths.values()}}
    return copy.deepcopy(draws, shared)


def finish(s: Session, state: LoopState) -> None:
    """The best weights' dev and test metrics in summary.json (their predictions in predictions/),
    and the training plot. Every process evaluates its share; the main process writes."""
    s.accelerator.wait_for_everyone()  # the main process has written the best weights
    s.run.load_best(weights_view(s.model))
    summary = {"best_step": state.best_step, "train_seconds": state.elapsed, "steps": state.step,
               "data_wait_seconds": state.data_wait, "data_wait_share": state.data_wait / max(state.elapsed, 1e-9),
               "skipped_batches": len(state.skipped_steps), "params": s.model.describe()}
    for split in ("dev", "test"):  # dev: the best step's own evaluation, unless it was before a --resume
        scored = split == "dev" and s.best_dev is not None and s.best_dev[0] == state.best_step
        predictions: dict = s.best_dev[2] if scored else {}
        results = s.best_dev[1] if scored else evaluate_split(s, split, predictions)
        if results:
            summary[split] = results
            summary[f"{split}_macro"] = macro_score(results, s.tasks)
            if s.main:
                s.run.write_predictions(split, predictions)  # per example: what compare's intervals resample
        if split == "dev":
            summary.update(tune_on_dev(s, results or {}))  # before test: test is scored with what dev chose
    if not s.main:
        return
    s.run.write_summary(summary)
    plot_training(s.run.events(), s.run.plot_path)
    write_run_report(s.run)  # report.html next to training.png


def tune_on_dev(s: Session, dev: dict) -> dict:
    """Settings the tasks choose on the best weights' dev metrics (:meth:`Task.tune_on_dev`, e.g.
    extractive QA's ``null_threshold: auto``): printed, kept in the run's vocab.json (what
    ``load``, ``serve`` and the exports read), and returned for summary.json as ``tuned``."""
    tuned = {n: c for n, task in s.tasks.items() if (c := task.tune_on_dev(dev.get(n))) is not None}
    if not tuned:
        return {}
    if s.main:
        s.run.write_vocab({n: t.vocab_state() for n, t in s.tasks.items()})
        for name, chosen in tuned.items():
            shown = ", ".join(f"{k}={v:.4g}" for k, v in chosen.items())
            print(f"task '{name}': tuned on dev: {shown}", file=sys.stderr)
    return {"tuned": tuned}


# ---------------------------------------------------------------------------------------------
# One step, its log event, evaluation


def train_step(s: Session, state: LoopState) -> StepOutcome:
    """One optimizer step: ``grad_accum`` micro-steps, clipping, the update (unless a fault).
    Device reads: those of :func:`forward_backward`, and the gradient norm once (a non-finite one
    must skip the update; fp16: the scaler reads whether it skipped)."""
    t, step = s.cfg.train, state.step
    s.model.train()
    out = StepOutcome([], {}, {}, None, None)
    for micro in range(t.grad_accum):
        indices = s.draws.next(step)  # on this thread, in step order: the checkpointed draws are exact
        out.names = list(indices)
        batches, factors = local_batches(s, indices) if s.feed is None else s.feed.batches(step, micro, indices)
        want_gram = len(out.names) > 1 and (step + 1) % t.log_every == 0
        result = forward_backward(s.model, s.tasks, batches, s.weighting, t, s.grad_params, want_gram, t.grad_accum,
                                  s.accelerator, factors)
        if result.bad_task is not None:
            out.fault = ("loss", result.bad_task, indices[result.bad_task])
            break
        if result.gram is not None:
            out.cosine = cosines(result.gram)
            out.grad_norms.update(zip(out.names, result.gram.diagonal().clamp(min=0).sqrt().tolist()))
        for name, loss, w in zip(out.names, result.losses, result.weights):
            state.update_loss(name, loss)
            out.weights[name] = w
    average_gradients([p for g in s.optimizer.param_groups for p in g["params"] if not is_shard(p)], s.accelerator)
    if is_sharded(s.model):  # FSDP has reduce-scattered (averaged) the shards' gradients
        norm = clip_grad_norm(list(s.model.parameters()), t.grad_clip or math.inf)
    else:
        norm = s.accelerator.clip_grad_norm_(s.model.parameters(), t.grad_clip or math.inf)  # unscaled first (fp16)
    scaled, norm = s.accelerator.scaler is not None, float(norm)  # fp16: an overflow is the scaler's to skip
    if out.fault is None and not math.isfinite(norm) and not scaled:
        first = out.names[0]
        out.fault = ("gradient", first if len(out.names) == 1 else ",".join(out.names), indices[first])
    if len(out.names) == 1 and t.grad_accum == 1:
        out.grad_norms.setdefault(out.names[0], norm)
    if out.fault is None:
        s.optimizer.step()
        if not s.accelerator.optimizer_step_was_skipped:
            s.scheduler.step()
    s.optimizer.zero_grad(set_to_none=True)
    return out


def local_batches(s: Session, indices: dict[str, list[int]],
                  pinned: bool = False) -> tuple[dict[str, dict], dict[str, float]]:
    """This process's slice of each task's global batch (on the device), and the factor that
    makes its mean loss its share of the global batch's (:func:`polytask.devices.shard`)."""
    batches, factors = {}, {}
    for name, idx in indices.items():
        units = None
        if s.accelerator.num_processes > 1:  # token means: a slice's share counts its tokens
            feats = s.data[name].features["train"]
            units = [s.tasks[name].loss_units(feats[i]) for i in idx]
        mine, factors[name] = shard(idx, s.accelerator.process_index, s.accelerator.num_processes, units)
        batches[name] = train_batch(s.data[name], mine, s.pad_id, s.device, pinned)
    return batches, factors


def train_event(s: Session, state: LoopState, out: StepOutcome, elapsed: float) -> dict:
    """The ``train`` log event: running losses, weights, gradient norms and cosines, examples
    and tokens seen so far per task (as drawn by :class:`StepDraws`)."""
    t = s.cfg.train
    event = {"kind": "train", "step": state.step, "loss": dict(state.running), "weights": out.weights,
             "grad_norm": out.grad_norms, "lr": s.scheduler.get_last_lr()[0], "elapsed": elapsed,
             "examples": dict(s.draws.examples), "tokens": dict(s.draws.tokens)}
    if s.draws.rows_peak:  # tasks with a row cap (extractive QA: windows): the most rows of one batch so far
        event["rows_peak"] = dict(s.draws.rows_peak)
    bases = s.scheduler.base_lrs  # the heads' own group when train.head_lr differs from train.lr
    if t.head_lr and t.head_lr != t.lr and t.head_lr in bases:
        event["head_lr"] = s.scheduler.get_last_lr()[bases.index(t.head_lr)]
    cos, cos_names = out.cosine, out.names
    cosine_every = t.eval_every if t.cosine_every is None else t.cosine_every
    if cos is None and len(s.tasks) > 1 and probe_due(state.step, t.log_every, cosine_every):
        cos_names = list(s.tasks)
        batches, factors = local_batches(s, {n: s.draws.probe(n) for n in cos_names})
        gram = probe_gram(s.model, s.tasks, batches, t, s.grad_params, s.accelerator, factors)
        cos = cosines(gram)
        event["probe_grad_norm"] = dict(zip(cos_names, gram.diagonal().clamp(min=0).sqrt().tolist()))
    if cos is not None:
        event["cosine"] = {f"{a}|{b}": float(cos[i, j]) for i, a in enumerate(cos_names)
                           for j, b in enumerate(cos_names) if i < j}
    return event


def evaluate_split(s: Session, split: str, predictions: dict | None = None) -> dict:
    """Metrics of ``split``, the same on every process: shared out over the processes and
    gathered, or, with a sharded model, every batch on every process (its blocks gather together).
    A bf16 run evaluates under bf16 autocast, as ``polytask evaluate`` does by default (:mod:`polytask.precision`)."""
    bf16 = "bf16" if s.accelerator.mixed_precision == "bf16" else "fp32"
    with unsharded(s.model), autocast(bf16, s.device.type):
        return evaluate(s.model, s.data, split, s.pad_id, s.cfg.train.eval_batch_size, predictions, s.progress,
                        None if is_sharded(s.model) else s.accelerator)


def evaluate_and_select(s: Session, state: LoopState, bar) -> bool:
    """Dev metrics; keep the weights if the macro average improved. True: stop early."""
    t = s.cfg.train
    predictions: dict = {}
    results = evaluate_split(s, "dev", predictions)  # the same results on every process
    score = macro_score(results, s.tasks)
    log_event(s, {"kind": "eval", "step": state.step, "split": "dev", "metrics": results, "macro": score,
                  "main": {n: r[s.tasks[n].main_metric] for n, r in results.items()},
                  "main_metric": {n: s.tasks[n].main_metric for n in results}})
    if not results or score > state.best:
        state.best, state.best_step, state.stale = score, state.step, 0
        s.best_dev = (state.step, results, predictions)  # finish() reports these: the same weights
        weights = weights_view(s.model, gather=True)  # sharded: gathered on the main process
        if s.main:
            s.run.save_best(weights, {"step": state.step, "dev_macro": score})
    else:
        state.stale += 1
    if s.main:
        bar.write(format_eval(state.step, results, score, s.tasks))
    return bool(t.early_stopping and state.stale >= t.early_stopping)


def log_event(s: Session, event: dict) -> None:
    """Append a train or eval event to metrics.jsonl and hand it to the trackers (main process)."""
    if not s.main:
        return
    s.run.append_event(event)
    if s.trackers is not None:
        s.trackers.log(event)


def format_eval(step: int, results: dict, score: float, tasks) -> str:
    parts = [f"{n}: {tasks[n].main_metric}={r[tasks[n].main_metric]:.4f}" for n, r in results.items()]
    return f"step {step} dev | " + " | ".join(parts) + f" | macro={score:.4f}"
