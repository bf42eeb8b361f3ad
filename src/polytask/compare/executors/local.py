"""The local executor: sub-runs as processes on this machine (``--executor local``, the default).

**Parallel sub-runs** (``compare.jobs`` or ``--jobs N``, default 1): with N > 1, up to N isolated
sub-runs train at once (at most one per CPU core, or per GPU), each in its own process with one torch
thread (``OMP_NUM_THREADS=1`` and ``MKL_NUM_THREADS=1`` in its environment, ``torch.set_num_threads(1)``
in it). Each sub-run's seeds, data and config are its own, so its numbers are those of the same
sub-run trained alone with one thread; only timings change (the report's load average says so).
A thread pool (:class:`concurrent.futures.ThreadPoolExecutor`) waits on the child processes.

**One GPU per sub-run.** When CUDA GPUs are visible (and ``train.device`` is ``auto`` or
``cuda``), concurrent sub-runs are placed one per GPU: each child's ``CUDA_VISIBLE_DEVICES`` is
one entry of the parent's visible list (the parent's own ``CUDA_VISIBLE_DEVICES`` when set, else
``0 .. count-1``), so it trains on its ``cuda:0``; a GPU is given to the next sub-run only once
its previous sub-run has ended, and N is capped at the number of GPUs (:class:`DeviceSlots`).

**Failures.** A sub-run that fails while it trains (:class:`~polytask.compare.subrun.SubRunFailed`:
its error shows its ``train.log``'s last lines) does not stop the sweep, as on Ray: compare prints
``[i/n] KEY: failed: <first line>``, trains the others, and :meth:`LocalExecutor.train` returns
``{key: error}``; the report marks those sub-runs missing and the command then fails listing them
(rerunning it retries only them). Ctrl-C (``KeyboardInterrupt``) and any other error (a finished
sub-run saved with another config, ``compare.jobs > 1`` without isolation) stop it at once: with
``--jobs N`` no further sub-run starts, and those in flight (they get the Ctrl-C too) end first.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from typing import Callable, Iterator

from polytask.compare.plan import SubRun
from polytask.compare.subrun import SubRunFailed, failed_line, run_subrun
from polytask.config import CompareConfig, Config
from polytask.errors import ConfigError


class LocalExecutor:
    """Trains sub-runs here: one at a time, or ``compare.jobs`` at once (:class:`DeviceSlots`)."""

    name = "local"

    def __init__(self, cfg: Config, cc: CompareConfig, root=None, echo: Callable[[str], None] = print):
        gpus = visible_gpus() if cfg.train.device in ("auto", "cuda") else []
        self.slots, self.isolate = DeviceSlots(gpus, cc.jobs, os.cpu_count() or 1), cc.isolate

    def train(self, runs: list[SubRun], progress: bool, echo: Callable[[str], None]) -> dict[str, str]:
        """Train the unfinished ``runs``; returns the failed ones, ``{key: error}`` (:func:`train_runs`)."""
        return train_runs(runs, self.isolate, progress, echo, self.slots)

    def close(self) -> None:
        pass


def visible_gpus() -> list[str]:
    """The GPUs sub-runs may be placed on: :func:`gpu_ids` of this process's CUDA devices."""
    import torch

    return gpu_ids(os.environ.get("CUDA_VISIBLE_DEVICES"), torch.cuda.device_count())


def gpu_ids(visible: str | None, count: int) -> list[str]:
    """``count`` GPUs as a child's ``CUDA_VISIBLE_DEVICES`` names them: the entries of the
    parent's ``visible`` list (indices or UUIDs, in its order) when it is set, else ``0..count-1``."""
    if count <= 0:
        return []
    if visible is None or not visible.strip():
        return [str(i) for i in range(count)]
    return [x.strip() for x in visible.split(",") if x.strip()][:count]


@dataclass
class Slot:
    """Where one sub-run trains: its name (printed), its environment, its torch threads."""

    name: str
    env: dict[str, str] = field(default_factory=dict)
    threads: int | None = None


