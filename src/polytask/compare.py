"""``polytask compare``: did multi-task learning help?

From one YAML config, train

* one **single-task** model per task (the same backbone, hyper-parameters, budget rule and
  early-stopping rule; plain fine-tuning: hard sharing with one head, unweighted loss), and
* every **multi-task** variant listed under ``compare.methods`` (the base config with another
  weighting, sampling, architecture or overrides),

each for every seed in ``compare.seeds``; then score them against each other on dev and test,
with Delta-m (Maninis, Radosavovic & Kokkinos, "Attentive Single-Tasking of Multiple Tasks",
CVPR 2019; the form used by Vandenhende et al., "Multi-Task Learning for Dense Prediction
Tasks: A Survey", TPAMI 2021):

    Delta-m = 100 / T * sum_t s_t (M_mtl,t - M_single,t) / |M_single,t|,   s_t = +1 / -1

and with the costs: trainable parameters, wall time, training throughput, peak memory, and the
cost of serving every task (one multi-task model vs T single-task models).

Layout of the compare folder ``output_dir/name``::

    compare.yaml                  the resolved base config (with its compare section)
    plan.json                     every sub-run with its budget
    single/<task>/seed<S>/        a single-task run folder (as written by ``polytask train``)
    mtl/<method>/seed<S>/         a multi-task run folder
    inference.json                the serving-cost measurements (cached)
    results.json                  every number of the report
    report.md, *.png              the report (see :mod:`polytask.compare_report`)

**Resuming.** A sub-run is finished when its ``summary.json`` exists (``train`` writes it last,
atomically); a finished sub-run is never trained again, so rerunning the same command after an
interruption trains only what is missing, and adding a seed or a method trains only the new
sub-runs. A finished sub-run whose saved config differs from the planned one is an error (the
numbers would silently mix two experiments). An unfinished sub-run with a checkpoint continues
from it (``train --resume``); without one it starts again.

**Budgets** (``compare.budget``; the report states which one was used):

* ``examples`` (default): the budget is the base multi-task config's -- ``train.max_steps``
  steps of ``batch_size * grad_accum`` examples, the task of each step drawn by the base
  sampler (or every task each step for weighting methods that need all tasks). Single-task
  model t gets ``round(max_steps * p_t)`` steps, where ``p_t`` is the base sampler's mean
  probability of task t, so it sees as many examples of t as the base multi-task model does.
  A method that draws every task each step sees T batches per step, so its steps are divided by
  T (more generally: scaled so that its total number of training examples equals the base's)
  unless its overrides set ``train.max_steps`` themselves.
* ``steps``: every model, single- or multi-task, runs ``train.max_steps`` steps.

Evaluation frequency is scaled with the steps so that every model gets the same number of dev
evaluations (checkpoint candidates), and the same ``train.early_stopping`` rule (N evaluations
without improvement) applies to all. Checkpoints are selected on dev only (the macro average of
the run's tasks; for a single-task run, its own metric); test is evaluated once, at the end,
with the selected checkpoint.

**Accounting.** The number of examples and tokens each sub-run actually trained on is replayed
exactly from its seeded sampler and batch streams (they are pure functions of the seed, see
:mod:`polytask.batching` and :mod:`polytask.sampling`), for the steps the run took (early
stopping included). Training throughput is measured on the intervals between log events that
contain no evaluation or checkpoint, so it is the speed of training itself.
"""

from __future__ import annotations

import copy
import json
import math
import os
import re
import resource
import statistics
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import yaml

from polytask import checkpoint as ckpt
from polytask.config import CompareConfig, Config, MethodConfig, apply_override, from_dict, load_config, to_dict
from polytask.errors import ConfigError, PolytaskError

SINGLE = "single"
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$")
# keys that locate a run rather than define it: they may differ between a finished sub-run and
# today's plan (e.g. the data moved) without making its numbers stale
_LOCATION_KEYS = {("data_dir",), ("output_dir",), ("name",), ("train", "num_threads")}


# ---------------------------------------------------------------------------------------------
# Planning


@dataclass
class SubRun:
    """One training run of the comparison: a single-task model, or one multi-task method."""

    method: str  # SINGLE or a method name
    task: str | None  # the task of a single-task run
    seed: int
    cfg: Config
    budget: dict[str, Any] = field(default_factory=dict)

    @property
    def run_dir(self) -> Path:
        return self.cfg.run_dir

    @property
    def key(self) -> str:
        return f"{SINGLE}/{self.task}/seed{self.seed}" if self.method == SINGLE else f"{self.method}/seed{self.seed}"

    @property
    def finished(self) -> bool:
        # train() writes summary.json last; a stray summary alone (e.g. written into a folder that
        # was moved away) is not a finished run
        return all((self.run_dir / f).exists() for f in ("summary.json", "config.yaml", "model.safetensors"))


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


