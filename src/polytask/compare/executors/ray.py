"""The Ray executor: one Ray task per sub-run (``--executor ray [--ray-address ADDR]``).

Ray (Moritz et al., "Ray: A Distributed Framework for Emerging AI Applications", OSDI 2018) places
each unfinished sub-run as one task with the resources it needs: one GPU when its
``train.device`` is ``cuda`` (or ``auto`` on a cluster that has GPUs; Ray then sets the task's
``CUDA_VISIBLE_DEVICES``), and ``train.num_threads`` CPUs (default 1), which is also its torch
thread count -- as ``--jobs N`` locally, so a sub-run's numbers are the same on either executor.
Without an address (``--ray-address`` or ``RAY_ADDRESS``), a new local Ray instance on this
machine's cores is started (and stopped at the end); with one, compare joins that cluster.

In the task, the sub-run trains as locally (:func:`polytask.compare.subrun.run_subrun`, always
isolated: a child process that gets SIGTERM, and writes a checkpoint, when the Ray worker dies).
Run folders are written where the task runs, so ``output_dir`` must be a filesystem shared by
every node at the same path: :func:`check_storage` checks that at the start (a file written here
must be read back on every node), before anything trains. Paths (``output_dir``, ``data_dir``)
are made absolute for the workers.

Retries: a task whose worker died (killed, node lost, out of memory) is tried again up to
``compare.retries`` times (Ray's ``max_retries``); the next attempt waits for the dead attempt's
child to finish its checkpoint, then resumes from it. A sub-run that fails by itself (an error in
training) is not retried; its last log lines are in the error, the other sub-runs go on, and the
report marks it missing. Progress: one line per state (queued, running on node, done, failed).
Ctrl-C cancels the tasks this compare started (``ray.cancel(force=True)``) and nothing else.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import time
import uuid
from collections import Counter
from dataclasses import replace
from pathlib import Path
from typing import Callable

from polytask.compare.plan import SubRun, check_finished
from polytask.compare.subrun import failed_line, log_tail, run_subrun
from polytask.config import CompareConfig, Config
from polytask.errors import PolytaskError
from polytask.run_folder import RunFolder

RAY_MISSING = "--executor ray needs Ray: pip install 'polytask[ray]' (installs ray[default] and optuna)"


def ray_module():
    """Ray, or a PolytaskError that says what to install."""
    try:
        import ray
    except ImportError:
        raise PolytaskError(RAY_MISSING) from None
    return ray


def connect(ray, address: str | None) -> bool:
    """Join ``address`` (else ``RAY_ADDRESS``), or start a local Ray instance on this machine's cores
    (never a cluster found by chance); returns whether this call started the connection."""
    if ray.is_initialized():
        return False
    address = address or os.environ.get("RAY_ADDRESS") or "local"
    ray.init(address=address, log_to_driver=False, **({"include_dashboard": False} if address == "local" else {}))
    return True


def task_resources(cfg: Config, cluster: dict) -> dict:
    """What a sub-run's task asks Ray for: ``num_threads`` CPUs (default 1), and a GPU when it trains on one."""
    gpu = cfg.train.device == "cuda" or (cfg.train.device == "auto" and cluster.get("GPU", 0) > 0)
    return {"num_cpus": cfg.train.num_threads or 1, "num_gpus": 1 if gpu else 0}


def absolute(run: SubRun) -> SubRun:
    """``run`` with absolute ``output_dir`` and ``data_dir`` (a worker's working folder is not ours)."""
    cfg = replace(run.cfg, output_dir=str(Path(run.cfg.output_dir).resolve()),
                  data_dir=str(Path(run.cfg.data_dir).resolve()))
    return replace(run, cfg=cfg)