class DeviceSlots:
    """Places concurrent sub-runs: one GPU each when ``gpus`` (ids as :func:`gpu_ids` gives),
    else one CPU thread each; ``jobs`` is ``compare.jobs`` capped at the GPUs, or the ``cpus``.

    A slot goes to one sub-run at a time (:meth:`take` waits until one is given back), so two
    sub-runs never share a GPU. With one job nothing is placed (the sub-run sees what compare sees).
    """

    def __init__(self, gpus: list[str], jobs: int, cpus: int):
        self.gpus = list(gpus)
        self.jobs = max(1, min(jobs, len(self.gpus) or cpus))
        if self.jobs == 1:
            free = [Slot("as configured")]
        elif self.gpus:
            free = [Slot(f"GPU {g}", {"CUDA_VISIBLE_DEVICES": g}, 1) for g in self.gpus[:self.jobs]]
        else:
            free = [Slot(f"CPU thread group {i}", {}, 1) for i in range(self.jobs)]
        self._free = free
        self._ready = threading.Condition()

    def take(self) -> Slot:
        with self._ready:
            self._ready.wait_for(lambda: self._free)
            return self._free.pop(0)

    def give_back(self, slot: Slot) -> None:
        with self._ready:
            self._free.append(slot)
            self._ready.notify()

    @contextlib.contextmanager
    def slot(self) -> Iterator[Slot]:
        taken = self.take()
        try:
            yield taken
        finally:
            self.give_back(taken)

    def describe(self) -> str:
        if self.gpus:
            return f"up to {self.jobs} sub-runs at once, one GPU each (of {', '.join(self.gpus)})"
        return f"up to {self.jobs} sub-runs at once, one torch thread each"


def train_runs(runs: list[SubRun], isolate: bool, progress: bool, echo: Callable[[str], None],
               slots: DeviceSlots | None = None) -> dict[str, str]:
    """Train the unfinished ``runs``, one at a time or ``slots.jobs`` at once; returns ``{key: error}``
    of the sub-runs that failed while training (each printed as it fails; the others go on).
    Any other exception (Ctrl-C included) stops it: no further sub-run starts, those in flight end first."""
    slots = slots or DeviceSlots([], 1, 1)
    n_jobs = slots.jobs
    if n_jobs > 1 and not isolate:
        raise ConfigError("compare.jobs > 1 needs compare.isolate: true (each sub-run in its own process)")
    stop = threading.Event()  # set on Ctrl-C (or another error): queued sub-runs do not start

    def one(i: int, run: SubRun) -> str | None:
        started = time.perf_counter()
        with slots.slot() as slot:
            if stop.is_set():
                return None
            if not run.finished:  # a line per sub-run, also where no progress bar shows (a log)
                echo(f"[{i}/{len(runs)}] {run.key}: training{f' on {slot.name}' if n_jobs > 1 else ''} "
                     f"(up to {run.budget['max_steps']} steps)")
            try:
                status = run_subrun(run, isolate, progress and n_jobs == 1, slot.threads, slot.env)
            except SubRunFailed as exc:
                echo(failed_line(i, len(runs), run.key, str(exc)))
                return str(exc)
        if status != "done":
            summary = run.folder.read_summary()
            echo(f"[{i}/{len(runs)}] {run.key}: {status}, {summary.get('steps', '?')} of {run.budget['max_steps']} "
                 f"steps in {time.perf_counter() - started:.0f}s "
                 f"(dev macro {summary.get('dev_macro', float('nan')):.4f})")
        return None

    def guarded(i: int, run: SubRun) -> str | None:  # in a pool thread: an error stops the queue before it is seen
        try:
            return one(i, run)
        except BaseException:
            stop.set()
            raise

    if n_jobs == 1:
        errors = {run.key: one(i, run) for i, run in enumerate(runs, 1)}
    else:
        echo(f"training {slots.describe()}")
        pool = ThreadPoolExecutor(max_workers=n_jobs)
        try:
            futures = {pool.submit(guarded, i, run): run.key for i, run in enumerate(runs, 1)}
            errors = {futures[f]: f.result() for f in as_completed(futures)}  # raises as soon as one raises
        except BaseException:
            stop.set()
            raise
        finally:  # waits for the sub-runs in flight; the queued ones are dropped
            pool.shutdown(wait=True, cancel_futures=True)
    return {run.key: errors[run.key] for run in runs if errors.get(run.key)}