def n_evaluations(steps: int, eval_every: int) -> int:
    """How many dev evaluations a run of ``steps`` makes (every ``eval_every`` and at the end)."""
    return math.ceil(steps / eval_every)


def _eval_every_for(steps: int, evals: int) -> int:
    return max(1, math.ceil(steps / max(evals, 1)))


def _sets_key(overrides: list[str], key: str) -> bool:
    return any(o.partition("=")[0].strip() == key for o in overrides)


def training_sizes(cfg: Config) -> dict[str, int]:
    """Number of training examples per task (after ``max_train``), reading the data once."""
    from polytask.dataset import prepare

    data = prepare(_plain(cfg), splits=("train",))
    return {n: len(td.examples.get("train", [])) for n, td in data.items()}


def _plain(cfg: Config) -> Config:
    """The config without its compare section (what a sub-run's config.yaml holds)."""
    raw = to_dict(cfg)
    raw["compare"] = None
    return from_dict(raw)


def plan_compare(cfg: Config, sizes: dict[str, int] | None = None) -> Plan:
    """Every sub-run with its config and budget; nothing is trained."""
    cc = cfg.compare or CompareConfig()
    seeds = list(cc.seeds) if cc.seeds else [cfg.seed]
    if len(set(seeds)) != len(seeds):
        raise ConfigError(f"compare.seeds: duplicate seeds in {seeds}")
    methods = list(cc.methods) or [MethodConfig(name="mtl")]
    seen: set[str] = set()
    for i, m in enumerate(methods):
        if not _NAME.match(m.name) or m.name == SINGLE:
            raise ConfigError(f"compare.methods[{i}].name: '{m.name}' must be a folder name "
                              f"(letters, digits, '-', '_', '.') other than '{SINGLE}'")
        if m.name in seen:
            raise ConfigError(f"compare.methods[{i}].name: duplicate method name '{m.name}'")
        seen.add(m.name)
    tasks = [t.name for t in cfg.tasks]
    sizes = sizes if sizes is not None else training_sizes(cfg)
    root = cfg.run_dir
    base_raw = to_dict(cfg)
    base_raw["compare"] = None
    base = from_dict(copy.deepcopy(base_raw))
    t = base.train
    steps = t.max_steps
    evals = n_evaluations(steps, t.eval_every)
    base_exp = exposure(base, sizes)
    base_total = sum(base_exp.values())
    notes: list[str] = []
    runs: list[SubRun] = []

    for seed in seeds:
        # (a) single-task baselines
        for task in tasks:
            raw = copy.deepcopy(base_raw)
            raw["tasks"] = [copy.deepcopy(x) for x in base_raw["tasks"] if x["name"] == task]
            raw["architecture"] = {"name": "hard", "args": {}}
            raw["weighting"] = {"name": "equal", "args": {}}
            raw["sampling"] = {"name": "proportional", "args": {}}
            if cc.budget == "examples":
                task_steps = max(1, round(steps * base_exp[task] / (t.batch_size * t.grad_accum)))
            else:
                task_steps = steps
            every = _eval_every_for(task_steps, evals)
            raw["train"].update(max_steps=task_steps, eval_every=every, log_every=min(t.log_every, every))
            if raw["train"].get("checkpoint_every") is not None:
                raw["train"]["checkpoint_every"] = every
            for item in cc.single_overrides:
                apply_override(raw, item)
            raw.update(seed=seed, output_dir=str(root / SINGLE / task), name=f"seed{seed}")
            sub_cfg = _build(raw, f"single-task run '{task}'")
            runs.append(SubRun(SINGLE, task, seed, sub_cfg, _budget(sub_cfg, sizes)))
        # (b) multi-task methods
        for m in methods:
            raw = copy.deepcopy(base_raw)
            for part in ("weighting", "sampling", "architecture"):
                comp = getattr(m, part)
                if comp is not None:
                    raw[part] = {"name": comp.name, "args": copy.deepcopy(comp.args)}
            for item in m.overrides:
                apply_override(raw, item)
            probe = _build(raw, f"method '{m.name}'")
            m_steps = probe.train.max_steps
            if cc.budget == "examples" and not _sets_key(m.overrides, "train.max_steps"):
                total = sum(exposure(probe, sizes).values())
                m_steps = max(1, round(steps * base_total / total))
                if m_steps != probe.train.max_steps:
                    raw["train"]["max_steps"] = m_steps
                    note = (f"method '{m.name}' draws {total:g} examples per step (base: {base_total:g}): "
                            f"{m_steps} steps instead of {steps} to keep the examples budget")
                    if note not in notes:
                        notes.append(note)
            if m_steps != steps and not _sets_key(m.overrides, "train.eval_every"):
                every = _eval_every_for(m_steps, evals)  # the same number of dev evaluations
                raw["train"].update(eval_every=every, log_every=min(probe.train.log_every, every))
            raw.update(seed=seed, output_dir=str(root / "mtl" / m.name), name=f"seed{seed}")
            sub_cfg = _build(raw, f"method '{m.name}'")
            runs.append(SubRun(m.name, None, seed, sub_cfg, _budget(sub_cfg, sizes)))
    return Plan(cfg, root, tasks, seeds, [m.name for m in methods], cc.budget, sizes, runs, notes)