def wait_until_free(run_dir: Path, timeout: float = 300.0) -> None:
    """Wait (up to ``timeout`` s) until no process holds ``run_dir``'s lock: the child of a dead
    attempt finishes its SIGTERM checkpoint first. Then training's own lock check decides."""
    lock = run_dir / RunFolder.LOCK
    deadline = time.monotonic() + timeout
    while lock.exists() and time.monotonic() < deadline:
        with open(lock, "a+") as fh:
            try:
                fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return  # closing the file releases it
            except BlockingIOError:
                pass
        time.sleep(0.5)


def train_on_worker(run: SubRun, threads: int, events) -> dict:
    """The Ray task: tell the driver where it runs, then train the sub-run as locally."""
    import ray

    node = ray.util.get_node_ip_address()
    with contextlib.suppress(Exception):  # progress only: a lost driver must not fail the sub-run
        events.put((run.key, node))
    wait_until_free(run.run_dir)
    status = run_subrun(run, isolate=True, progress=False, threads=threads)
    return {"status": status, "node": node}


def probe_storage(path: str, token: str) -> tuple[str, str | None]:
    """On one node: does it read ``path`` with ``token`` in it, and can it write beside it?"""
    import ray

    node = ray.util.get_node_ip_address()
    probe = Path(path)
    try:
        if not probe.exists():
            return node, f"{probe.parent} does not hold the file the driver wrote there (not the same folder)"
        if probe.read_text() != token:
            return node, f"{probe} holds another run's check (not the same folder)"
        mine = probe.parent / f".storage-write-{token}-{os.getpid()}"
        mine.write_text(token)
        mine.unlink()
    except OSError as exc:
        return node, f"{probe.parent}: {exc}"
    return node, None


def check_storage(ray, root: Path) -> int:
    """Every alive node sees ``root`` as this process does; else a PolytaskError naming the nodes.
    Returns the number of nodes checked."""
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    root.mkdir(parents=True, exist_ok=True)
    token = uuid.uuid4().hex
    probe = root / f".storage-check-{token}"
    probe.write_text(token)
    nodes = [n for n in ray.nodes() if n.get("Alive")]
    remote = ray.remote(probe_storage)
    try:
        refs = [remote.options(num_cpus=0, scheduling_strategy=NodeAffinitySchedulingStrategy(n["NodeID"], soft=False))
                .remote(str(probe), token) for n in nodes]
        answers = ray.get(refs, timeout=300)
    finally:
        probe.unlink(missing_ok=True)
    bad = [f"  node {node}: {why}" for node, why in answers if why]
    if bad:
        raise PolytaskError(f"output_dir is not shared with every Ray node: compare writes each sub-run's folder on "
                            f"the node that trains it, so {root} must be the same folder on every node (a shared "
                            f"filesystem at the same path; output_dir=...). Not so on {len(bad)} of {len(nodes)} "
                            "node(s):\n" + "\n".join(bad))
    return len(nodes)


