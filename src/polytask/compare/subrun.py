"""One sub-run of a comparison: trained (isolated or not), measured, reusable, resumable.

Shared by every executor (:mod:`polytask.compare.executors`): :func:`run_subrun` trains a
sub-run unless it is finished, resuming from its checkpoint when it has one.

**Resuming.** A sub-run is finished when its run folder is (``summary.json`` is written last,
atomically); a finished sub-run is never trained again, and one whose saved config differs from
the planned one is an error. An unfinished sub-run with a checkpoint continues from it
(``train --resume``); without one it starts again. A sub-run's checkpoints (weights and
optimizer state, several times the model's size) are removed once it has finished: compare reads
only its best weights, events, summary, predictions and resources.

**Isolation** (``compare.isolate``, default on): each sub-run trains in a fresh Python process
(``python -m polytask.compare JOB.json``, see :func:`run_job`), so its peak memory is its own and
its memory is returned afterwards; the child gets SIGTERM (and checkpoints) if its parent dies
(the compare process, or the Ray worker that ran it). :func:`train_measured` writes
``resources.json`` (wall time, peak memory, load) next to the run.

**Failures.** A sub-run that fails while it trains raises :class:`SubRunFailed`, whose message
carries its last ``train.log`` lines (isolated) or its traceback's last lines (in this process);
every executor records it, prints :func:`failed_line` and trains the others. Ctrl-C
(``KeyboardInterrupt``, or the trainer's ``Interrupted`` after its checkpoint) and a finished
sub-run whose saved config differs (``ConfigError``) are not sub-run failures: they stop the comparison.
"""

from __future__ import annotations

import os
import resource
import subprocess
import sys
import threading
import time
import traceback
from pathlib import Path

from polytask.compare.plan import SubRun, check_finished
from polytask.config import Config, from_dict, to_dict
from polytask.errors import ConfigError, PolytaskError
from polytask.files import read_json, write_json
from polytask.run_folder import RunFolder, latest_good_checkpoint


class SubRunFailed(PolytaskError):
    """A sub-run failed by itself while it trained; the message says which and shows its last log lines."""


def failed_line(i: int, n: int, key: str, error: str) -> str:
    """The progress line of a failed sub-run, the same on every executor: ``[i/n] KEY: failed: <first line>``."""
    return f"[{i}/{n}] {key}: failed: {error.splitlines()[0] if error else ''}"


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
        raise SubRunFailed(f"sub-run {run.key} failed (exit {proc.returncode}); {log_tail(log_path)}")


def log_tail(log_path: Path, n: int = 15) -> str:
    """``last lines of LOG:`` and its last ``n`` lines, indented (what a failed sub-run's error shows)."""
    tail = log_path.read_text(errors="replace").splitlines()[-n:] if log_path.exists() else ["(no log written)"]
    return f"last lines of {log_path}:\n" + "\n".join("  " + line for line in tail)


def _train_here(run: SubRun, resume: bool, progress: bool) -> None:
    """Train ``run`` in this process; an error of its own becomes :class:`SubRunFailed` with the
    traceback's last 15 lines (there is no ``train.log``: the output went to this terminal).
    Ctrl-C (``KeyboardInterrupt``, or ``Interrupted`` once the trainer has checkpointed) passes through."""
    from polytask.train import Interrupted

    try:
        train_measured(run.cfg, resume=resume, progress=progress)
    except Interrupted:
        raise
    except Exception as exc:  # not BaseException: KeyboardInterrupt and SystemExit stop the comparison
        tail = "".join(traceback.format_exception(exc)).splitlines()[-15:]
        first = str(exc).splitlines()[0] if str(exc) else ""
        raise SubRunFailed(f"sub-run {run.key} failed in this process ({type(exc).__name__}: {first}); last lines "
                           "of its traceback:\n" + "\n".join("  " + line for line in tail)) from exc


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
    """Train ``run`` unless finished; returns 'done', 'resumed' or 'trained'. Raises
    :class:`SubRunFailed` when it fails while training, ``ConfigError`` when it finished with another config."""
    if run.finished:
        check_finished(run)
        return "done"
    resume = _can_resume(run)
    if isolate:
        _run_isolated(run, resume, progress, threads, extra_env)
    else:
        _train_here(run, resume, progress)
    if run.finished:
        run.folder.drop_checkpoints()  # 27 sub-runs of the standard suite kept 14 GB of them
    return "resumed" if resume else "trained"