def _build(raw: dict, what: str) -> Config:
    try:
        return from_dict(raw, source=what)
    except ConfigError as exc:
        raise ConfigError(f"{what}: {exc}") from exc


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
            "budget": plan.budget_rule, "train_sizes": plan.sizes, "notes": plan.notes,
            "runs": [{"key": r.key, "method": r.method, "task": r.task, "seed": r.seed,
                      "run_dir": str(r.run_dir), **r.budget} for r in plan.runs]}


# ---------------------------------------------------------------------------------------------
# Running


def config_differences(saved: dict, planned: dict) -> list[str]:
    """Dotted keys where a finished sub-run's config differs from the planned one."""
    out: list[str] = []

    def walk(a: Any, b: Any, path: tuple[str, ...]) -> None:
        if path in _LOCATION_KEYS:
            return
        if isinstance(a, dict) and isinstance(b, dict):
            for k in sorted(set(a) | set(b)):
                if k == "compare" and not path:
                    continue
                walk(a.get(k), b.get(k), path + (str(k),))
        elif isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
            for i, (x, y) in enumerate(zip(a, b)):
                walk(x, y, path + (str(i),))
        elif a != b and not (_is_num(a) and _is_num(b) and float(a) == float(b)):
            out.append(".".join(path))

    walk(saved, planned, ())
    return out


def _is_num(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


def check_finished(run: SubRun) -> None:
    """A finished sub-run must have been trained with today's planned config."""
    path = run.run_dir / "config.yaml"
    if not path.exists():
        return
    saved = yaml.safe_load(path.read_text()) or {}
    try:  # fill defaults of fields added since it was written
        saved = json.loads(json.dumps(to_dict(from_dict(saved, source=str(path)))))
    except ConfigError:
        pass
    planned = json.loads(json.dumps(to_dict(run.cfg)))
    diff = config_differences(saved, planned)
    if diff:
        shown = ", ".join(diff[:6]) + (" ..." if len(diff) > 6 else "")
        raise ConfigError(
            f"{run.run_dir} is a finished sub-run trained with a different configuration ({shown}); "
            f"delete that folder to retrain it, or give the comparison another name (name=...)")


def _can_resume(run: SubRun) -> bool:
    if not (run.run_dir / "checkpoints").is_dir() or not (run.run_dir / "config.yaml").exists():
        return False
    try:
        check_finished(run)  # same config?
    except ConfigError:
        return False
    find = getattr(ckpt, "latest_good_checkpoint", None)
    return find is not None and find(run.run_dir, warn=lambda *a: None) is not None


def _load1() -> float | None:
    return os.getloadavg()[0] if hasattr(os, "getloadavg") else None


class _RssPeak:
    """Peak resident memory of this process while a block runs (sampled every 20 ms)."""

    def __init__(self, interval: float = 0.02):
        self.interval, self.peak, self._stop = interval, 0, threading.Event()

    @staticmethod
    def current() -> int:
        try:
            with open("/proc/self/statm") as fh:
                return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
        except (OSError, ValueError):
            return 0

    def _loop(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self.current())
            self._stop.wait(self.interval)

    def __enter__(self):
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self.current())


def train_measured(cfg: Config, resume: bool = False, progress: bool = False, isolated: bool = False) -> dict:
    """Train one sub-run and write ``resources.json`` (wall time, peak memory) next to it."""
    import torch

    from polytask.train import train

    cuda = torch.cuda.is_available()
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    load_before = _load1()
    started = time.perf_counter()
    with _RssPeak() as rss:
        if resume:
            train(resume=cfg.run_dir, progress=progress)
        else:
            train(cfg, progress=progress)
    wall = time.perf_counter() - started
    if isolated:  # a fresh process: its lifetime peak is this run's peak
        peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # KiB on Linux
        how = "peak RSS of the sub-run's own process"
    else:
        peak_mb = rss.peak / 2**20
        how = "peak RSS of the shared process during the sub-run (includes memory held before it)"
    out = {"wall_seconds": wall, "peak_rss_mb": peak_mb, "peak_rss_method": how,
           "torch_threads": torch.get_num_threads(), "resumed": resume,
           "load_average_1min": [load_before, _load1()],  # at start and end: other work slows timings
           "device": "cuda" if cuda else "cpu"}
    if cuda:
        out["cuda_peak_mb"] = torch.cuda.max_memory_allocated() / 2**20
    ckpt.write_json(cfg.run_dir / "resources.json", out)
    return out


