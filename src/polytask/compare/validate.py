"""Every sub-run of a comparison checked before any trains, as ``polytask check`` checks a run.

A comparison trains its sub-runs one after another for hours; a problem that only the sixth
sub-run meets (a missing test file of its task, a bad method argument, a finished sub-run whose
config changed) must not wait for the first five. :func:`validate_plan` reads, for every
sub-run still to train, each of its tasks' configured splits (train, dev and test; each distinct
reading of a task once), builds its weighting method and sampler and checks its backbone's
length limit, and checks every finished sub-run against today's plan, then reports every
problem at once.
"""

from __future__ import annotations

import json
from dataclasses import replace

from polytask.compare.plan import Plan, check_finished
from polytask.config import Config, TaskConfig, to_dict
from polytask.errors import ConfigError, DataError, DataProblem, PolytaskError


def validate_plan(plan: Plan) -> None:
    """Raise one error listing every problem of the plan's sub-runs (data, components,
    changed finished sub-runs); nothing is trained or written."""
    data_problems: list[DataProblem] = []
    problems: list[str] = []
    read: set[str] = set()
    checked: set[str] = set()
    for run in plan.runs:
        if run.finished:
            try:
                check_finished(run)
            except ConfigError as exc:
                problems.append(str(exc))
            continue
        for tc in run.cfg.tasks:
            data_problems += _read_task(run.cfg, tc, read)
        key = json.dumps(_component_key(run.cfg), sort_keys=True, default=str)
        if key not in checked:
            checked.add(key)
            problems += _check_components(run.cfg, run.key)
    if data_problems:
        unique = list({(p.file, p.line, p.field, p.message): p for p in data_problems}.values())
        problems.insert(0, str(DataError(unique)))
    if problems:  # a config error when no data problem is among them
        error = PolytaskError if data_problems else ConfigError
        raise error(f"compare checked its {len(plan.runs)} sub-runs before training anything and trained none:\n"
                    + "\n".join(problems))


def _read_task(cfg: Config, tc: TaskConfig, read: set[str]) -> list[DataProblem]:
    """The problems of every configured split of one task, as ``cfg`` reads it (each reading once)."""
    from polytask.dataset import prepare

    key = json.dumps([to_dict(tc), cfg.data_dir, cfg.seed if tc.data.format == "synthetic" else None],
                     sort_keys=True, default=str)
    if key in read:
        return []
    read.add(key)
    try:
        prepare(replace(cfg, compare=None, tasks=[tc]))
    except DataError as exc:
        return exc.problems
    return []


def _component_key(cfg: Config) -> list:
    return [to_dict(cfg.weighting), to_dict(cfg.sampling), [t.name for t in cfg.tasks], cfg.model.backbone,
            cfg.model.max_length]


def _check_components(cfg: Config, key: str) -> list[str]:
    """The sub-run's weighting method, sampler and ``model.max_length`` (as ``check`` builds them)."""
    from polytask.backbones import check_max_length, pretrained_config
    from polytask.train import build_components

    names = [t.name for t in cfg.tasks]
    try:
        check_max_length(cfg.model.max_length, pretrained_config(cfg.model))
        build_components(cfg, names, [1000] * len(names))
    except PolytaskError as exc:
        return [f"sub-run {key}: {exc}"]
    return []
