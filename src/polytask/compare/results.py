"""Results: every number of the report, from the finished sub-runs (JSON-ready).

:func:`collect` scores every model on dev and test (mean +- std over seeds), computes Delta-m
(Maninis et al., 2019) against the single-task model of the same seed, and gathers training
cost, budgets, dev curves and the machine's description (:func:`environment`).
"""

from __future__ import annotations

import math
import os
import statistics
import subprocess
import time
from pathlib import Path
from typing import Any

from polytask.backbones import counts_tokens, describe_input
from polytask.compare.accounting import account
from polytask.compare.chance import corrected_scores, gain, near_chance
from polytask.compare.grid import choose
from polytask.compare.stats import delta_m_defined, mean_std, relative_changes
from polytask.compare.uncertainty import bootstrap, chance_levels
from polytask.compare.plan import SINGLE, Plan, SubRun, default_patience, n_evaluations, weighting_class
from polytask.compare.prepared import Prepared
from polytask.config import CompareConfig, Config, to_dict

_COSTS = ("trainable_params", "total_params", "train_seconds", "wall_seconds", "samples_per_s",
          "tokens_per_s", "peak_rss_mb", "steps")


# ---------------------------------------------------------------------------------------------
# collect


class _Finished:
    """The accounts of the finished sub-runs: ``runs[method][seed]`` is one account, or for
    the single-task models ``{task: account}``."""

    def __init__(self, plan: Plan, prepared: Prepared | None):
        from polytask.tasks import build_task

        self.plan = plan
        task_objs = {tc.name: build_task(tc) for tc in plan.cfg.tasks}
        self.metric = {n: t.main_metric for n, t in task_objs.items()}
        self.hib = {n: t.higher_is_better for n, t in task_objs.items()}
        self.methods = [SINGLE] + plan.methods
        self.runs: dict[str, dict[int, Any]] = {m: {} for m in self.methods}
        finished = [r for r in plan.runs if r.finished]
        if finished and prepared is None:
            prepared = Prepared(plan.cfg, splits=("train",))
        self._accounts: dict[str, dict] = {}
        for r in finished:
            acc = self._accounts[r.key] = account(r, prepared)
            if r.method == SINGLE:
                self.runs[SINGLE].setdefault(r.seed, {})[r.task] = acc
            else:
                self.runs[r.method][r.seed] = acc

    def account(self, run: SubRun) -> dict:
        return self._accounts[run.key]

    def parts(self, method: str, seed: int) -> list[dict] | None:
        """The accounts making up one model (all T for single-task) of a seed; None if incomplete."""
        got = self.runs[method].get(seed)
        if not got:
            return None
        if method != SINGLE:
            return [got]
        return list(got.values()) if set(got) == set(self.plan.tasks) else None

    def scores(self, method: str, seed: int, split: str) -> dict[str, float] | None:
        got = self.runs[method].get(seed)
        if got is None or (method == SINGLE and set(got) != set(self.plan.tasks)):
            return None
        summary = (lambda t: got[t]["summary"]) if method == SINGLE else (lambda t: got["summary"])
        return {t: summary(t).get(split, {}).get(t, {}).get(self.metric[t], math.nan) for t in self.plan.tasks}


def collect(plan: Plan, inference: dict[str, Any] | None = None,
            prepared: Prepared | None = None) -> dict[str, Any]:
    """Every number of the report, from the finished sub-runs (JSON-ready).

    With a ``compare.grid``, each model's grid point is chosen on dev first
    (:func:`polytask.compare.grid.choose`); everything else covers the chosen points only.
    """
    full = plan
    plan, choices = choose(plan)
    done = _Finished(plan, prepared)
    chance = {split: chance_levels(plan, split) for split in ("dev", "test")}
    table, delta = _tables(done, chance)
    flagged = delta_flagged(delta, "test")
    single_corrected = {split: corrected_scores({t: table[SINGLE][split][t]["mean"] for t in plan.tasks},
                                                chance[split], done.hib) for split in ("dev", "test")}
    return {"grid": {"points": plan.grid, "choices": choices, "search": plan.search}, "chance": chance, "single_corrected": single_corrected,
            "positive_labels": positive_labels(plan), **_collect_rest(plan, full, done, table, delta, inference),
            "intervals": {m: bootstrap(plan, m, done.hib, chance=chance["test"], flagged=flagged.get(m, []))
                          for m in plan.methods}}