def _stop_with_parent() -> None:
    """In the sub-run's process (Linux): SIGTERM it when the compare process dies, however it dies.

    The trainer answers SIGTERM with a checkpoint and a clean stop, so the next ``compare``
    resumes the sub-run instead of racing an orphan that is still writing into its folder.
    """
    if not sys.platform.startswith("linux"):
        return
    import ctypes
    import signal

    PR_SET_PDEATHSIG = 1
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def _run_isolated(run: SubRun, resume: bool, progress: bool) -> None:
    """Train a sub-run in a fresh Python process; its output goes to ``train.log``."""
    run.run_dir.mkdir(parents=True, exist_ok=True)
    job = run.run_dir / "compare_job.json"
    ckpt.write_json(job, {"config": to_dict(run.cfg), "resume": resume, "progress": progress})
    log_path = run.run_dir / "train.log"
    with open(log_path, "ab") as log:
        out = None if progress else log  # with progress, the child's bar goes to this terminal
        proc = subprocess.run([sys.executable, "-m", "polytask.compare", str(job)], stdout=out,
                              stderr=None if progress else subprocess.STDOUT, preexec_fn=_stop_with_parent)
    if proc.returncode != 0:
        tail = log_path.read_text(errors="replace").splitlines()[-15:] if log_path.exists() else []
        raise PolytaskError(f"sub-run {run.key} failed (exit {proc.returncode}); last lines of {log_path}:\n"
                            + "\n".join("  " + line for line in tail))


def run_subrun(run: SubRun, isolate: bool, progress: bool = False) -> str:
    """Train ``run`` unless finished; returns 'done', 'resumed' or 'trained'."""
    if run.finished:
        check_finished(run)
        return "done"
    resume = _can_resume(run)
    if isolate:
        _run_isolated(run, resume, progress)
    else:
        train_measured(run.cfg, resume=resume, progress=progress)
    return "resumed" if resume else "trained"


def run_compare(cfg: Config | str | Path, overrides: list[str] | None = None, progress: bool = False,
                echo: Callable[[str], None] = print, train_missing: bool = True) -> Path:
    """Plan, train what is missing, measure serving cost, and write the report; returns its folder.

    With ``train_missing=False`` nothing is trained: the report covers the finished sub-runs.
    """
    if not isinstance(cfg, Config):
        cfg = load_config(cfg, overrides)
    plan = plan_compare(cfg)
    plan.root.mkdir(parents=True, exist_ok=True)
    ckpt.write_yaml(plan.root / "compare.yaml", to_dict(cfg))
    ckpt.write_json(plan.root / "plan.json", plan_json(plan))
    isolate = (cfg.compare or CompareConfig()).isolate
    todo = [r for r in plan.runs if not r.finished]
    echo(f"compare '{cfg.name}': {len(plan.runs)} sub-runs ({len(plan.runs) - len(todo)} finished), "
         f"{len(plan.tasks)} tasks x (single-task + {len(plan.methods)} method(s)) x {len(plan.seeds)} seed(s), "
         f"budget: {plan.budget_rule}")
    for note in plan.notes:
        echo(f"  note: {note}")
    if not train_missing:
        for run in plan.runs:
            if run.finished:
                check_finished(run)
    for i, run in enumerate(plan.runs if train_missing else [], 1):
        started = time.perf_counter()
        status = run_subrun(run, isolate, progress)
        if status == "done":
            continue
        summary = json.loads((run.run_dir / "summary.json").read_text())
        dev = summary.get("dev_macro", float("nan"))
        echo(f"[{i}/{len(plan.runs)}] {run.key}: {status} {run.budget['max_steps']} steps in "
             f"{time.perf_counter() - started:.0f}s (dev macro {dev:.4f})")
    inference = measure_inference(plan, echo=echo)
    results = collect(plan, inference)
    ckpt.write_json(plan.root / "results.json", results)
    from polytask.compare_report import format_table, write_report

    report = write_report(results, plan.root)
    echo(format_table(results))
    echo(f"report: {report}")
    return plan.root


# ---------------------------------------------------------------------------------------------
# Accounting: what each sub-run trained on, and how fast


_LENGTH_CACHE: dict[str, dict[str, list[int]]] = {}


