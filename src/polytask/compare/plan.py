"""Planning a comparison: every sub-run with its config and budget; nothing is trained.

:func:`plan_compare` turns the base config (with its ``compare`` section) into one
:class:`SubRun` per single-task model, method and seed. Sub-run configs are built from the base
:class:`~polytask.config.Config` dataclass with :func:`dataclasses.replace` (the only detour
through the raw form is :func:`with_overrides`, since ``a.b=c`` strings address raw keys).

Budgets (``compare.budget``):

* ``converge`` (default): every model trains until its dev score has not improved for
  ``train.early_stopping`` evaluations (default: :func:`default_patience`, the evaluations of a
  whole equal-examples budget), up to a cap of
  ``compare.cap_factor`` (default 3) times its ``examples`` budget in steps; dev evaluations
  come as often as under ``examples``, so the cap allows ``cap_factor`` times as many.
* ``examples``: single-task model t gets ``round(max_steps * p_t)`` steps, ``p_t`` the
  base sampler's mean probability of t (:func:`exposure`), so it sees as many examples of t as
  the base multi-task model; a method's steps are scaled so that its total number of training
  examples equals the base's (unless its overrides set ``train.max_steps``).
* ``steps``: every model runs ``train.max_steps`` steps.

``eval_every`` is scaled with the steps so that every model gets the same number of dev
evaluations. ``compare.grid`` (``{key: [values]}``) is applied to the base config before
planning, one point at a time, so every model -- single- and multi-task -- is trained at every
point with the same budget rule (folders ``seed<S>_g<i>``); :mod:`polytask.compare.grid` picks
each model's point on dev. :func:`check_finished` refuses a finished sub-run trained with another
config.
"""

from __future__ import annotations

import copy
import itertools
import json
import math
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from polytask.compare.prepared import Prepared
from polytask.config import (NAME_PATTERN, CompareConfig, ComponentConfig, Config, MethodConfig, TrainConfig,
                             apply_override, differences, from_dict, to_dict, validate)
from polytask.errors import ConfigError
from polytask.run_folder import RunFolder

SINGLE = "single"
# grid keys that would change what a budget means or where a run goes: not allowed in compare.grid
_NOT_IN_GRID = ("compare", "name", "output_dir", "data_dir", "seed", "tasks", "train.max_steps", "train.eval_every",
                "train.early_stopping", "train.batch_size", "train.grad_accum")
# keys that locate or feed a run rather than define it: they may differ between a finished sub-run and
# today's plan (e.g. the data moved) without making its numbers stale
_LOCATION_KEYS = frozenset({"data_dir", "output_dir", "name", "train.num_threads", "train.prefetch", "compare"})


@dataclass
class SubRun:
    """One training run of the comparison: a single-task model, or one multi-task method."""

    method: str  # SINGLE or a method name
    task: str | None  # the task of a single-task run
    seed: int
    cfg: Config
    budget: dict[str, Any] = field(default_factory=dict)
    point: dict[str, Any] = field(default_factory=dict)  # the compare.grid point ({} without a grid)
    grid_index: int | None = None  # its index in Plan.grid, or its search trial (None without either)
    tag: str = "g"  # folder and key suffix: g<i> (grid point) or t<i> (search trial)

    @property
    def run_dir(self) -> Path:
        return self.cfg.run_dir

    @property
    def folder(self) -> RunFolder:
        return RunFolder(self.run_dir)

    @property
    def key(self) -> str:
        key = f"{SINGLE}/{self.task}/seed{self.seed}" if self.method == SINGLE else f"{self.method}/seed{self.seed}"
        return key if self.grid_index is None else f"{key}/{self.tag}{self.grid_index}"

    @property
    def finished(self) -> bool:
        # a stray summary alone (e.g. written into a folder that was moved away) is not a finished run
        return self.folder.is_finished()