class RayExecutor:
    """Sub-runs as Ray tasks (see the module's docstring)."""

    name = "ray"

    def __init__(self, cfg: Config, cc: CompareConfig, root, echo: Callable[[str], None] = print):
        self.ray = ray = ray_module()
        self.retries, self._owns = cc.retries, connect(ray, cc.ray_address)
        try:
            nodes = check_storage(ray, Path(root).resolve())
        except BaseException:
            self.close()
            raise
        self.cluster = ray.cluster_resources()
        where = cc.ray_address or os.environ.get("RAY_ADDRESS") or "a local Ray instance"
        echo(f"ray: {where}, {nodes} node(s), {self.cluster.get('CPU', 0):g} CPUs, {self.cluster.get('GPU', 0):g} GPUs; "
             f"output_dir is shared; a sub-run is retried up to {self.retries} time(s) if its worker dies")
        self._remote = ray.remote(train_on_worker)

    def train(self, runs: list[SubRun], progress: bool, echo: Callable[[str], None]) -> dict[str, str]:
        """Submit every unfinished sub-run, report each state change, return the failures."""
        from ray.util.queue import Queue

        events = Queue(actor_options={"num_cpus": 0})
        pending: dict = {}
        n = len(runs)
        try:
            for i, run in enumerate(runs, 1):
                run = absolute(run)
                if run.finished:
                    check_finished(run)
                    echo(f"[{i}/{n}] {run.key}: done (finished before, reused)")
                    continue
                res = task_resources(run.cfg, self.cluster)
                ref = self._remote.options(max_retries=self.retries, retry_exceptions=False,
                                           name=f"polytask-compare {run.key}", **res).remote(run, res["num_cpus"], events)
                pending[ref] = (i, run, time.perf_counter())
                echo(f"[{i}/{n}] {run.key}: queued ({res['num_cpus']} CPU, {res['num_gpus']} GPU; "
                     f"up to {run.budget['max_steps']} steps)")
            return self._wait(pending, events, n, echo)
        except KeyboardInterrupt:
            self._cancel(pending, echo)
            raise
        finally:
            with contextlib.suppress(Exception):
                events.shutdown()

    def _wait(self, pending: dict, events, n: int, echo: Callable[[str], None]) -> dict[str, str]:
        ray, failed, attempts = self.ray, {}, Counter()
        index = {run.key: i for i, run, _ in pending.values()}
        while pending:
            ready, _ = ray.wait(list(pending), num_returns=1, timeout=0.5)
            while not events.empty():  # running lines first: a task says where it runs before it returns
                key, node = events.get_nowait()
                attempts[key] += 1
                again = f" (attempt {attempts[key]} of {self.retries + 1}: resumes from its checkpoint)" \
                    if attempts[key] > 1 else ""
                echo(f"[{index[key]}/{n}] {key}: running on node {node}{again}")
            for ref in ready:
                i, run, started = pending.pop(ref)
                error = self._outcome(ref, run, i, n, started, echo)
                if error:
                    failed[run.key] = error
        return failed

    def _outcome(self, ref, run: SubRun, i: int, n: int, started: float, echo: Callable[[str], None]) -> str | None:
        """Print a finished task's done or failed line; the error text of a failure."""
        ray = self.ray
        try:
            out = ray.get(ref)
        except ray.exceptions.RayTaskError as exc:  # the sub-run failed by itself: not retried
            error = str(getattr(exc, "cause", None) or exc)
        except ray.exceptions.RayError as exc:  # its worker died more often than the retries allow
            error = (f"sub-run {run.key}: its Ray worker died ({type(exc).__name__}) and {self.retries} retries "
                     f"did not finish it; {log_tail(run.run_dir / 'train.log')}")
        else:
            summary = run.folder.read_summary()
            echo(f"[{i}/{n}] {run.key}: done on node {out['node']} ({out['status']}), {summary.get('steps', '?')} of "
                 f"{run.budget['max_steps']} steps in {time.perf_counter() - started:.0f}s "
                 f"(dev macro {summary.get('dev_macro', float('nan')):.4f})")
            return None
        echo(failed_line(i, n, run.key, error))
        return error

    def _cancel(self, pending: dict, echo: Callable[[str], None]) -> None:
        """Ctrl-C: cancel the tasks this compare started (killing their workers; the sub-runs checkpoint)."""
        refs = list(pending)
        for ref in refs:
            with contextlib.suppress(Exception):
                self.ray.cancel(ref, force=True)
        if refs:
            with contextlib.suppress(Exception):
                self.ray.wait(refs, num_returns=len(refs), timeout=60)
        echo(f"interrupted: cancelled the {len(refs)} Ray task(s) this compare had started; the next run "
             "resumes their sub-runs from their checkpoints")

    def close(self) -> None:
        if self._owns and self.ray.is_initialized():
            self.ray.shutdown()
            self._owns = False


__all__ = ["RAY_MISSING", "RayExecutor", "absolute", "check_storage", "connect", "ray_module", "task_resources"]