def train_lengths(cfg: Config) -> dict[str, list[int]]:
    """Token count of every training example of every task, as ``train`` encodes them."""
    from transformers import AutoTokenizer

    from polytask.backbones.encoder import resolve_backbone
    from polytask.dataset import prepare

    out: dict[str, list[int]] = {}
    missing = []
    for tc in cfg.tasks:
        key = json.dumps([to_dict(tc), cfg.data_dir, cfg.model.max_length, cfg.model.backbone,
                          cfg.seed if tc.data.format == "synthetic" else None], sort_keys=True, default=str)
        if key in _LENGTH_CACHE:
            out[tc.name] = _LENGTH_CACHE[key]
        else:
            missing.append((tc, key))
    if missing:
        raw = to_dict(cfg)
        raw["compare"] = None
        raw["tasks"] = [to_dict(tc) for tc, _ in missing]
        sub = from_dict(raw)
        data = prepare(sub, splits=("train",))
        tokenizer = AutoTokenizer.from_pretrained(resolve_backbone(cfg.model.backbone))
        for tc, key in missing:
            td = data[tc.name]
            feats = td.task.encode(td.examples["train"], tokenizer, cfg.model.max_length)
            _LENGTH_CACHE[key] = out[tc.name] = [len(f["input_ids"]) for f in feats]
    return out


def replay(cfg: Config, lengths: dict[str, list[int]], steps: int) -> dict[str, Any]:
    """Examples and tokens per task per step that ``train`` drew in its first ``steps`` steps.

    Mirrors the trainer's draw: per micro-step, every task (methods that need all tasks) or one
    task from the seeded sampler; per chosen task, the next batch of its seeded stream.
    Returns per-step lists ``examples[step][task_index]`` and ``tokens[step][task_index]``.
    """
    from polytask.batching import BatchStream
    from polytask.sampling import build_sampler

    t = cfg.train
    names = [tc.name for tc in cfg.tasks]
    needs_all = weighting_class(cfg.weighting.name).needs_all_tasks
    sampler = build_sampler(cfg.sampling.name, names, [len(lengths[n]) for n in names], cfg.seed, cfg.sampling.args)
    streams = {n: BatchStream(lengths[n], t.batch_size, cfg.seed + i, grouped=t.length_grouping)
               for i, n in enumerate(names)}
    examples, tokens = [], []
    for step in range(steps):
        ex, tok = [0] * len(names), [0] * len(names)
        for _ in range(t.grad_accum):
            chosen = names if needs_all else [sampler.sample(step, t.max_steps)]
            for n in chosen:
                idx = streams[n].next()
                j = names.index(n)
                ex[j] += len(idx)
                tok[j] += sum(lengths[n][i] for i in idx)
        examples.append(ex)
        tokens.append(tok)
    return {"tasks": names, "examples": examples, "tokens": tokens}


def read_events(run_dir: Path) -> list[dict]:
    path = run_dir / "metrics.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def steps_done(summary: dict, events: list[dict]) -> int:
    if "steps" in summary:
        return int(summary["steps"])
    return max((e.get("step", 0) for e in events if e.get("kind") in ("train", "eval")), default=0)


def throughput(events: list[dict], per_step_examples: list[int], per_step_tokens: list[int],
               train_seconds: float, pause_steps: set[int] | frozenset[int] = frozenset()) -> dict[str, Any]:
    """Training samples/s and tokens/s on the log intervals with no evaluation in them.

    A train event at step s is logged before that step's evaluation (and checkpoint), so the
    interval between the events at s1 and s2 contains the evaluations at steps s1 <= e < s2.
    ``pause_steps``: further steps after which the trainer paused (checkpoints).
    """
    evals = sorted({e["step"] for e in events if e.get("kind") == "eval"} | set(pause_steps))
    points = [(0, 0.0)] + sorted((e["step"], e["elapsed"]) for e in events
                                 if e.get("kind") == "train" and "elapsed" in e)
    n_ex = n_tok = 0
    secs = 0.0
    for (s1, t1), (s2, t2) in zip(points, points[1:]):
        if s2 <= s1 or t2 <= t1 or any(s1 <= e < s2 for e in evals):
            continue
        n_ex += sum(per_step_examples[s1:s2])
        n_tok += sum(per_step_tokens[s1:s2])
        secs += t2 - t1
    if secs > 0:
        return {"samples_per_s": n_ex / secs, "tokens_per_s": n_tok / secs, "measured_seconds": secs,
                "method": "log intervals without evaluation"}
    total = train_seconds or math.nan
    return {"samples_per_s": sum(per_step_examples) / total, "tokens_per_s": sum(per_step_tokens) / total,
            "measured_seconds": total, "method": "whole training loop (includes evaluation)"}


