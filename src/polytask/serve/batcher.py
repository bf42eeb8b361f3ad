"""Dynamic micro-batching: concurrent requests are gathered into one model call.

A request puts a :class:`Job` (its inputs and a key: the tasks and decoding options it asks
for) on a queue and awaits its future. One worker coroutine takes the first waiting job, then
keeps taking jobs until the batch holds ``max_batch_size`` inputs or ``max_wait_ms`` has passed
since the first, groups the jobs by key and runs each group as ONE call of the model function
in a single model thread (so the event loop keeps accepting requests while the model runs, and
the model is never called concurrently). Requests that arrive while the model is busy wait on
the queue and form the next batch. ``max_batch_size=1`` runs one request at a time.

If a group's call fails, each of its jobs is run alone, so one bad request cannot fail others.
"""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Callable, Hashable


@dataclass
class Job:
    key: Hashable
    inputs: list
    future: asyncio.Future = field(repr=False)


class MicroBatcher:
    """Batches concurrent calls of ``fn(key, inputs) -> result`` where ``split(result, a, b)`` is the
    part of a result for inputs ``a:b``.

    Args:
        fn: the model function (runs in the one model thread).
        split: cuts a combined result back into each job's part.
        max_batch_size: inputs per model call at most (a single larger request runs whole).
        max_wait_ms: how long the first request of a batch waits for others.
        observe: called with the number of inputs of each model call (for metrics).
    """

    def __init__(self, fn: Callable[[Hashable, list], Any], split: Callable[[Any, int, int], Any],
                 max_batch_size: int = 32, max_wait_ms: float = 5.0,
                 observe: Callable[[int], None] | None = None):
        self.fn, self.split = fn, split
        self.max_batch_size = max(1, int(max_batch_size))
        self.max_wait = max(0.0, float(max_wait_ms)) / 1000
        self.observe = observe or (lambda n: None)
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="polytask-model")
        self.queue: asyncio.Queue | None = None
        self.worker: asyncio.Task | None = None

    async def start(self) -> None:
        self.queue = asyncio.Queue()
        self.worker = asyncio.create_task(self._loop())

    async def stop(self) -> None:
        """Finish the batch in progress, fail the jobs still waiting, stop the model thread."""
        if self.worker is not None:
            self.worker.cancel()
            try:
                await self.worker
            except asyncio.CancelledError:
                pass
        while self.queue is not None and not self.queue.empty():
            job = self.queue.get_nowait()
            if not job.future.done():
                job.future.set_exception(RuntimeError("server shutting down"))
        self.executor.shutdown(wait=True)

    async def submit(self, key: Hashable, inputs: list) -> Any:
        """The result of ``fn(key, inputs)``, computed in a batch with other requests."""
        if self.queue is None:
            raise RuntimeError("the batcher is not running")
        future = asyncio.get_running_loop().create_future()
        await self.queue.put(Job(key, list(inputs), future))
        return await future

    async def _gather(self) -> list[Job]:
        loop = asyncio.get_running_loop()
        jobs = [await self.queue.get()]
        size = len(jobs[0].inputs)
        deadline = loop.time() + self.max_wait
        while size < self.max_batch_size:
            left = deadline - loop.time()
            try:
                job = self.queue.get_nowait() if left <= 0 else await asyncio.wait_for(self.queue.get(), left)
            except (asyncio.QueueEmpty, asyncio.TimeoutError):
                break
            jobs.append(job)
            size += len(job.inputs)
        return jobs

    async def _loop(self) -> None:
        while True:
            jobs = await self._gather()
            groups: dict[Hashable, list[Job]] = {}
            for job in jobs:
                groups.setdefault(job.key, []).append(job)
            for key, group in groups.items():
                await self._run(key, group)

    async def _run(self, key: Hashable, group: list[Job]) -> None:
        loop = asyncio.get_running_loop()
        inputs = [x for job in group for x in job.inputs]
        self.observe(len(inputs))
        try:
            result = await loop.run_in_executor(self.executor, self.fn, key, inputs)
        except Exception as exc:  # noqa: BLE001 - reported to the request(s) that caused it
            if len(group) > 1:  # isolate the failing request
                for job in group:
                    await self._run(key, [job])
                return
            if not group[0].future.done():
                group[0].future.set_exception(exc)
            return
        start = 0
        for job in group:
            end = start + len(job.inputs)
            if not job.future.done():
                job.future.set_result(self.split(result, start, end))
            start = end
