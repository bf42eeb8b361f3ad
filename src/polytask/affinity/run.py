"""``polytask affinity``: one short joint run of the config's tasks with a TAG lookahead every
``every`` steps (see :mod:`polytask.affinity.lookahead`), then groupings and plots.

The run is an ordinary training run (the trainer's own set-up, steps, evaluation and finish,
imported from :mod:`polytask.train`): the lookaheads do not change its trajectory, so its
run folder is also the all-in-one multi-task model. Cost: each lookahead takes T backward and
T * (T + 1) forward passes of one batch per task, in eval mode; ``every`` bounds it.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path

from tqdm.auto import tqdm

from polytask.affinity.grouping import best_partners, groupings
from polytask.affinity.lookahead import Lookahead, lookahead
from polytask.config import Config, load_config
from polytask.errors import PolytaskError
from polytask.run_folder import RunFolder
from polytask.steps import train_batch
from polytask.train import (claim, evaluate_and_select, finish, handle_fault, log_event, set_up, start, train_event,
                            train_step)


class AffinityError(PolytaskError):
    """A config that affinity cannot measure (one task, no shared parameters, bad options)."""


@dataclass
class Cost:
    lookahead_seconds: float = 0.0
    train_seconds: float = 0.0
    lookaheads: int = 0

    def as_dict(self) -> dict:
        ratio = self.lookahead_seconds / self.train_seconds if self.train_seconds else None
        return {"lookahead_seconds": self.lookahead_seconds, "train_seconds": self.train_seconds,
                "lookaheads": self.lookaheads, "ratio": ratio}


@dataclass
class Measurements:
    names: list[str]
    tag: list = field(default_factory=list)  # per lookahead: (T, T)
    cos: list = field(default_factory=list)

    def add(self, m: Lookahead) -> None:
        self.tag.append(m.affinity.tolist())
        self.cos.append(m.cosine.tolist())


def estimate(cfg: Config | str | Path, overrides: list[str] | None = None, steps: int | None = None,
             every: int = 10, out: str | Path | None = None, lookahead_lr: float | None = None,
             progress: bool = True, overwrite: bool = False, lookaheads: bool = True) -> dict:
    """Train the config's tasks jointly for ``steps`` (default: ``train.max_steps``) with a
    lookahead every ``every`` steps; write ``affinity.json``, heatmaps and the report into the
    run folder (``out``, default :func:`default_out`: beside the config's own run folder, not in
    it); return the result. ``lookaheads=False`` trains the same run without them (for checking
    the trajectory)."""
    cfg = prepare_config(cfg, overrides, steps, every)
    run = RunFolder(out if out is not None else default_out(cfg))
    with run.lock():
        run.remove_stale_temp_files()
        claim(run, overwrite)
        s = set_up(cfg, run, resuming=False)
        params = s.model.arch.shared_parameters()
        if not params:
            raise AffinityError(f"architecture '{cfg.architecture.name}' has no parameters that all tasks share; "
                                f"TAG affinity needs a shared encoder")
        lr = cfg.train.lr if lookahead_lr is None else lookahead_lr
        measured, cost = loop(s, params, every if lookaheads else 0, lr, progress)
        result = summarise(measured, cost, every, lr, cfg.train.max_steps)
        if lookaheads:
            save(run, result)
    return result


def default_out(cfg: Config) -> Path:
    """``output_dir/NAME-affinity``: an affinity run of a config does not collide with (or need
    ``--overwrite`` over) the config's own training run in ``output_dir/NAME``."""
    return cfg.run_dir.with_name(f"{cfg.run_dir.name}-affinity")


def prepare_config(cfg, overrides, steps, every) -> Config:
    if not isinstance(cfg, Config):
        cfg = load_config(cfg, list(overrides or []) + ([f"train.max_steps={steps}"] if steps else []))
    elif steps:
        raise AffinityError("give steps as an override (train.max_steps=N) when passing a Config object")
    if len(cfg.tasks) < 2:
        raise AffinityError(f"affinity needs at least two tasks; the config has {len(cfg.tasks)}")
    if every < 1:
        raise AffinityError(f"--every must be at least 1 (got {every})")
    return cfg


def loop(s, params, every: int, lr: float, progress: bool) -> tuple[Measurements, Cost]:
    """The trainer's steps, evaluation and finish; a lookahead before every ``every``-th step."""
    state, t = start(s), s.cfg.train
    measured, cost = Measurements(list(s.tasks)), Cost()
    bar = tqdm(total=t.max_steps, desc="affinity", disable=not progress, dynamic_ncols=True)
    started = time.perf_counter()
    while state.step < t.max_steps:
        if every and state.step % every == 0:
            tick = time.perf_counter()
            batches = {n: train_batch(s.data[n], s.draws.probe(n), s.pad_id, s.device) for n in s.tasks}
            measured.add(lookahead(s.model, s.tasks, batches, params, s.optimizer, lr))
            cost.lookahead_seconds += time.perf_counter() - tick
            cost.lookaheads += 1
        tick = time.perf_counter()
        outcome = train_step(s, state)
        cost.train_seconds += time.perf_counter() - tick
        state.step += 1
        if outcome.fault is not None:
            handle_fault(s, state, outcome.fault, bar)
        bar.update(1)
        if state.step % t.log_every == 0:
            log_event(s, train_event(s, state, outcome, time.perf_counter() - started))
        if state.step % t.eval_every == 0 or state.step == t.max_steps:
            if evaluate_and_select(s, state, bar):
                break
        state.elapsed = time.perf_counter() - started
    bar.close()
    finish(s, state)
    return measured, cost


def mean_std(mats: list) -> tuple[list, list]:
    """Entry-wise mean and standard deviation (0 for one matrix) of (T, T) matrices."""
    n = len(mats[0])
    mean = [[statistics.fmean(m[i][j] for m in mats) for j in range(n)] for i in range(n)]
    std = [[statistics.stdev(m[i][j] for m in mats) if len(mats) > 1 else 0.0 for j in range(n)] for i in range(n)]
    return mean, std


def summarise(m: Measurements, cost: Cost, every: int, lr: float, steps: int) -> dict:
    result = {"tasks": m.names, "steps": steps, "every": every, "lookahead_lr": lr, "cost": cost.as_dict()}
    if not m.tag:
        return result
    tag_mean, tag_std = mean_std(m.tag)
    cos_mean, cos_std = mean_std(m.cos)
    result.update({"tag": {"mean": tag_mean, "std": tag_std}, "cosine": {"mean": cos_mean, "std": cos_std},
                   "groupings": groupings(tag_mean, m.names), "best_partner": best_partners(tag_mean, m.names),
                   "groupings_cosine": groupings(cos_mean, m.names)})
    return result


def save(run: RunFolder, result: dict) -> None:
    """affinity.json, the two heatmaps, and report.html with an affinity section."""
    from polytask.affinity.plots import heatmap_png
    from polytask.html_report import write_run_report

    run.write_affinity(result)
    names = result["tasks"]
    run.write_affinity_plot("tag", heatmap_png(result["tag"]["mean"], names, "TAG lookahead affinity Z[i -> j]"))
    run.write_affinity_plot("cosine", heatmap_png(result["cosine"]["mean"], names, "gradient cosine (shared params)"))
    write_run_report(run)