def delta_flagged(delta: dict[str, Any], split: str) -> dict[str, list[str]]:
    """Per method, the tasks whose single-task baseline is near chance on ``split``."""
    return {m: d.get(split, {}).get("near_chance", []) for m, d in delta.items()}


def _collect_rest(plan: Plan, full: Plan, done: "_Finished", table: dict, delta: dict,
                  inference: dict[str, Any] | None) -> dict[str, Any]:
    return {
        "name": plan.cfg.name, "tasks": plan.tasks, "metric": done.metric, "higher_is_better": done.hib,
        "seeds": plan.seeds, "methods": plan.methods, "budget_rule": plan.budget_rule,
        "train_sizes": plan.sizes, "notes": plan.notes, "base": _base_description(plan.cfg),
        "method_settings": _method_settings(plan),
        "table": table, "delta_m": delta, "efficiency": _efficiency(done), "budgets": _budgets(plan),
        "inference": inference or {}, "curves": _curves(done), "convergence": convergence(plan, done),
        "missing": [r.key for r in full.runs if not r.finished],
        "resumed": [r.key for r in full.runs if r.finished and _resumed(r)],
        "load_during_training": _load_range(done),
        "environment": environment(), "generated": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
    }


STILL_IMPROVING_LAST = 2  # best dev score at one of a capped run's last 2 evaluations: still improving


def convergence(plan: Plan, done: "_Finished | None" = None) -> list[dict[str, Any]]:
    """How each finished sub-run ended, with its optimizer steps and examples seen side by side.

    ``stopped``: "early" when patience (``train.early_stopping`` evaluations without improvement)
    ran out, even at the last step; else "at the cap". A run at the cap whose best dev score came
    at one of its last :data:`STILL_IMPROVING_LAST` evaluations is flagged ``still_improving``:
    its scores are a lower bound, and a comparison against it flatters the other side.
    """
    done = done or _Finished(plan, None)
    out = []
    for r in plan.runs:
        if not r.finished:
            continue
        acc = done.account(r)
        end = ending(int(acc["steps"]), int(r.budget["max_steps"]), acc["summary"].get("best_step"),
                     [p["step"] for p in acc["curve"]], r.cfg.train.early_stopping)
        out.append({"run": r.key, "method": r.method, "task": r.task, "seed": r.seed,
                    "examples": sum(acc["examples_seen"].values()), **end})
    return out


def ending(steps: int, cap: int, best_step: int | None, eval_steps: list[int], patience: int | None) -> dict[str, Any]:
    """How a run ended, from its steps, step cap, best step, evaluation steps and patience."""
    stale = sum(1 for e in eval_steps if best_step is not None and e > best_step)  # evaluations since the best
    early = steps < cap or bool(patience and stale >= patience)
    return {"steps": steps, "cap": cap, "best_step": best_step, "evaluations": len(eval_steps),
            "evaluations_after_best": stale, "patience": patience, "stopped": "early" if early else "at the cap",
            "still_improving": not early and stale < STILL_IMPROVING_LAST}


def positive_labels(plan: Plan) -> dict[str, str]:
    """The positive label of every binary task whose main metric is ``f1`` (as its runs saved it)."""
    from polytask.tasks import build_task

    out: dict[str, str] = {}
    for r in plan.runs:
        if r.method != SINGLE or r.task in out or not r.finished:
            continue
        task = build_task(r.cfg.task(r.task))
        if task.main_metric != "f1" or not hasattr(task, "positive_label"):
            continue
        task.load_vocab_state(r.folder.read_vocab()[r.task])
        if task.positive_label is not None:
            out[r.task] = task.positive_label
    return out


