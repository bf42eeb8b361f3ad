"""The training loop, read top to bottom: :func:`train` is set-up, loop, finish.

    set_up:  prepare data -> load backbone -> build model, weighting, draws, optimizer
             -> write the run folder (or restore the last checkpoint for --resume)
    loop:    for each step: draw task(s) and examples -> forward each batch -> losses
             -> (task gradients) -> weighting.combine -> backward -> non-finite check -> clip
             -> optimizer step -> log; every eval_every: evaluate, keep the best;
             every checkpoint_every: checkpoint. The coming micro-steps' batches are
             collated meanwhile on a thread (``train.prefetch``, :mod:`polytask.prefetch`)
    finish:  best weights -> dev and test metrics -> summary.json, training.png

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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from tqdm.auto import tqdm

from polytask.backbones import check_max_length, load_backbone, pad_id
from polytask.batching import feature_length
from polytask.config import Config, differences, load_config, to_dict
from polytask.dataset import TaskData, data_warnings, encode_all, prepare
from polytask.devices import (any_process, average_gradients, make_accelerator, on_main, module_device,
                              process_state, shard)
from polytask.draws import StepDraws, describe_rows, row_caps
from polytask.errors import CheckpointError, ConfigError, PolytaskError
from polytask.evaluate import evaluate, macro_score
from polytask.gradients import balance_params, cosines
from polytask.model import MultiTaskModel, build_model
from polytask.precision import autocast
from polytask.prefetch import Lookahead, pins_memory, worker_pool
from polytask.registry import allowing_code, registered_only
from polytask.html_report import write_run_report
from polytask.interrupts import StopFlag
from polytask.report import plot_training
from polytask.run_folder import RunFolder
from polytask.steps import (compile_backbone, forward_backward, make_optimizer, make_scheduler, probe_due, probe_gram,
                            train_batch)
from polytask.sharding import (clip_grad_norm, full_optimizer_state, is_shard, is_sharded, load_optimizer_state,
                               maybe_shard, unsharded, weights_view)
from polytask.sampling import build_sampler
from polytask.tracking import Trackers
from polytask.weighting import Weighting, build_weighting


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
    data_wait: float = 0.0  # seconds of elapsed the loop waited for its batches (Lookahead.waited)

    def update_loss(self, task: str, loss: float, beta: float = 0.9) -> None:
        prev = self.running.get(task)
        self.running[task] = loss if prev is None else beta * prev + (1 - beta) * loss


@dataclass
class Session:
    """Everything a run trains with, built once by :func:`set_up`."""

    cfg: Config
    run: RunFolder
    data: dict[str, TaskData]
    tasks: dict
    model: MultiTaskModel
    weighting: Weighting
    draws: StepDraws
    optimizer: torch.optim.Optimizer
    scheduler: object
    grad_params: list | None
    pad_id: int
    accelerator: object  # accelerate.Accelerator: device, autocast, backward, gradient scaler
    trackers: Trackers | None = None  # experiment trackers fed with the logged events
    progress: bool = True  # progress bars (training and evaluation)
    feed: Lookahead | None = None  # the loop's batches, made ahead (train.prefetch); None: made in the step
    best_dev: tuple | None = None  # (step, dev metrics, dev predictions) of the best evaluation in this process

    @property
    def device(self) -> torch.device:
        return self.accelerator.device

    @property
    def main(self) -> bool:
        """The process that writes the run folder (the only one, without torchrun)."""
        return self.accelerator.is_main_process

    @property
    def stateful(self) -> dict:
        """What a checkpoint saves besides the model (each has state_dict/load_state_dict)."""
        out = {"optimizer": self.optimizer, "scheduler": self.scheduler, "weighting": self.weighting,
               "draws": self.draws}
        if self.accelerator.scaler is not None:  # fp16: the loss scale is part of the trajectory
            out["scaler"] = self.accelerator.scaler
        return out


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


@contextlib.contextmanager
def own_folder(run: RunFolder, cfg: Config, resume, overwrite: bool, allow_changes: bool):
    """Lock the run folder for this run; a new run claims it, a resumed one checks its best weights
    and its changes. Yields what is left to write (a resume's accepted changes): nothing is written
    for a resume before set-up has built every component (a refusal for code writes nothing)."""
    with run.lock():
        run.remove_stale_temp_files()
        if resume is None:
            claim(run, overwrite)
            yield []
        else:
            run.verify_best()  # what the resumed run loads at its end: checked before it trains
            yield check_resume_changes(cfg, run, allow_changes)


def resolve_run(cfg, overrides: list[str] | None, resume) -> tuple[Config, RunFolder]:
    """The config (a Config, a YAML path, or a resumed run's own) and its run folder."""
    if resume is not None:
        if cfg is not None:
            raise ConfigError(f"give a config file or --resume {resume}, not both: a resumed run "
                              f"continues its own config.yaml (overrides may extend it)")
        run = RunFolder(resume)
        run.check_format()
        return run.read_config(overrides), run
    if cfg is None:
        raise ConfigError("give a config file, or --resume RUN_DIR")
    if not isinstance(cfg, Config):
        cfg = load_config(cfg, overrides)
    return cfg, RunFolder(cfg.run_dir)


def claim(run: RunFolder, overwrite: bool) -> None:
    """A new run starts in a folder with no other run's files (or clears them: ``overwrite``)."""
    if not run.holds_a_run():
        return
    if not overwrite:
        raise PolytaskError(f"{run.path} holds another run; continue it with `polytask train --resume "
                            f"{run.path}`, start it over with --overwrite, or choose another name (name=...)")
    run.clear()


# Settings a resumed run may change: they extend or observe training without changing what it
# has done so far. Anything else (lr, batch size, seed, data, tasks...) would make the resumed
# run a different experiment from its first part.
RESUME_CHANGEABLE = frozenset({
    "name", "output_dir", "data_dir", "train.max_steps", "train.eval_every", "train.early_stopping",
    "train.log_every", "train.checkpoint_every", "train.keep_checkpoints", "train.num_threads",
    "train.cosine_every", "train.eval_batch_size", "train.device", "train.prefetch", "train.workers",
})


def check_resume_changes(cfg: Config, run: RunFolder, allow_changes: bool) -> list[Callable[[], None]]:
    """Compare the config to continue with (config.yaml + overrides) with the one the latest
    checkpoint was trained with; refuse the changes not allowed; returns the writes that save and
    record the accepted ones (called later, once nothing else can refuse the resume)."""
    manifest = run.latest_checkpoint_manifest()  # verified once here, not once per field
    if manifest is None or manifest.get("config") is None:  # no checkpoint (load_checkpoint says so), or an old one
        return []
    changed = differences(manifest["config"], cfg)
    refused = [k for k in changed if not any(k == c or k.startswith(c + ".") for c in RESUME_CHANGEABLE)]
    if refused and not allow_changes:
        raise ConfigError(f"resuming {run.path} with {', '.join(refused)} changed would change the run's "
                          f"trajectory (the checkpoint was trained with other values); resume without these "
                          f"changes, start a new run, or pass --allow-changes to accept them")
    if not changed:
        return []

    def record() -> None:
        run.write_config(cfg)
        run.append_event({"kind": "resume_changes", "step": int(manifest["step"]), "changed": changed,
                          "forced": refused})
        print(f"resuming with changed settings: {', '.join(changed)} (saved in {RunFolder.CONFIG})")

    return [record]


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


def interrupted(s: Session, state: LoopState, signum: int) -> Interrupted:
    name = signal.Signals(signum).name
    if s.main:
        s.run.append_event({"kind": "interrupted", "step": state.step, "signal": name})
    return Interrupted(f"{name} at step {state.step}: checkpoint saved; "
                       f"continue with: polytask train --resume {s.run.path}")


# ---------------------------------------------------------------------------------------------
# Faults: a non-finite loss or gradient


def handle_fault(s: Session, state: LoopState, fault, bar) -> None:
    """Apply the non-finite policy: count and skip the batch, or stop with a report."""
    cfg = s.cfg
    kind, task, indices = fault
    examples = s.data[task.split(",")[0]].examples["train"]
    first = examples[indices[0]].source
    culprits = nonfinite_examples(s, task, indices) if "," not in task else []
    where = (f"non-finite for: {', '.join(culprits[:5])}" if culprits
             else f"first: {first}; no single example is non-finite alone")
    report = f"non-finite {kind} in task '{task}' at step {state.step} (batch of {len(indices)} examples, {where})"
    if s.main:
        s.run.append_event({"kind": "nonfinite", "step": state.step, "what": kind, "task": task,
                            "first_example": first, "examples": culprits})
    if cfg.train.on_nonfinite == "stop":
        raise NonFiniteError(report + "; set train.on_nonfinite=skip to skip such batches")
    state.skipped_steps = [s for s in state.skipped_steps if s > state.step - cfg.train.skip_window] + [state.step]
    if s.main:
        bar.write(f"skipped: {report}")
    if len(state.skipped_steps) > cfg.train.max_skips:
        raise NonFiniteError(f"{len(state.skipped_steps)} batches skipped within {cfg.train.skip_window} steps "
                             f"(train.max_skips={cfg.train.max_skips}); last: {report}")


@torch.no_grad()
def nonfinite_examples(s: Session, task: str, indices: list[int]) -> list[str]:
    """The examples of a faulty batch whose loss is non-finite on their own (eval mode, one at a
    time: no dropout, no RNG drawn, nothing trained), as ``file:line``."""
    was_training = s.model.training
    s.model.eval()
    try:
        found = []
        for i in sorted(indices):  # in file order
            batch = train_batch(s.data[task], [i], s.pad_id, s.device)
            out, _ = s.model(batch, task)
            if not torch.isfinite(s.tasks[task].loss(out, batch)):
                found.append(s.data[task].examples["train"][i].source)
        return found
    finally:
        s.model.train(was_training)


# ---------------------------------------------------------------------------------------------
# The run folder: files written at the start, checkpoints


def save_run_files(cfg: Config, run: RunFolder, tasks, tokenizer, backbone) -> None:
    run.write_marker()
    run.write_config(cfg)
    run.write_vocab({n: t.vocab_state() for n, t in tasks.items()})
    run.save_tokenizer(tokenizer)
    run.save_backbone_config(backbone)


def save_checkpoint(s: Session, state: LoopState) -> None:
    """Written by the main process; with several processes it holds each one's RNG states (every
    other state is the same on all of them)."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    rng = {"torch": torch.get_rng_state(), "numpy": [kind, keys.tolist(), pos, has_gauss, gauss],
           "python": random.getstate()}
    if s.device.type == "cuda":  # dropout on a GPU draws from the device's own generator
        rng["cuda"] = torch.cuda.get_rng_state(s.device)
    tree = {"components": {k: v.state_dict() for k, v in s.stateful.items()}, "loop": state.__dict__, "rng": rng}
    if is_sharded(s.model):  # full weights and optimizer state, gathered on the main process
        tree["components"]["optimizer"] = full_optimizer_state(s.model, s.weighting, s.optimizer.optimizer)
    if s.accelerator.num_processes > 1:
        from accelerate.utils import gather_object

        tree["processes"] = s.accelerator.num_processes
        tree["rng_by_process"] = gather_object([rng])  # one per process, by rank
    weights = weights_view(s.model, gather=True)
    if s.main:
        s.run.save_checkpoint(state.step, weights, tree, keep=s.cfg.train.keep_checkpoints, config=to_dict(s.cfg))


def restore_checkpoint(run: RunFolder, model: torch.nn.Module, stateful: dict, rank: int = 0,
                       processes: int = 1) -> LoopState:
    """The state of the run's newest checkpoint; process ``rank`` of ``processes`` takes its own RNG."""
    saved = run.load_checkpoint(weights_view(model))
    if saved.get("processes", 1) != processes:
        raise CheckpointError(f"{run.path}: the checkpoint was trained with {saved.get('processes', 1)} process(es), "
                              f"this resume runs {processes}; resume with the same number (each step's global "
                              f"batch and every process's random state depend on it)")
    for key, obj in stateful.items():
        if key == "optimizer" and is_sharded(model):
            load_optimizer_state(model, stateful["weighting"], obj.optimizer, saved["components"][key])
        else:
            obj.load_state_dict(saved["components"][key])
    rng = saved["rng_by_process"][rank] if processes > 1 else saved["rng"]
    torch.set_rng_state(rng["torch"])
    np_state = rng["numpy"]
    np.random.set_state((np_state[0], np.asarray(np_state[1], dtype=np.uint32), *np_state[2:]))
    py = rng["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    device = module_device(model)
    if "cuda" in rng and device.type == "cuda":
        torch.cuda.set_rng_state(rng["cuda"], device)
    return LoopState(**saved["loop"])


def format_eval(step: int, results: dict, score: float, tasks) -> str:
    parts = [f"{n}: {tasks[n].main_metric}={r[tasks[n].main_metric]:.4f}" for n, r in results.items()]
    return f"step {step} dev | " + " | ".join(parts) + f" | macro={score:.4f}"
