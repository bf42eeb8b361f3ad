"""Few-shot curves on Ray: ``polytask adapt RUN --task NEW.yaml --shots ... --executor ray``.

One Ray task per start point (the multi-task encoder, the plain pretrained backbone): each loads
the source run and the new task's data itself and runs every (K, seed) of its start with
:func:`polytask.adapt.curve_runs.start_runs`, as the local path does in one process (with
``--tune head`` the start point's encoder states are cached once per task, which is why the unit
is a start point, not a single (K, seed) run). A task asks for one CPU and runs torch with one
thread; the records are those of the local path run with one thread (tested), and the driver
writes the table, JSON and plot as locally. The task runs in the driver's working folder when
that folder exists on its node (relative ``data_dir``), so on a cluster the run folder and the
data must be at the same paths on every node. A task whose worker dies is retried (Ray's
``max_retries``, 2); Ctrl-C cancels the tasks. Needs ``pip install 'polytask[ray]'``.
"""

from __future__ import annotations

import contextlib
import os
from typing import Callable

from polytask.adapt.core import STARTS


def start_task(spec: dict, start: str, cwd: str) -> list[dict]:
    """The Ray task: every (K, seed) run from ``start``, with one torch thread."""
    import torch
    from tqdm.auto import tqdm

    from polytask.adapt.curve_runs import curve_setup, start_runs

    torch.set_num_threads(1)
    with contextlib.chdir(cwd) if os.path.isdir(cwd) else contextlib.nullcontext():
        run, new, source, td, draws = curve_setup(spec["run_dir"], spec["task"], spec["shots"], spec["seeds"],
                                                  spec["tune"], spec["overrides"])
        return start_runs(start, source, new, td, draws, spec["tune"], False, tqdm(disable=True))


def curves_on_ray(spec: dict, address: str | None, echo: Callable[[str], None] = print,
                  retries: int = 2) -> list[dict]:
    """Every start point's records (in :data:`STARTS` order), each from its own Ray task."""
    from polytask.compare.executors.ray import connect, ray_module

    ray = ray_module()
    owns = connect(ray, address)
    try:
        remote = ray.remote(start_task).options(num_cpus=1, max_retries=retries)
        refs = {remote.remote(spec, start, os.getcwd()): start for start in STARTS}
        for start in STARTS:
            echo(f"curves: {start} encoder queued on Ray")
        try:
            return _gather(ray, refs, echo)
        except KeyboardInterrupt:
            for ref in refs:
                with contextlib.suppress(Exception):
                    ray.cancel(ref, force=True)
            echo(f"interrupted: cancelled the {len(refs)} Ray task(s) of these curves")
            raise
    finally:
        if owns:
            ray.shutdown()


def _gather(ray, refs: dict, echo: Callable[[str], None]) -> list[dict]:
    """Wait for every task (a line as each ends); a task's own error is raised as it was."""
    out, pending = {}, list(refs)
    while pending:
        ready, pending = ray.wait(pending, num_returns=1, timeout=0.5)
        for ref in ready:
            try:
                out[refs[ref]] = ray.get(ref)
            except ray.exceptions.RayTaskError as exc:
                raise (getattr(exc, "cause", None) or exc) from None
            echo(f"curves: {refs[ref]} encoder done ({len(out[refs[ref]])} runs)")
    return [row for start in STARTS for row in out[start]]


__all__ = ["curves_on_ray", "start_task"]
