"""Running a comparison: train what is missing, each sub-run measured, then report.

:func:`run_compare` reads the data once (:class:`~polytask.compare.prepared.Prepared`), plans,
trains every unfinished sub-run (:func:`run_subrun`), measures the serving cost, collects the
results and writes the report.

**Resuming.** A sub-run is finished when its run folder is (``summary.json`` is written last,
atomically); a finished sub-run is never trained again, and one whose saved config differs from
the planned one is an error. An unfinished sub-run with a checkpoint continues from it
(``train --resume``); without one it starts again. A sub-run's checkpoints (weights and
optimizer state, several times the model's size) are removed once it has finished: compare reads
only its best weights, events, summary, predictions and resources.

**Isolation** (``compare.isolate``, default on): each sub-run trains in a fresh Python process
(``python -m polytask.compare JOB.json``, see :func:`run_job`), so its peak memory is its own and
its memory is returned afterwards; the child gets SIGTERM (and checkpoints) if compare dies.
:func:`train_measured` writes ``resources.json`` (wall time, peak memory, load) next to the run.

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
"""

from __future__ import annotations

import os
import resource
from concurrent.futures import ThreadPoolExecutor
import contextlib
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

from polytask.compare.grid import choose
from polytask.compare.plan import Plan, SubRun, check_finished, plan_compare, plan_json
from polytask.compare.prepared import Prepared
from polytask.compare.plots import write_report
from polytask.compare.report import format_table
from polytask.html_report import write_compare_report
from polytask.compare.results import collect
from polytask.compare.serving import measure_inference
from polytask.compare.validate import validate_plan
from polytask.config import CompareConfig, Config, from_dict, load_config, to_dict
from polytask.errors import ConfigError, PolytaskError
from polytask.files import exclusive_lock, read_json, write_json, write_yaml
from polytask.run_folder import RunFolder, latest_good_checkpoint


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
            train(cfg, progress=progress, overwrite=True)  # an unfinished attempt without a checkpoint
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
    if os.environ.get("CUDA_VISIBLE_DEVICES") is not None:  # the GPU(s) compare placed it on
        out["cuda_visible_devices"] = os.environ["CUDA_VISIBLE_DEVICES"]
    RunFolder(cfg.run_dir).write_resources(out)
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


def _run_isolated(run: SubRun, resume: bool, progress: bool, threads: int | None = None,
                  extra_env: dict[str, str] | None = None) -> None:
    """Train a sub-run in a fresh Python process; its output goes to ``train.log``. ``threads``:
    the child's torch threads (and OMP/MKL threads in its environment); None: torch's default.
    ``extra_env``: more variables for the child (its ``CUDA_VISIBLE_DEVICES``)."""
    run.run_dir.mkdir(parents=True, exist_ok=True)
    job = run.run_dir / "compare_job.json"
    write_json(job, {"config": to_dict(run.cfg), "resume": resume, "progress": progress, "threads": threads})
    env = dict(extra_env or {})
    if threads is not None:
        env.update(OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    env = {**os.environ, **env} if env else None
    log_path = run.run_dir / "train.log"
    with open(log_path, "ab") as log:
        out = None if progress else log  # with progress, the child's bar goes to this terminal
        proc = subprocess.run([sys.executable, "-m", "polytask.compare", str(job)], stdout=out, env=env,
                              stderr=None if progress else subprocess.STDOUT, preexec_fn=_stop_with_parent)
    if proc.returncode != 0:
        tail = log_path.read_text(errors="replace").splitlines()[-15:] if log_path.exists() else []
        raise PolytaskError(f"sub-run {run.key} failed (exit {proc.returncode}); last lines of {log_path}:\n"
                            + "\n".join("  " + line for line in tail))


def run_job(job_path: str) -> int:
    """The child process of an isolated sub-run: ``python -m polytask.compare JOB.json``."""
    job = read_json(Path(job_path))
    cfg = from_dict(job["config"], source=job_path)
    if job.get("threads"):
        import torch

        torch.set_num_threads(int(job["threads"]))
    try:
        train_measured(cfg, resume=bool(job.get("resume")), progress=bool(job.get("progress")), isolated=True)
    except PolytaskError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


def _can_resume(run: SubRun) -> bool:
    folder = run.folder
    if not folder.has_checkpoints() or not folder.has_config():
        return False
    try:
        check_finished(run)  # same config?
    except ConfigError:
        return False
    return latest_good_checkpoint(folder.path, warn=lambda *a: None, run_id=folder.run_id) is not None


def run_subrun(run: SubRun, isolate: bool, progress: bool = False, threads: int | None = None,
               extra_env: dict[str, str] | None = None) -> str:
    """Train ``run`` unless finished; returns 'done', 'resumed' or 'trained'."""
    if run.finished:
        check_finished(run)
        return "done"
    resume = _can_resume(run)
    if isolate:
        _run_isolated(run, resume, progress, threads, extra_env)
    else:
        train_measured(run.cfg, resume=resume, progress=progress)
    if run.finished:
        run.folder.drop_checkpoints()  # 27 sub-runs of the standard suite kept 14 GB of them
    return "resumed" if resume else "trained"


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
    if train_missing:
        gpus = visible_gpus() if cfg.train.device in ("auto", "cuda") else []
        _train_missing(plan, cc.isolate, progress, echo, DeviceSlots(gpus, cc.jobs, os.cpu_count() or 1))
    else:
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
    return plan.root


def _announce(plan: Plan, echo: Callable[[str], None]) -> None:
    todo = [r for r in plan.runs if not r.finished]
    echo(f"compare '{plan.cfg.name}': {len(plan.runs)} sub-runs ({len(plan.runs) - len(todo)} finished), "
         f"{len(plan.tasks)} tasks x (single-task + {len(plan.methods)} method(s)) x {len(plan.seeds)} seed(s), "
         f"budget: {plan.budget_rule}")
    for note in plan.notes:
        echo(f"  note: {note}")


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


def _train_missing(plan: Plan, isolate: bool, progress: bool, echo: Callable[[str], None],
                   slots: DeviceSlots | None = None) -> None:
    slots = slots or DeviceSlots([], 1, 1)
    n_jobs = slots.jobs
    if n_jobs > 1 and not isolate:
        raise ConfigError("compare.jobs > 1 needs compare.isolate: true (each sub-run in its own process)")

    def one(i: int, run: SubRun) -> None:
        started = time.perf_counter()
        with slots.slot() as slot:
            if not run.finished:  # a line per sub-run, also where no progress bar shows (a log)
                echo(f"[{i}/{len(plan.runs)}] {run.key}: training{f' on {slot.name}' if n_jobs > 1 else ''} "
                     f"(up to {run.budget['max_steps']} steps)")
            status = run_subrun(run, isolate, progress and n_jobs == 1, slot.threads, slot.env)
        if status == "done":
            return
        summary = run.folder.read_summary()
        echo(f"[{i}/{len(plan.runs)}] {run.key}: {status}, {summary.get('steps', '?')} of {run.budget['max_steps']} "
             f"steps in {time.perf_counter() - started:.0f}s (dev macro {summary.get('dev_macro', float('nan')):.4f})")

    if n_jobs == 1:
        for i, run in enumerate(plan.runs, 1):
            one(i, run)
        return
    echo(f"training {slots.describe()}")
    with ThreadPoolExecutor(max_workers=n_jobs) as pool:
        for future in [pool.submit(one, i, run) for i, run in enumerate(plan.runs, 1)]:
            future.result()  # the first failure is raised here (the others finish first)