@dataclass
class Plan:
    cfg: Config  # the base config (with its compare section)
    root: Path
    tasks: list[str]
    seeds: list[int]
    methods: list[str]
    budget_rule: str
    sizes: dict[str, int]
    runs: list[SubRun]
    notes: list[str] = field(default_factory=list)
    grid: list[dict[str, Any]] = field(default_factory=list)  # compare.grid's points ([] without a grid)
    search: dict[str, Any] = field(default_factory=dict)  # compare.search's settings ({} without a search)

    def select(self, method: str, seed: int | None = None) -> list[SubRun]:
        return [r for r in self.runs if r.method == method and (seed is None or r.seed == seed)]


def weighting_class(name: str):
    from polytask.registry import resolve
    from polytask.weighting import REGISTRY

    return resolve(REGISTRY, name, "weighting")


def exposure(cfg: Config, sizes: dict[str, int]) -> dict[str, float]:
    """Expected training examples of each task per optimizer step under ``cfg``.

    ``batch_size * grad_accum`` times the sampler's probability of the task, averaged over the
    run's steps (annealed samplers change it over time); every task gets a full batch per
    micro-step when the weighting method needs all tasks in every step.
    """
    import torch

    from polytask.sampling import build_sampler

    names = [t.name for t in cfg.tasks]
    per_step = cfg.train.batch_size * cfg.train.grad_accum
    if weighting_class(cfg.weighting.name).needs_all_tasks:
        return {n: float(per_step) for n in names}
    sampler = build_sampler(cfg.sampling.name, names, [sizes[n] for n in names], cfg.seed, cfg.sampling.args)
    steps = cfg.train.max_steps
    stride = max(1, steps // 1000)  # the mean over at most ~1000 points is plenty
    probs = torch.stack([sampler.probabilities(s, steps) for s in range(0, steps, stride)]).mean(0)
    return {n: float(per_step * p) for n, p in zip(names, probs.tolist())}


def default_patience(train: TrainConfig) -> int:
    """Budget converge without ``train.early_stopping``: the number of dev evaluations in one
    equal-examples budget. The earliest stop is then at evaluation ``1 + patience``, after the
    whole budget: no model under ``converge`` trains on less than under ``examples``."""
    return n_evaluations(train.max_steps, train.eval_every)


def n_evaluations(steps: int, eval_every: int) -> int:
    """How many dev evaluations a run of ``steps`` makes (every ``eval_every`` and at the end)."""
    return math.ceil(steps / eval_every)


def _eval_every_for(steps: int, evals: int) -> int:
    return max(1, math.ceil(steps / max(evals, 1)))


def _sets_key(overrides: list[str], key: str) -> bool:
    return any(o.partition("=")[0].strip() == key for o in overrides)


def with_overrides(cfg: Config, overrides: list[str], what: str) -> Config:
    """``cfg`` with ``a.b=c`` override strings applied (validated, as for ``polytask train``).

    The one place compare goes through the raw form: an override addresses raw keys
    (``tasks.NAME.x``, ``train.lr``) and its value is parsed and type-checked like YAML.
    """
    if not overrides:
        return cfg
    raw = to_dict(cfg)
    for item in overrides:
        apply_override(raw, item)
    try:
        return from_dict(raw, source=what)
    except ConfigError as exc:
        raise ConfigError(f"{what}: {exc}") from exc


# ---------------------------------------------------------------------------------------------
# plan_compare


def plan_compare(cfg: Config, sizes: dict[str, int] | None = None, prepared: Prepared | None = None) -> Plan:
    """Every sub-run with its config and budget; nothing is trained.

    ``sizes`` (training examples per task) default to those of ``prepared`` (the comparison's
    data, read once); without either, the training data is read here.
    """
    cc = cfg.compare or CompareConfig()
    seeds = _seeds(cfg, cc)
    methods = _methods(cc)
    if sizes is None:
        sizes = (prepared or Prepared(cfg, splits=("train",))).sizes
    base = copy.deepcopy(replace(cfg, compare=None))
    points = grid_points(cc)
    planners = [_Planner(with_overrides(base, _point_overrides(p), f"compare.grid point {p}"), sizes, cc,
                         cfg.run_dir, (p, i) if cc.grid else None) for i, p in enumerate(points)]
    runs: list[SubRun] = []
    for seed in seeds:
        for planner in planners:
            runs += [planner.single(t.name, seed) for t in cfg.tasks]  # (a) single-task baselines
            runs += [planner.method(m, seed) for m in methods]  # (b) multi-task methods
    notes = list(dict.fromkeys(n for planner in planners for n in planner.notes))
    search = {} if cc.search is None else {"trials": cc.search.trials, "space": dict(cc.search.space)}
    if cc.search is not None:
        notes.append(f"compare.search: {cc.search.trials} Optuna TPE trials per model and seed over "
                     f"{', '.join(cc.search.space)}, each model's trial chosen on dev (folders seed<S>_t<i>)")
    return Plan(cfg, cfg.run_dir, [t.name for t in cfg.tasks], seeds, [m.name for m in methods], cc.budget,
                sizes, runs, notes, points if cc.grid else [], search)


def check_tunable(key: str, where: str) -> None:
    """A grid or search key must not set the budget or where runs go."""
    if any(key == k or key.startswith(k + ".") for k in _NOT_IN_GRID):
        raise ConfigError(f"{where}: '{key}' cannot be tuned (it sets the budget or where runs go); "
                          f"tuned keys are override keys such as train.lr or train.weight_decay")


def grid_points(cc: CompareConfig) -> list[dict[str, Any]]:
    """Every combination of ``compare.grid``'s values (``[{}]`` without a grid), in order."""
    if cc.grid and cc.search is not None:
        raise ConfigError("compare.grid and compare.search: choose one (a grid tries every point, a search some)")
    for key, values in cc.grid.items():
        check_tunable(key, "compare.grid")
        if not values:
            raise ConfigError(f"compare.grid.{key}: give at least one value")
    keys = list(cc.grid)
    return [dict(zip(keys, combo)) for combo in itertools.product(*(cc.grid[k] for k in keys))]


def _point_overrides(point: dict[str, Any]) -> list[str]:
    return [f"{k}={json.dumps(v)}" for k, v in point.items()]


def point_label(point: dict[str, Any]) -> str:
    """``train.lr=3e-05, train.weight_decay=0.1``: a grid point as the report shows it."""
    return ", ".join(f"{k}={v}" for k, v in point.items()) or "(no grid)"


def with_seeds(cfg: Config, n: int) -> Config:
    """``cfg`` with ``n`` consecutive seeds (``--seeds N``): starting at the first of
    ``compare.seeds`` when it is set, else at the config's ``seed``."""
    if n < 1:
        raise ConfigError(f"--seeds: must be positive, got {n}")
    cc = cfg.compare or CompareConfig()
    first = cc.seeds[0] if cc.seeds else cfg.seed
    return replace(cfg, compare=replace(cc, seeds=list(range(first, first + n))))


def _seeds(cfg: Config, cc: CompareConfig) -> list[int]:
    seeds = list(cc.seeds) if cc.seeds else [cfg.seed]
    if len(set(seeds)) != len(seeds):
        raise ConfigError(f"compare.seeds: duplicate seeds in {seeds}")
    return seeds


def _methods(cc: CompareConfig) -> list[MethodConfig]:
    methods = list(cc.methods) or [MethodConfig(name="mtl")]
    seen: set[str] = set()
    for i, m in enumerate(methods):
        if not NAME_PATTERN.match(m.name) or m.name in (SINGLE, ".", ".."):
            raise ConfigError(f"compare.methods[{i}].name: '{m.name}' must be a folder name "
                              f"(letters, digits, '-', '_', '.') other than '{SINGLE}'")
        if m.name in seen:
            raise ConfigError(f"compare.methods[{i}].name: duplicate method name '{m.name}'")
        seen.add(m.name)
    return methods


class _Planner:
    """Builds the sub-run configs from the base config (without its compare section)."""

    def __init__(self, base: Config, sizes: dict[str, int], cc: CompareConfig, root: Path,
                 point: tuple[dict[str, Any], int] | None = None, tag: str = "g"):
        self.base, self.sizes, self.cc, self.root, self.point, self.tag = base, sizes, cc, root, point, tag
        self.notes: list[str] = []
        t = base.train
        self.evals = n_evaluations(t.max_steps, t.eval_every)  # every model gets as many evaluations
        self.patience = t.early_stopping or default_patience(t)
        if cc.budget == "converge" and not t.early_stopping:
            self.notes.append(f"budget converge: train.early_stopping is unset, patience {self.patience} evaluations "
                              "(those of one equal-examples budget)")
        self.base_exp = exposure(base, sizes)
        self.base_total = sum(self.base_exp.values())

    def single(self, task: str, seed: int) -> SubRun:
        """Plain fine-tuning of one task: hard sharing with one head, unweighted loss."""
        t = self.base.train
        steps = t.max_steps
        if self.cc.budget in ("examples", "converge"):
            steps = max(1, round(t.max_steps * self.base_exp[task] / (t.batch_size * t.grad_accum)))
        every = _eval_every_for(steps, self.evals)
        train = replace(t, max_steps=self._cap(steps), eval_every=every, log_every=min(t.log_every, every),
                        checkpoint_every=None if t.checkpoint_every is None else every,
                        early_stopping=self.patience if self.cc.budget == "converge" else t.early_stopping)
        cfg = replace(self.base, tasks=[self.base.task(task)], train=train, architecture=ComponentConfig("hard"),
                      weighting=ComponentConfig("equal"), sampling=ComponentConfig("proportional"))
        what = f"single-task run '{task}'"
        cfg = with_overrides(cfg, self.cc.single_overrides, what)
        return self._sub_run(SINGLE, task, seed, cfg, self.root / SINGLE / task, what)

    def method(self, m: MethodConfig, seed: int) -> SubRun:
        """The base config with the method's components, then its overrides."""
        what = f"method '{m.name}'"
        parts = {p: getattr(m, p) for p in ("weighting", "sampling", "architecture") if getattr(m, p) is not None}
        probe = with_overrides(replace(self.base, **parts), m.overrides, what)
        validate(probe, what)
        cfg = replace(probe, train=self._method_train(m, probe))
        return self._sub_run(m.name, None, seed, cfg, self.root / "mtl" / m.name, what)

    def _method_train(self, m: MethodConfig, probe: Config) -> TrainConfig:
        steps = self.base.train.max_steps
        t = probe.train
        m_steps = t.max_steps
        if self.cc.budget in ("examples", "converge") and not _sets_key(m.overrides, "train.max_steps"):
            total = sum(exposure(probe, self.sizes).values())
            m_steps = max(1, round(steps * self.base_total / total))
            if m_steps != t.max_steps:
                t = replace(t, max_steps=m_steps)
                note = (f"method '{m.name}' draws {total:g} examples per step (base: {self.base_total:g}): "
                        f"{m_steps} steps instead of {steps} to keep the examples budget")
                if note not in self.notes:
                    self.notes.append(note)
        if m_steps != steps and not _sets_key(m.overrides, "train.eval_every"):
            every = _eval_every_for(m_steps, self.evals)  # the same number of dev evaluations
            t = replace(t, eval_every=every, log_every=min(probe.train.log_every, every))
        if self.cc.budget == "converge":
            t = replace(t, max_steps=self._cap(t.max_steps), early_stopping=self.patience)
        return t

    def _cap(self, steps: int) -> int:
        """Budget converge: the step cap, ``cap_factor`` x the equal-examples steps (rounded up)."""
        return math.ceil(steps * self.cc.cap_factor) if self.cc.budget == "converge" else steps

    def _sub_run(self, method: str, task: str | None, seed: int, cfg: Config, folder: Path, what: str) -> SubRun:
        # a deep copy: no sub-run config shares a mutable part with the base or another sub-run
        suffix = "" if self.point is None else f"_{self.tag}{self.point[1]}"
        cfg = replace(copy.deepcopy(cfg), seed=seed, output_dir=str(folder), name=f"seed{seed}{suffix}")
        validate(cfg, what)
        budget = _budget(cfg, self.sizes)
        if self.cc.budget == "converge":
            budget["examples_budget_steps"] = math.floor(cfg.train.max_steps / self.cc.cap_factor + 1e-9)  # exact: f >= 1
        if self.point is None:
            return SubRun(method, task, seed, cfg, budget)
        return SubRun(method, task, seed, cfg, budget, dict(self.point[0]), self.point[1], self.tag)


def _budget(cfg: Config, sizes: dict[str, int]) -> dict[str, Any]:
    t = cfg.train
    exp = exposure(cfg, sizes)
    return {"max_steps": t.max_steps, "batch_size": t.batch_size, "grad_accum": t.grad_accum,
            "eval_every": t.eval_every, "evaluations": n_evaluations(t.max_steps, t.eval_every),
            "early_stopping": t.early_stopping,
            "expected_examples": {n: e * t.max_steps for n, e in exp.items()},
            "expected_epochs": {n: e * t.max_steps / max(sizes[n], 1) for n, e in exp.items()}}


def plan_json(plan: Plan) -> dict:
    return {"name": plan.cfg.name, "tasks": plan.tasks, "seeds": plan.seeds, "methods": plan.methods,
            "budget": plan.budget_rule, "train_sizes": plan.sizes, "notes": plan.notes, "grid": plan.grid,
            "runs": [{"key": r.key, "method": r.method, "task": r.task, "seed": r.seed, "point": r.point,
                      "run_dir": str(r.run_dir), **r.budget} for r in plan.runs]}


# ---------------------------------------------------------------------------------------------
# Finished sub-runs must match today's plan


def config_differences(saved: dict, planned: dict) -> list[str]:
    """Dotted keys where a finished sub-run's config differs from the planned one (keys that
    locate a run rather than define it are ignored)."""
    return differences(saved, planned, ignore=_LOCATION_KEYS)


def _plain_data(cfg: Config) -> dict:
    """The JSON form of a config (tuples become lists, as in a saved config.yaml)."""
    return json.loads(json.dumps(to_dict(cfg)))


def changed_keys(run: SubRun) -> list[str]:
    """Where a sub-run folder's saved config differs from today's planned one (``[]``: the same,
    or no saved config), tasks named as the user names them (``tasks.sst2.lr``, not the sub-run's
    own ``tasks.0``)."""
    folder = run.folder
    if not folder.has_config():
        return []
    try:  # read with today's schema: fields added since it was written get their defaults
        diff = config_differences(_plain_data(folder.read_config()), _plain_data(run.cfg))
    except ConfigError as exc:
        return [f"{RunFolder.CONFIG} no longer reads: {exc}"]
    names = [t.name for t in run.cfg.tasks]
    return [_task_by_name(key, names) for key in diff]


def _task_by_name(key: str, names: list[str]) -> str:
    parts = key.split(".")
    if len(parts) > 1 and parts[0] == "tasks" and parts[1].isdigit() and int(parts[1]) < len(names):
        parts[1] = names[int(parts[1])]
    return ".".join(parts)


def check_finished(run: SubRun) -> None:
    """A finished sub-run must have been trained with today's planned config."""
    diff = changed_keys(run)
    if diff:
        shown = ", ".join(diff[:6]) + (" ..." if len(diff) > 6 else "")
        raise ConfigError(
            f"{run.run_dir} is a finished sub-run trained with a different configuration ({shown}); "
            f"delete that folder to retrain it, or give the comparison another name (name=...)")