def _tables(done: _Finished, chance: dict[str, dict[str, float]]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Per model and split: the main metric per task and the macro average; per method: Delta-m,
    with and without the near-chance tasks, and the chance-corrected gain."""
    plan, hib = done.plan, done.hib
    table: dict[str, Any] = {}
    delta: dict[str, Any] = {}
    for m in done.methods:
        table[m] = {}
        for split in ("dev", "test"):
            per_seed = {s: done.scores(m, s, split) for s in plan.seeds}
            per_seed = {s: v for s, v in per_seed.items() if v is not None}
            table[m][split] = {t: mean_std([v[t] for v in per_seed.values()]) for t in plan.tasks}
            macro = [statistics.fmean(v[t] if hib[t] else -v[t] for t in plan.tasks) for v in per_seed.values()]
            table[m][split]["macro"] = mean_std(macro)
            if m != SINGLE:
                delta.setdefault(m, {})[split] = _delta(done, per_seed, split, chance[split])
    return table, delta


def _delta(done: _Finished, per_seed: dict[int, dict[str, float]], split: str,
           chance: dict[str, float]) -> dict[str, Any]:
    """Delta-m and the relative change per task of one method against single-task, over seeds;
    Delta-m without the near-chance tasks and the chance-corrected gain (:mod:`~polytask.compare.chance`)."""
    tasks, hib = done.plan.tasks, done.hib
    bases = {s: b for s in per_seed if (b := done.scores(SINGLE, s, split)) is not None}
    mean_base = {t: statistics.fmean(b[t] for b in bases.values()) for t in tasks} if bases else {}
    flagged = near_chance(mean_base, chance, hib) if bases else []
    kept = [t for t in tasks if t not in flagged]
    dms, dms_kept, gains, rels, excluded = [], [], [], {t: [] for t in tasks}, set()
    for s, base in bases.items():
        v = per_seed[s]
        dm, ex = delta_m_defined(v, base, hib)
        dms.append(dm)
        excluded.update(ex)
        if kept:
            dms_kept.append(delta_m_defined({t: v[t] for t in kept}, {t: base[t] for t in kept}, hib)[0])
        gains.append(gain(v, base, chance, hib))
        for t, rc in relative_changes(v, base, hib).items():
            rels[t].append(rc)
    return {**mean_std(dms), "excluded_tasks": sorted(excluded), "per_task": {t: mean_std(rels[t]) for t in tasks},
            "near_chance": flagged, "without_near_chance": mean_std(dms_kept), "gain": mean_std(gains)}


def _seed_cost(parts: list[dict], tasks: list[str]) -> dict[str, Any]:
    """Training cost of one model (summed over the T single-task models) of one seed."""
    secs = sum(p["throughput"]["measured_seconds"] for p in parts)
    ex = sum(p["throughput"]["samples_per_s"] * p["throughput"]["measured_seconds"] for p in parts)
    tok = sum(p["throughput"]["tokens_per_s"] * p["throughput"]["measured_seconds"] for p in parts)
    peaks = [None if p["resources"].get("resumed") else p["resources"].get("peak_rss_mb") for p in parts]
    whole = all("wall_seconds" in p["resources"] and not p["resources"].get("resumed") for p in parts)
    return {
        "trainable_params": sum(p["summary"]["params"]["trainable"] for p in parts),
        "total_params": sum(p["summary"]["params"]["total"] for p in parts),
        "train_seconds": sum(p["summary"].get("train_seconds", math.nan) for p in parts),
        # a resumed sub-run's wall time covers only its last part: not reported
        "wall_seconds": sum(p["resources"]["wall_seconds"] for p in parts) if whole else math.nan,
        "samples_per_s": ex / secs if secs else math.nan,
        "tokens_per_s": tok / secs if secs else math.nan,
        "peak_rss_mb": max(peaks) if all(x is not None for x in peaks) else math.nan,
        "steps": sum(p["steps"] for p in parts),
        "examples_seen": {t: sum(p["examples_seen"].get(t, 0) for p in parts) for t in tasks},
        "throughput_method": parts[0]["throughput"]["method"],
    }


def _efficiency(done: _Finished) -> dict[str, Any]:
    tasks = done.plan.tasks
    efficiency: dict[str, Any] = {}
    for m in done.methods:
        per_seed = [_seed_cost(parts, tasks) for s in done.plan.seeds
                    if (parts := done.parts(m, s)) is not None]
        if not per_seed:
            continue
        eff = {k: mean_std([d[k] for d in per_seed]) for k in _COSTS}
        eff["examples_seen"] = {t: mean_std([d["examples_seen"][t] for d in per_seed]) for t in tasks}
        eff["throughput_method"] = per_seed[0]["throughput_method"]
        efficiency[m] = eff
    return efficiency


def _budgets(plan: Plan) -> dict[str, Any]:
    return {(f"{SINGLE}:{r.task}" if r.method == SINGLE else r.method): r.budget
            for r in plan.runs if r.seed == plan.seeds[0]}


def _curves(done: _Finished) -> dict[str, Any]:
    """Dev main metric against the examples of each task seen so far (first seed)."""
    curves = {}
    s0 = done.plan.seeds[0]
    for m in done.methods:
        got = done.runs[m].get(s0)
        if not got:
            continue
        per_task = got if m == SINGLE else {t: got for t in done.plan.tasks}
        curves[m] = {t: [{"examples": p["examples"][t], "value": p["main"].get(t)} for p in acc["curve"]]
                     for t, acc in per_task.items()}
    return curves


def _load_range(done: _Finished) -> list[float] | None:
    """The lowest and highest 1-minute load average at the start and end of the sub-runs."""
    loads = [x for m in done.methods for got in done.runs[m].values()
             for part in (got.values() if m == SINGLE else [got])
             for x in part["resources"].get("load_average_1min", []) if x is not None]
    return [min(loads), max(loads)] if loads else None


def _resumed(run: SubRun) -> bool:
    resources = run.folder.read_resources()
    return not resources or bool(resources.get("resumed"))


def _base_description(cfg: Config) -> dict[str, Any]:
    t = cfg.train
    return {"backbone": cfg.model.backbone, "max_length": cfg.model.max_length, "input": describe_input(cfg.model),
            "tokens": counts_tokens(cfg.model), "max_steps": t.max_steps,
            "batch_size": t.batch_size, "grad_accum": t.grad_accum, "lr": t.lr, "head_lr": t.head_lr,
            "eval_every": t.eval_every, "early_stopping": t.early_stopping,
            "evaluations": n_evaluations(t.max_steps, t.eval_every),
            "cap_factor": (cfg.compare or CompareConfig()).cap_factor, "patience": t.early_stopping or default_patience(t),
            "weighting": to_dict(cfg.weighting), "sampling": to_dict(cfg.sampling),
            "architecture": to_dict(cfg.architecture)}


def _component(x) -> str:
    args = ", ".join(f"{k}={v}" for k, v in x.args.items())
    return f"{x.name}({args})" if args else x.name


def _method_settings(plan: Plan) -> dict[str, str]:
    out = {}
    methods = {x.name: x for x in (plan.cfg.compare or CompareConfig()).methods}
    for m in plan.methods:
        c = plan.select(m, plan.seeds[0])[0].cfg
        mc = methods.get(m)
        extra = f"; overrides: {', '.join(mc.overrides)}" if mc and mc.overrides else ""
        # a method whose weighting needs every task in every step draws a batch of each: no sampler
        sampling = ("every task in every step (no sampler)" if weighting_class(c.weighting.name).needs_all_tasks
                    else f"sampling {_component(c.sampling)}")
        out[m] = (f"weighting {_component(c.weighting)}, {sampling}, "
                  f"architecture {_component(c.architecture)}, {c.train.max_steps} steps{extra}")
    return out


# ---------------------------------------------------------------------------------------------
# The machine


def environment() -> dict[str, Any]:
    """Machine, software and commit, for the report's header."""
    import platform

    import torch

    info: dict[str, Any] = {
        "python": platform.python_version(), "torch": torch.__version__,
        "platform": platform.platform(), "processor": _cpu_name(), "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }
    try:
        import transformers

        info["transformers"] = transformers.__version__
    except ImportError:
        pass
    info["commit"] = _git(["rev-parse", "--short", "HEAD"])
    status = _git(["status", "--porcelain", "--untracked-files=no"])
    info["dirty"] = bool(status) if status is not None else None
    return info


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    import platform

    return platform.processor() or "unknown"


def _git(args: list[str]) -> str | None:
    here = Path(__file__).resolve().parent
    try:
        out = subprocess.run(["git", *args], cwd=here, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() if out.returncode == 0 else None