def account(run: SubRun) -> dict[str, Any]:
    """Everything measured about one finished sub-run."""
    summary = json.loads((run.run_dir / "summary.json").read_text())
    res_path = run.run_dir / "resources.json"
    resources = json.loads(res_path.read_text()) if res_path.exists() else {}
    events = read_events(run.run_dir)
    steps = steps_done(summary, events)
    rep = replay(run.cfg, train_lengths(run.cfg), steps)
    names = rep["tasks"]
    per_ex = [sum(row) for row in rep["examples"]]
    per_tok = [sum(row) for row in rep["tokens"]]
    every = getattr(run.cfg.train, "checkpoint_every", None) or run.cfg.train.eval_every
    speed = throughput(events, per_ex, per_tok, summary.get("train_seconds", math.nan),
                       set(range(every, steps + 1, every)))
    seen = {n: sum(row[j] for row in rep["examples"]) for j, n in enumerate(names)}
    tokens = {n: sum(row[j] for row in rep["tokens"]) for j, n in enumerate(names)}
    # dev curve against the examples of each task seen so far
    cum = {n: [0] for n in names}
    for row in rep["examples"]:
        for j, n in enumerate(names):
            cum[n].append(cum[n][-1] + row[j])
    curve = [{"step": e["step"], "examples": {n: cum[n][min(e["step"], steps)] for n in names},
              "main": e.get("main", {})} for e in events if e.get("kind") == "eval"]
    return {"summary": summary, "resources": resources, "steps": steps, "examples_seen": seen,
            "tokens_seen": tokens, "throughput": speed, "curve": curve, "budget": run.budget}


# ---------------------------------------------------------------------------------------------
# Serving cost


def measure_inference(plan: Plan, echo: Callable[[str], None] = print) -> dict[str, Any]:
    """Time to predict the dev inputs of every task: one multi-task model vs T single-task models.

    Measured (not estimated) on the first seed's runs, in this process, with the same encoded
    inputs (the first ``compare.inference_examples`` dev examples of each task) for every
    model set; all models of a set are loaded (served) together. Cached in inference.json.
    """
    cc = plan.cfg.compare or CompareConfig()
    n = cc.inference_examples
    if n <= 0:
        return {}
    path = plan.root / "inference.json"
    cached = json.loads(path.read_text()) if path.exists() else {}
    seed = plan.seeds[0]
    sets = {SINGLE: [r.run_dir for r in plan.select(SINGLE, seed)]}
    sets.update({m: [r.run_dir for r in plan.select(m, seed)] for m in plan.methods})
    wanted = {k: v for k, v in sets.items()
              if not (k in cached and cached[k].get("seed") == seed and cached[k].get("examples_per_task") == n)}
    if not wanted:
        return cached
    import torch

    from polytask.dataset import prepare
    from polytask.evaluate import predict_features
    from polytask.predict import Predictor

    base = _plain(plan.cfg)
    data = prepare(base, splits=("train", "dev"))
    feats: dict[str, list[dict]] | None = None
    for key, dirs in wanted.items():
        if not all((d / "summary.json").exists() for d in dirs):
            continue
        started = time.perf_counter()
        preds = [Predictor.load(d) for d in dirs]
        load_s = time.perf_counter() - started
        owner = {name: p for p in preds for name in p.tasks}
        if feats is None:
            tok = preds[0].tokenizer
            feats = {name: td.task.encode(td.examples.get("dev", [])[:n], tok, base.model.max_length)
                     for name, td in data.items()}
        batch = base.train.eval_batch_size
        for name, f in feats.items():  # warm-up: one small batch per model and task
            if f:
                predict_features(owner[name].model, owner[name].tasks[name], f[:4], _pad_id(owner[name]), batch)
        started = time.perf_counter()
        with torch.inference_mode():
            for name, f in feats.items():
                if f:
                    predict_features(owner[name].model, owner[name].tasks[name], f, _pad_id(owner[name]), batch)
        secs = time.perf_counter() - started
        total = sum(len(f) for f in feats.values())
        cached[key] = {
            "seed": seed, "examples_per_task": n, "models": len(preds), "examples": total,
            "params_served": sum(sum(p.numel() for p in pr.model.parameters()) for pr in preds),
            "weight_bytes": sum((d / "model.safetensors").stat().st_size for d in dirs),
            "load_seconds": load_s, "predict_seconds": secs, "examples_per_s": total / secs if secs else math.nan,
            "torch_threads": torch.get_num_threads(),
        }
        echo(f"serving cost {key}: {len(preds)} model(s), {total} dev examples in {secs:.1f}s")
        del preds, owner
    ckpt.write_json(path, cached)
    return cached


def _pad_id(pred) -> int:
    return pred.tokenizer.pad_token_id if pred.tokenizer.pad_token_id is not None else 0


# ---------------------------------------------------------------------------------------------
# Results


def mean_std(values: list[float]) -> dict[str, Any]:
    vals = [float(v) for v in values if v is not None and not math.isnan(float(v))]
    if not vals:
        return {"mean": math.nan, "std": math.nan, "n": 0, "values": []}
    std = statistics.stdev(vals) if len(vals) > 1 else 0.0
    return {"mean": statistics.fmean(vals), "std": std, "n": len(vals), "values": vals}


