"""Running a comparison: train what is missing, each sub-run measured, then report.

:func:`run_compare` reads the data once (:class:`~polytask.compare.prepared.Prepared`), plans,
trains every unfinished sub-run on the configured executor (:mod:`polytask.compare.executors`:
``local`` processes, the default, or ``ray`` tasks), or searches with Optuna
(:mod:`polytask.compare.search`), measures the serving cost, collects the results and writes the
report. One sub-run (training, resuming, isolation) is :mod:`polytask.compare.subrun`; local
placement (``--jobs N``, one GPU or one thread each) is :mod:`polytask.compare.executors.local`.

Every executor lets the sweep go on past a sub-run that fails while training: the report is
still written, with the missing sub-runs marked; the command then fails with every failure's
message (a rerun retries only those). Ctrl-C and configuration errors stop it at once.
"""

from __future__ import annotations

from typing import Callable
from pathlib import Path

from polytask.compare.executors import make_executor
from polytask.compare.executors.local import DeviceSlots, Slot, gpu_ids, train_runs, visible_gpus
from polytask.compare.grid import choose
from polytask.compare.plan import Plan, check_finished, plan_compare, plan_json
from polytask.compare.prepared import Prepared
from polytask.compare.plots import write_report
from polytask.compare.report import format_table
from polytask.compare.subrun import run_job, run_subrun, train_measured
from polytask.html_report import write_compare_report
from polytask.compare.results import collect
from polytask.compare.serving import measure_inference
from polytask.compare.validate import validate_plan
from polytask.config import CompareConfig, Config, load_config, to_dict
from polytask.errors import PolytaskError
from polytask.files import exclusive_lock, write_json, write_yaml


def run_compare(cfg: Config | str | Path, overrides: list[str] | None = None, progress: bool = False,
                echo: Callable[[str], None] = print, train_missing: bool = True) -> Path:
    """Plan, train what is missing, measure serving cost, and write the report; returns its folder.

    With ``train_missing=False`` nothing is trained: the report covers the finished sub-runs.
    """
    if not isinstance(cfg, Config):
        cfg = load_config(cfg, overrides)
    cc = cfg.compare or CompareConfig()
    prepared = Prepared(cfg, splits=("train", "dev") if cc.inference_examples > 0 else ("train",))
    plan = plan_compare(cfg, prepared=prepared)
    busy = (f"{plan.root} is in use by another polytask compare (pid {{pid}}); wait for it to finish, or compare "
            f"into another folder (name=... or output_dir=...)")
    created = not plan.root.exists()
    try:
        with exclusive_lock(plan.root / COMPARE_LOCK, busy):  # a second compare into it fails here, at once
            return _run_plan(plan, cfg, cc, prepared, progress, echo, train_missing)
    finally:  # a compare that failed before writing anything leaves no folder behind
        if created and [p.name for p in plan.root.iterdir()] == [COMPARE_LOCK]:
            (plan.root / COMPARE_LOCK).unlink(missing_ok=True)
            plan.root.rmdir()


COMPARE_LOCK = ".compare.lock"


def _run_plan(plan: Plan, cfg: Config, cc: CompareConfig, prepared: Prepared, progress: bool,
              echo: Callable[[str], None], train_missing: bool) -> Path:
    """:func:`run_compare` once the compare folder is held."""
    if train_missing:  # every sub-run's data and components, before the first trains
        validate_plan(plan)
    plan.root.mkdir(parents=True, exist_ok=True)
    write_yaml(plan.root / "compare.yaml", to_dict(cfg))
    write_json(plan.root / "plan.json", plan_json(plan))
    _announce(plan, echo)
    failed: dict[str, str] = {}
    if train_missing:
        failed = _train(plan, cfg, cc, prepared, progress, echo)
    if cc.search is not None:  # the search's sub-runs: the trials asked so far
        from polytask.compare.search import recorded

        plan = recorded(plan, prepared.sizes)
        write_json(plan.root / "plan.json", plan_json(plan))
    if not train_missing:
        for run in plan.runs:
            if run.finished:
                check_finished(run)
    inference = measure_inference(choose(plan)[0], echo=echo, prepared=prepared)  # the chosen grid points
    results = collect(plan, inference, prepared)
    write_json(plan.root / "results.json", results)
    report = write_report(results, plan.root)
    write_compare_report(plan.root)  # report.html: report.md with its plots embedded
    echo(format_table(results))
    echo(f"report: {report}")
    if failed:
        raise PolytaskError(f"{len(failed)} sub-run(s) failed (the report marks them missing; run the same command "
                            "again to retry them):\n" + "\n".join(failed.values()))
    return plan.root


def _train(plan: Plan, cfg: Config, cc: CompareConfig, prepared: Prepared, progress: bool,
           echo: Callable[[str], None]) -> dict[str, str]:
    """Train the plan's unfinished sub-runs (or run the search) on ``cc.executor``; its failures."""
    if cc.search is not None:  # what it needs, before an executor starts
        from polytask.compare.search import check_space, optuna_module, run_search

        optuna_module()
        check_space(cc.search)
    executor = make_executor(cfg, cc, plan.root, echo)
    try:
        if cc.search is not None:
            return run_search(plan, cfg, prepared.sizes, executor, progress, echo)
        return executor.train(plan.runs, progress, echo)
    finally:
        executor.close()


def _announce(plan: Plan, echo: Callable[[str], None]) -> None:
    if plan.search:  # the runs are one per model and seed; the trials are planned as the search goes
        echo(f"compare '{plan.cfg.name}': {len(plan.runs)} models x seeds, {plan.search['trials']} search trials each "
             f"({len(plan.runs) * plan.search['trials']} sub-runs), budget: {plan.budget_rule}")
        return _notes(plan, echo)
    todo = [r for r in plan.runs if not r.finished]
    echo(f"compare '{plan.cfg.name}': {len(plan.runs)} sub-runs ({len(plan.runs) - len(todo)} finished), "
         f"{len(plan.tasks)} tasks x (single-task + {len(plan.methods)} method(s)) x {len(plan.seeds)} seed(s), "
         f"budget: {plan.budget_rule}")
    _notes(plan, echo)


def _notes(plan: Plan, echo: Callable[[str], None]) -> None:
    for note in plan.notes:
        echo(f"  note: {note}")


def _train_missing(plan: Plan, isolate: bool, progress: bool, echo: Callable[[str], None],
                   slots: DeviceSlots | None = None) -> dict[str, str]:
    """Train the plan's unfinished sub-runs here (:func:`~polytask.compare.executors.local.train_runs`);
    returns the failed ones, ``{key: error}``."""
    return train_runs(plan.runs, isolate, progress, echo, slots)


__all__ = ["DeviceSlots", "Slot", "gpu_ids", "run_compare", "run_job", "run_subrun", "train_measured",
           "visible_gpus"]
