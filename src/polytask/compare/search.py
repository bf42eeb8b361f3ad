"""``compare.search``: an Optuna TPE search per model and seed, the alternative to ``compare.grid``.

Tree-structured Parzen Estimator: Bergstra, Bardenet, Bengio & Kegl, "Algorithms for
Hyper-Parameter Optimization", NeurIPS 2011; Optuna: Akiba et al., KDD 2019. Every model (each
single-task model and each multi-task method) and every seed gets its own study with the same
number of trials (``compare.search.trials``) over the same space (``compare.search.space``: an
override key -> a list of choices, or ``{low, high, log, step}``), the same sampler seed and
``startup_trials`` random trials first (default ``max(1, trials // 3)``): the grid's fairness rule,
with a budget of trials instead of every point. A trial is an ordinary sub-run planned at its point
with the comparison's budget rule (folders ``seed<S>_t<i>``); its value is the dev selection score
(:mod:`polytask.compare.grid`), and :func:`~polytask.compare.grid.choose` keeps each model's best
trial. Test is never looked at.

Trials run in rounds: round i trains trial i of every study at once on the executor (local
``--jobs`` or Ray), then tells each study its value, so the studies advance together and the
sub-runs of a round run in parallel. The points asked are written to ``search.json`` before they
train; a rerun asks the same points again (Optuna's ``enqueue_trial``) and reuses the finished
trials, so an interrupted search resumes where it stopped. A failed trial is told as failed; its
model is then reported unfinished (as with the grid). Limits: a study's trials are sequential (TPE
learns from the previous ones), so a search's wall time is at least ``trials`` times the longest
sub-run.
"""

from __future__ import annotations

import copy
import math
from dataclasses import replace
from typing import Any, Callable

from polytask.compare.grid import _dev_score
from polytask.compare.plan import SINGLE, Plan, SubRun, _methods, _Planner, _point_overrides, check_tunable, with_overrides
from polytask.config import Config, SearchConfig
from polytask.errors import ConfigError, PolytaskError
from polytask.files import read_json, write_json

STATE = "search.json"
OPTUNA_MISSING = ("compare.search needs Optuna: pip install 'polytask[ray]' (installs ray[default] and optuna), "
                  "or pip install optuna")


def optuna_module():
    """Optuna, or a PolytaskError that says what to install."""
    try:
        import optuna
    except ImportError:
        raise PolytaskError(OPTUNA_MISSING) from None
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return optuna


def check_space(sc: SearchConfig) -> None:
    """Every key tunable, every range well-formed."""
    if not sc.space:
        raise ConfigError("compare.search.space: give at least one key (e.g. train.lr: {low: 1e-5, high: 1e-3, "
                          "log: true})")
    for key, spec in sc.space.items():
        check_tunable(key, "compare.search.space")
        if isinstance(spec, list):
            if not spec:
                raise ConfigError(f"compare.search.space.{key}: give at least one choice")
            continue
        if not isinstance(spec, dict) or not {"low", "high"} <= set(spec) or set(spec) - {"low", "high", "log", "step"}:
            raise ConfigError(f"compare.search.space.{key}: a list of choices or {{low, high, log, step}}, got {spec!r}")
        if not spec["low"] < spec["high"] or (spec.get("log") and spec["low"] <= 0):
            raise ConfigError(f"compare.search.space.{key}: need low < high (and low > 0 with log), got {spec!r}")


def suggest(trial, space: dict[str, Any]) -> dict[str, Any]:
    """The trial's point: a categorical or a float/int range per key (ints when low and high are)."""
    point = {}
    for key, spec in space.items():
        if isinstance(spec, list):
            point[key] = trial.suggest_categorical(key, spec)
        elif isinstance(spec["low"], int) and isinstance(spec["high"], int) and not spec.get("log"):
            point[key] = trial.suggest_int(key, spec["low"], spec["high"], step=int(spec.get("step") or 1))
        else:
            point[key] = trial.suggest_float(key, float(spec["low"]), float(spec["high"]),
                                             log=bool(spec.get("log")), step=spec.get("step"))
    return point


def point_run(cfg: Config, sizes: dict[str, int], run: SubRun, point: dict[str, Any], index: int) -> SubRun:
    """``run`` (a sub-run planned without a point) planned at ``point``: trial ``index``."""
    cc = cfg.compare
    base = copy.deepcopy(replace(cfg, compare=None))
    planner = _Planner(with_overrides(base, _point_overrides(point), f"compare.search trial {point}"), sizes, cc,
                       cfg.run_dir, (point, index), "t")
    if run.method == SINGLE:
        return planner.single(run.task, run.seed)
    return planner.method(next(m for m in _methods(cc) if m.name == run.method), run.seed)


def recorded(plan: Plan, sizes: dict[str, int]) -> Plan:
    """The plan with its search trials as recorded in ``search.json`` (those asked so far)."""
    state = read_json(plan.root / STATE) if (plan.root / STATE).exists() else {}
    runs = [point_run(plan.cfg, sizes, r, p, i) for r in plan.runs for i, p in enumerate(state.get(r.key, []))]
    return replace(plan, runs=runs)


class _Study:
    """One model's and seed's study: asks points (recorded ones first), tells dev scores."""

    def __init__(self, optuna, template: SubRun, sc: SearchConfig, known: list[dict[str, Any]]):
        startup = sc.startup_trials if sc.startup_trials is not None else max(1, sc.trials // 3)
        sampler = optuna.samplers.TPESampler(seed=sc.seed, n_startup_trials=startup)
        self.study = optuna.create_study(direction="maximize", sampler=sampler)
        self.template, self.space, self.optuna = template, sc.space, optuna
        for point in known:
            self.study.enqueue_trial(point)
        self.points: list[dict[str, Any]] = []
        self._trial = None

    def ask(self) -> dict[str, Any]:
        self._trial = self.study.ask()
        self.points.append(suggest(self._trial, self.space))
        return self.points[-1]

    def tell(self, run: SubRun) -> None:
        score = _dev_score(run) if run.finished else -math.inf
        if math.isfinite(score):
            self.study.tell(self._trial, score)
        else:
            self.study.tell(self._trial, state=self.optuna.trial.TrialState.FAIL)


def run_search(plan: Plan, cfg: Config, sizes: dict[str, int], executor, progress: bool,
               echo: Callable[[str], None]) -> dict[str, str]:
    """Every study's trials, round by round on ``executor``; returns the failed sub-runs."""
    sc = cfg.compare.search
    optuna = optuna_module()
    check_space(sc)
    state_path = plan.root / STATE
    state = read_json(state_path) if state_path.exists() else {}
    studies = [_Study(optuna, r, sc, state.get(r.key, [])[:sc.trials]) for r in plan.runs]
    failed: dict[str, str] = {}
    for trial in range(sc.trials):
        runs = [point_run(cfg, sizes, s.template, s.ask(), trial) for s in studies]
        write_json(state_path, {s.template.key: s.points for s in studies})  # before training: a rerun asks these
        todo = sum(not r.finished for r in runs)
        echo(f"search round {trial + 1}/{sc.trials}: trial t{trial} of {len(studies)} model(s) and seed(s) "
             f"({todo} to train)")
        failed.update(executor.train(runs, progress, echo))
        for study, run in zip(studies, runs):
            study.tell(run)
    return failed


__all__ = ["check_space", "optuna_module", "point_run", "recorded", "run_search", "suggest"]
