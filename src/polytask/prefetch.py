"""Training batches collated ahead of the step that uses them, on a background thread.

A GPU waits while the CPU pads the next batch unless that batch was made earlier. This module
makes the batches of the coming micro-steps on one background thread while the current one
computes (``train.prefetch`` of them wait in a bounded queue; 0: none, every batch is made
when it is needed). On CUDA the batches are pinned (page-locked) so that their copies to the
GPU run asynchronously (``non_blocking=True``, :func:`polytask.devices.to_device`).

What a step trains on never depends on this. :class:`Lookahead` keeps the trainer's draws
(:class:`polytask.draws.StepDraws`) where they would be without it: the main thread still draws
every micro-step's example indices itself, in step order, so checkpoints, logged counts and
fault reports are unchanged. The background thread replays the draws on a copy to learn the
coming indices; a prefetched batch is used only when its step, micro-step and indices are the
ones the main thread drew. Otherwise (a non-finite loss cut a step's micro-steps short, so the
copy ran ahead of a sequence that did not happen) the batch is made on the main thread and the
copy is restarted from the real draws. The results are therefore bit-identical to
``prefetch: 0`` (``tests/test_prefetch.py``).

With ``train.workers`` > 0, :func:`worker_pool` starts that many processes for the run's loop
and the collation the thread (or an evaluation) runs maps its per-item work over them
(:func:`parallel_map`: image decoding and augmentation, ``polytask.preprocess``); an item's
result is a pure function of the item, so the batches are the same as without workers.

Limits: one thread (Python collation holds the GIL, so the overlap is with torch's own work,
which releases it; worker processes take the per-item work off it); an exception on the thread is raised again on the main thread, with its
original traceback, when the batch it was making is asked for; the thread stops (and is joined)
when the trainer's loop ends, however it ends.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import multiprocessing
import os
import queue
import threading
import time
from typing import Any, Callable, Iterator

import torch

from polytask.errors import PolytaskError

_END = object()  # the jobs ran out


class PrefetchError(PolytaskError):
    """The prefetch thread stopped without handing over what was asked for."""


def pins_memory(device: torch.device | str, ahead: int) -> bool:
    """Whether batches are pinned before their copy to ``device``: only for a CUDA device and
    only when they are made ahead (a pinned copy then overlaps the step that is running)."""
    return ahead > 0 and torch.device(device).type == "cuda"


def pin(batch: dict[str, Any]) -> dict[str, Any]:
    """Every tensor of a batch in page-locked memory (needs CUDA)."""
    return {k: v.pin_memory() if isinstance(v, torch.Tensor) else v for k, v in batch.items()}


class Prefetcher:
    """``make(job)`` for each job of ``jobs``, on one daemon thread, at most ``ahead`` waiting.

    :meth:`next` returns ``(job, result, failed)`` in the order of ``jobs``; an exception raised
    by ``make`` comes back as the result with ``failed`` true (the caller decides whether that
    job was needed); one raised by ``jobs`` itself comes back with job None and ends the stream.
    :meth:`close` stops the thread and waits for it.
    """

    def __init__(self, jobs: Iterator, make: Callable[[Any], Any], ahead: int, name: str = "polytask-prefetch"):
        if ahead < 1:
            raise ValueError(f"ahead must be >= 1, got {ahead}")
        self._jobs, self._make = jobs, make
        self._queue: queue.Queue = queue.Queue(maxsize=ahead)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._work, name=name, daemon=True)
        self._thread.start()

    def _put(self, item) -> bool:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.05)
                return True
            except queue.Full:
                continue
        return False

    def _work(self) -> None:
        # The step's torch ops run on the main thread's pool of ``torch.get_num_threads()``
        # threads. Torch ops called here (stacking, normalising a batch) would otherwise start a
        # second OpenMP team of that size, whose threads spin-wait on the same cores after
        # every op: at 224 px on 2 cores that made each training step about 1.5x slower
        # (benchmarks/vision_throughput.py). The setting is this thread's own (an OpenMP ICV).
        torch.set_num_threads(1)
        try:
            for job in self._jobs:
                try:
                    item = (job, self._make(job), False)
                except BaseException as exc:  # handed to the main thread, raised there if needed
                    item = (job, exc, True)
                if not self._put(item):
                    return
        except BaseException as exc:  # the jobs themselves failed: no more batches from here
            self._put((None, exc, True))
        self._put(_END)

    def next(self) -> tuple[Any, Any, bool] | None:
        """The next ``(job, result, failed)``; None once the jobs ran out."""
        while True:
            try:
                item = self._queue.get(timeout=0.1)
            except queue.Empty:
                if not self._thread.is_alive() and self._queue.empty():
                    raise PrefetchError("the prefetch thread ended without a batch") from None
                continue
            return None if item is _END else item

    def close(self) -> None:
        self._stop.set()
        while self._thread.is_alive():
            try:  # unblock a put waiting for room
                self._queue.get_nowait()
            except queue.Empty:
                pass
            self._thread.join(timeout=0.05)

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()


def upcoming(draws, step: int, micro: int, grad_accum: int, max_steps: int) -> Iterator[tuple]:
    """``((step, micro), indices)`` of every micro-step from ``(step, micro)`` to the end of
    training, drawn from ``draws`` (a copy: drawing advances it)."""
    while step < max_steps:
        yield (step, micro), draws.next(step)
        micro += 1
        if micro == grad_accum:
            step, micro = step + 1, 0


class Lookahead:
    """The batches of each micro-step, made ahead on a thread when ``ahead`` > 0.

    ``make(indices)``: the batches of one micro-step's ``{task: example indices}``; ``fork()``:
    a copy of the trainer's draws at their current position (the main thread's draws are never
    touched here). ``waited``: seconds the main thread spent in :meth:`batches` (blocked on the
    queue, or making a batch itself): the step time spent waiting for data.
    """

    def __init__(self, make: Callable[[dict], Any], fork: Callable[[], Any], ahead: int, grad_accum: int,
                 max_steps: int):
        self.make, self.fork, self.ahead = make, fork, ahead
        self.grad_accum, self.max_steps = grad_accum, max_steps
        self.waited = 0.0
        self.made_here = 0  # micro-steps whose batches the main thread made (a restart, or ahead=0)
        self._prefetcher: Prefetcher | None = None

    def start(self, step: int) -> "Lookahead":
        """Prefetch from the first micro-step of ``step``; the draws must be at its start (call
        this before the main thread draws it)."""
        if self.ahead > 0 and step < self.max_steps:
            self._launch(step, 0)
        return self

    def _launch(self, step: int, micro: int) -> None:
        jobs = upcoming(self.fork(), step, micro, self.grad_accum, self.max_steps)
        self._prefetcher = Prefetcher(jobs, lambda job: self.make(job[1]), self.ahead)

    def batches(self, step: int, micro: int, indices: dict[str, list[int]]):
        """The batches of micro-step ``micro`` of ``step``, whose draws are ``indices``."""
        started = time.perf_counter()
        try:
            return self._batches(step, micro, indices)
        finally:
            self.waited += time.perf_counter() - started

    def _batches(self, step: int, micro: int, indices: dict[str, list[int]]):
        item = self._prefetcher.next() if self._prefetcher is not None else None
        if item is not None and item[0] == ((step, micro), indices):
            _, result, failed = item
            if failed:
                self.close()
                raise result  # its traceback still shows where it failed on the thread
            return result
        # not the draws that happened (a step cut short), or nothing prefetched: this batch is
        # made here, and a new copy of the draws (now just after this one) runs ahead again
        self.close()
        self.made_here += 1
        nxt = (step, micro + 1) if micro + 1 < self.grad_accum else (step + 1, 0)
        if self.ahead > 0 and nxt[0] < self.max_steps:
            self._launch(*nxt)
        return self.make(indices)

    @property
    def running(self) -> bool:
        """Whether a prefetch thread is alive."""
        return self._prefetcher is not None and self._prefetcher.alive

    def close(self) -> None:
        """Stop the thread (if any) and wait for it."""
        if self._prefetcher is not None:
            self._prefetcher.close()
            self._prefetcher = None

    def __enter__(self) -> "Lookahead":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


_POOL: concurrent.futures.ProcessPoolExecutor | None = None  # the loop's worker processes, while it runs


@contextlib.contextmanager
def worker_pool(workers: int):
    """``workers`` processes for :func:`parallel_map` while the block runs (0: none, the work
    stays in the calling thread). Forked, so they see the parent's data and modules; started
    here, on the calling thread, before any prefetch thread runs; each exits when its parent
    does (a SIGKILLed trainer leaves no worker behind); shut down when the block ends."""
    global _POOL
    if workers < 1:
        yield None
        return
    pool = concurrent.futures.ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("fork"),
                                                  initializer=_start_worker, initargs=(os.getpid(),))
    try:
        list(pool.map(_ready, range(workers)))  # every worker forked now, not later from another thread
        _POOL = pool
        yield pool
    finally:
        _POOL = None
        pool.shutdown(wait=True, cancel_futures=True)


def _start_worker(parent: int) -> None:
    torch.set_num_threads(1)  # the workers share the CPUs with the training step

    def watch() -> None:  # orphaned (the trainer was killed): exit instead of waiting forever
        while os.getppid() == parent:
            time.sleep(0.5)
        os._exit(0)

    threading.Thread(target=watch, daemon=True).start()


def _ready(_: int) -> int:
    time.sleep(0.05)  # long enough that one worker cannot take every warm-up item
    return os.getpid()


def parallel_map(function: Callable[[Any], Any], items: list) -> list:
    """``[function(x) for x in items]``, on the :func:`worker_pool` processes when a pool is
    active (``function`` and the items must pickle), else here."""
    pool = _POOL
    if pool is None or len(items) < 2:
        return [function(x) for x in items]
    return list(pool.map(function, items, chunksize=max(1, len(items) // (2 * pool._max_workers))))


__all__ = ["Lookahead", "PrefetchError", "Prefetcher", "parallel_map", "pin", "pins_memory", "upcoming", "worker_pool"]
