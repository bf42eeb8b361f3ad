"""Where a comparison's sub-runs train: the executor registry (``compare.executor``, ``--executor``).

An executor has ``train(runs, progress, echo) -> {key: error}`` (train the unfinished sub-runs
of ``runs``; the failures it let the sweep continue past) and ``close()``. Every executor trains a
sub-run with :func:`polytask.compare.subrun.run_subrun`, so a sub-run's numbers do not depend on
where it trained (same thread count, same device kind):

* ``local`` (:mod:`~polytask.compare.executors.local`, default): processes on this machine,
  ``compare.jobs`` at once.
* ``ray`` (:mod:`~polytask.compare.executors.ray`): one Ray task per sub-run on a Ray cluster
  (``compare.ray_address``) or a local Ray instance.

On both, a sub-run that fails while training is collected (its error shows its last log lines,
:class:`~polytask.compare.subrun.SubRunFailed`) and the others go on; Ctrl-C stops at once.
"""

from __future__ import annotations

from typing import Callable

from polytask.config import CompareConfig, Config
from polytask.errors import ConfigError


def _local():
    from polytask.compare.executors.local import LocalExecutor

    return LocalExecutor


def _ray():
    from polytask.compare.executors.ray import RayExecutor

    return RayExecutor


REGISTRY: dict[str, Callable[[], type]] = {"local": _local, "ray": _ray}


def make_executor(cfg: Config, cc: CompareConfig, root, echo: Callable[[str], None] = print):
    """The executor ``cc.executor`` names, ready to train sub-runs whose folders are under ``root``."""
    if cc.executor not in REGISTRY:
        raise ConfigError(f"compare.executor: '{cc.executor}' is not an executor; choose from {', '.join(REGISTRY)}")
    return REGISTRY[cc.executor]()(cfg, cc, root, echo)


__all__ = ["REGISTRY", "make_executor"]