def relative_changes(mtl: dict[str, float], single: dict[str, float],
                     higher_is_better: dict[str, bool]) -> dict[str, float]:
    """Signed relative change per task in percent (+ is better); NaN where the baseline is 0."""
    out = {}
    for task, base in single.items():
        base = float(base)
        if base == 0 or math.isnan(base) or task not in mtl:
            out[task] = math.nan
            continue
        sign = 1.0 if higher_is_better[task] else -1.0
        out[task] = 100.0 * sign * (float(mtl[task]) - base) / abs(base)
    return out


def delta_m_defined(mtl: dict[str, float], single: dict[str, float],
                    higher_is_better: dict[str, bool]) -> tuple[float, list[str]]:
    """:func:`polytask.metrics.delta_m` over the tasks whose single-task metric is non-zero.

    A zero baseline (e.g. a collapsed classifier with Matthews correlation exactly 0) makes the
    relative change undefined; such tasks are left out and returned, so the report can say so.
    """
    from polytask.metrics import delta_m

    excluded = [t for t, v in single.items() if float(v) == 0 or math.isnan(float(v))]
    keep = [t for t in single if t not in excluded]
    if not keep:
        return math.nan, excluded
    value = delta_m({t: mtl[t] for t in keep}, {t: single[t] for t in keep},
                    {t: higher_is_better[t] for t in keep})
    return value, excluded


def collect(plan: Plan, inference: dict[str, Any] | None = None) -> dict[str, Any]:
    """Every number of the report, from the finished sub-runs (JSON-ready)."""
    from polytask.tasks import build_task

    task_objs = {tc.name: build_task(tc) for tc in plan.cfg.tasks}
    metric = {n: t.main_metric for n, t in task_objs.items()}
    hib = {n: t.higher_is_better for n, t in task_objs.items()}
    methods = [SINGLE] + plan.methods
    runs: dict[str, dict[int, Any]] = {m: {} for m in methods}
    for r in plan.runs:
        if not r.finished:
            continue
        acc = account(r)
        if r.method == SINGLE:
            runs[SINGLE].setdefault(r.seed, {})[r.task] = acc
        else:
            runs[r.method][r.seed] = acc

    def scores(method: str, seed: int, split: str) -> dict[str, float] | None:
        got = runs[method].get(seed)
        if got is None:
            return None
        if method == SINGLE:
            if set(got) != set(plan.tasks):
                return None
            return {t: got[t]["summary"].get(split, {}).get(t, {}).get(metric[t], math.nan) for t in plan.tasks}
        return {t: got["summary"].get(split, {}).get(t, {}).get(metric[t], math.nan) for t in plan.tasks}

    table: dict[str, Any] = {}
    delta: dict[str, Any] = {}
    for m in methods:
        table[m] = {}
        for split in ("dev", "test"):
            per_seed = {s: scores(m, s, split) for s in plan.seeds}
            per_seed = {s: v for s, v in per_seed.items() if v is not None}
            table[m][split] = {t: mean_std([v[t] for v in per_seed.values()]) for t in plan.tasks}
            macro = [statistics.fmean(v[t] if hib[t] else -v[t] for t in plan.tasks) for v in per_seed.values()]
            table[m][split]["macro"] = mean_std(macro)
            if m == SINGLE:
                continue
            dms, rels, excluded = [], {t: [] for t in plan.tasks}, set()
            for s, v in per_seed.items():
                base = scores(SINGLE, s, split)
                if base is None:
                    continue
                dm, ex = delta_m_defined(v, base, hib)
                dms.append(dm)
                excluded.update(ex)
                for t, rc in relative_changes(v, base, hib).items():
                    rels[t].append(rc)
            delta.setdefault(m, {})[split] = {
                **mean_std(dms), "excluded_tasks": sorted(excluded),
                "per_task": {t: mean_std(rels[t]) for t in plan.tasks},
            }

    efficiency: dict[str, Any] = {}
    for m in methods:
        per_seed = []
        for s in plan.seeds:
            got = runs[m].get(s)
            if not got:
                continue
            parts = list(got.values()) if m == SINGLE else [got]
            if m == SINGLE and len(parts) != len(plan.tasks):
                continue
            secs = sum(p["throughput"]["measured_seconds"] for p in parts)
            ex = sum(p["throughput"]["samples_per_s"] * p["throughput"]["measured_seconds"] for p in parts)
            tok = sum(p["throughput"]["tokens_per_s"] * p["throughput"]["measured_seconds"] for p in parts)
            peaks = [None if p["resources"].get("resumed") else p["resources"].get("peak_rss_mb") for p in parts]
            per_seed.append({
                "trainable_params": sum(p["summary"]["params"]["trainable"] for p in parts),
                "total_params": sum(p["summary"]["params"]["total"] for p in parts),
                "train_seconds": sum(p["summary"].get("train_seconds", math.nan) for p in parts),
                # a resumed sub-run's wall time covers only its last part: not reported
                "wall_seconds": (sum(p["resources"]["wall_seconds"] for p in parts)
                                 if all("wall_seconds" in p["resources"] and not p["resources"].get("resumed")
                                        for p in parts) else math.nan),
                "samples_per_s": ex / secs if secs else math.nan,
                "tokens_per_s": tok / secs if secs else math.nan,
                "peak_rss_mb": max(peaks) if all(x is not None for x in peaks) else math.nan,
                "steps": sum(p["steps"] for p in parts),
                "examples_seen": {t: sum(p["examples_seen"].get(t, 0) for p in parts) for t in plan.tasks},
                "throughput_method": parts[0]["throughput"]["method"],
            })
        if not per_seed:
            continue
        eff = {k: mean_std([d[k] for d in per_seed]) for k in
               ("trainable_params", "total_params", "train_seconds", "wall_seconds", "samples_per_s",
                "tokens_per_s", "peak_rss_mb", "steps")}
        eff["examples_seen"] = {t: mean_std([d["examples_seen"][t] for d in per_seed]) for t in plan.tasks}
        eff["throughput_method"] = per_seed[0]["throughput_method"]
        efficiency[m] = eff

    budgets: dict[str, Any] = {}
    for r in plan.runs:
        if r.seed != plan.seeds[0]:
            continue
        key = f"{SINGLE}:{r.task}" if r.method == SINGLE else r.method
        budgets[key] = r.budget

    curves = {}
    s0 = plan.seeds[0]
    for m in methods:
        got = runs[m].get(s0)
        if not got:
            continue
        if m == SINGLE:
            curves[m] = {t: [{"examples": p["examples"][t], "value": p["main"].get(t)} for p in got[t]["curve"]]
                         for t in got}
        else:
            curves[m] = {t: [{"examples": p["examples"][t], "value": p["main"].get(t)} for p in got["curve"]]
                         for t in plan.tasks}

    loads = [x for m in methods for got in runs[m].values()
             for part in (got.values() if m == SINGLE else [got])
             for x in part["resources"].get("load_average_1min", []) if x is not None]
    missing = [r.key for r in plan.runs if not r.finished]
    resumed = [r.key for r in plan.runs if r.finished and _resumed(r)]
    return {
        "name": plan.cfg.name, "tasks": plan.tasks, "metric": metric, "higher_is_better": hib,
        "seeds": plan.seeds, "methods": plan.methods, "budget_rule": plan.budget_rule,
        "train_sizes": plan.sizes, "notes": plan.notes, "base": _base_description(plan.cfg),
        "method_settings": _method_settings(plan),
        "table": table, "delta_m": delta, "efficiency": efficiency, "budgets": budgets,
        "inference": inference or {}, "curves": curves, "missing": missing, "resumed": resumed,
        "load_during_training": [min(loads), max(loads)] if loads else None,
        "environment": environment(), "generated": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
    }


def _resumed(run: SubRun) -> bool:
    path = run.run_dir / "resources.json"
    return (not path.exists()) or bool(json.loads(path.read_text()).get("resumed"))


def _base_description(cfg: Config) -> dict[str, Any]:
    t = cfg.train
    return {"backbone": cfg.model.backbone, "max_length": cfg.model.max_length, "max_steps": t.max_steps,
            "batch_size": t.batch_size, "grad_accum": t.grad_accum, "lr": t.lr, "head_lr": t.head_lr,
            "eval_every": t.eval_every, "early_stopping": t.early_stopping,
            "evaluations": n_evaluations(t.max_steps, t.eval_every),
            "weighting": to_dict(cfg.weighting), "sampling": to_dict(cfg.sampling),
            "architecture": to_dict(cfg.architecture)}


def _method_settings(plan: Plan) -> dict[str, str]:
    out = {}
    s0 = plan.seeds[0]
    for m in plan.methods:
        run = plan.select(m, s0)[0]
        c = run.cfg

        def comp(x) -> str:
            args = ", ".join(f"{k}={v}" for k, v in x.args.items())
            return f"{x.name}({args})" if args else x.name

        mc = next((x for x in (plan.cfg.compare or CompareConfig()).methods if x.name == m), None)
        extra = f"; overrides: {', '.join(mc.overrides)}" if mc and mc.overrides else ""
        out[m] = (f"weighting {comp(c.weighting)}, sampling {comp(c.sampling)}, "
                  f"architecture {comp(c.architecture)}, {c.train.max_steps} steps{extra}")
    return out


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


# ---------------------------------------------------------------------------------------------
# Child process entry point: python -m polytask.compare JOB.json


def _child(job_path: str) -> int:
    job = json.loads(Path(job_path).read_text())
    cfg = from_dict(job["config"], source=job_path)
    try:
        train_measured(cfg, resume=bool(job.get("resume")), progress=bool(job.get("progress")), isolated=True)
    except PolytaskError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(_child(sys.argv[1]))
