"""What each training step trains on: the one source of truth for task and example draws.

For every micro-step of step ``k`` (``train.grad_accum`` of them), :meth:`StepDraws.next`
chooses the task(s) -- every task, for weighting methods that need all tasks in a step, else one
task from the seeded sampler -- and, for each chosen task, the next batch of example indices
from that task's seeded, length-grouped :class:`~polytask.batching.BatchStream`. The trainer
calls it; ``polytask compare`` replays it (:func:`replay`) to count the examples and tokens a
finished run trained on, so the two can never drift apart.

A task whose examples become several rows of the forward pass (extractive QA: windows) passes
``rows`` (per example) and ``max_rows`` (its cap per batch, :meth:`polytask.tasks.base.Task.max_batch_rows`):
its batches then stop taking examples at the cap (:func:`polytask.batching.cut`).

The draws are a pure function of the seed, the dataset sizes, lengths and rows, and the number of
calls: resuming restores the exact position (``state_dict``). Cumulative examples and tokens per
task are counted here too; the trainer logs them with every ``train`` event.

Cosine probes (task-gradient measurements on steps that train one task) read their own streams
(``probe``), so probing never changes what is trained on.
"""

from __future__ import annotations

from polytask.batching import BatchStream
from polytask.config import Config
from polytask.sampling import Sampler, build_sampler

PROBE_SEED_OFFSET = 1000


class StepDraws:
    def __init__(self, sampler: Sampler, lengths: dict[str, list[int]], batch_size: int, seed: int,
                 max_steps: int, all_tasks: bool, grouped: bool = True, rows: dict[str, list[int]] | None = None,
                 max_rows: dict[str, int | None] | None = None):
        self.sampler = sampler
        self.tasks = list(lengths)
        self.lengths = lengths
        self.max_steps = max_steps
        self.all_tasks = all_tasks
        rows, max_rows = rows or {}, max_rows or {}

        def stream(n: str, s: int) -> BatchStream:
            return BatchStream(lengths[n], batch_size, s, grouped=grouped, rows=rows.get(n), max_rows=max_rows.get(n))

        self.streams = {n: stream(n, seed + i) for i, n in enumerate(self.tasks)}
        self.probes = {n: stream(n, seed + PROBE_SEED_OFFSET + i) for i, n in enumerate(self.tasks)}
        self.examples = {n: 0 for n in self.tasks}  # cumulative, over every micro-step drawn
        self.tokens = {n: 0 for n in self.tasks}
        self.rows_peak = {n: 0 for n in self.tasks if self.streams[n].max_rows is not None}  # most rows in
        # one drawn batch (capped tasks)

    @classmethod
    def from_config(cls, cfg: Config, lengths: dict[str, list[int]], all_tasks: bool,
                    rows: dict[str, list[int]] | None = None,
                    max_rows: dict[str, int | None] | None = None) -> "StepDraws":
        """The draws of a run of ``cfg`` whose training examples have these token ``lengths``
        (and, for tasks with a row cap, these ``rows`` and caps)."""
        names = list(lengths)
        sampler = build_sampler(cfg.sampling.name, names, [len(lengths[n]) for n in names], cfg.seed,
                                cfg.sampling.args)
        t = cfg.train
        return cls(sampler, lengths, t.batch_size, cfg.seed, t.max_steps, all_tasks, grouped=t.length_grouping,
                   rows=rows, max_rows=max_rows)

    def next(self, step: int) -> dict[str, list[int]]:
        """One micro-step of step ``step``: ``{task: example indices}``."""
        names = self.tasks if self.all_tasks else [self.sampler.sample(step, self.max_steps)]
        drawn = {n: self.streams[n].next() for n in names}
        for n, idx in drawn.items():
            self.examples[n] += len(idx)
            self.tokens[n] += sum(self.lengths[n][i] for i in idx)
            if n in self.rows_peak:
                self.rows_peak[n] = max(self.rows_peak[n], sum(self.streams[n].rows[i] for i in idx))
        return drawn

    def probe(self, task: str) -> list[int]:
        """A batch for a cosine probe (its own stream: training draws are unaffected)."""
        return self.probes[task].next()

    def state_dict(self) -> dict:
        return {"sampler": self.sampler.state_dict(),
                "streams": {n: s.state_dict() for n, s in self.streams.items()},
                "probes": {n: s.state_dict() for n, s in self.probes.items()},
                "examples": dict(self.examples), "tokens": dict(self.tokens), "rows_peak": dict(self.rows_peak)}

    def load_state_dict(self, state: dict) -> None:
        self.sampler.load_state_dict(state["sampler"])
        for n, s in self.streams.items():
            s.load_state_dict(state["streams"][n])
        for n, s in self.probes.items():
            s.load_state_dict(state["probes"][n])
        self.examples = {n: int(v) for n, v in state["examples"].items()}
        self.tokens = {n: int(v) for n, v in state["tokens"].items()}
        self.rows_peak.update({n: int(v) for n, v in state.get("rows_peak", {}).items() if n in self.rows_peak})


def replay(cfg: Config, lengths: dict[str, list[int]], steps: int, all_tasks: bool,
           rows: dict[str, list[int]] | None = None, max_rows: dict[str, int | None] | None = None) -> dict:
    """Examples and tokens per task per step that a run of ``cfg`` drew in its first ``steps`` steps.

    Returns per-step lists ``examples[step][task_index]`` and ``tokens[step][task_index]``.
    """
    draws = StepDraws.from_config(cfg, lengths, all_tasks, rows, max_rows)
    names = draws.tasks
    examples, tokens = [], []
    for step in range(steps):
        before_ex, before_tok = dict(draws.examples), dict(draws.tokens)
        for _ in range(cfg.train.grad_accum):
            draws.next(step)
        examples.append([draws.examples[n] - before_ex[n] for n in names])
        tokens.append([draws.tokens[n] - before_tok[n] for n in names])
    return {"tasks": names, "examples": examples, "tokens": tokens}


def row_caps(tasks: dict, features: dict[str, list[dict]], batch_size: int, processes: int = 1
             ) -> tuple[dict[str, list[int]], dict[str, int]]:
    """Rows per training example and the cap per global batch, for the tasks that cap their rows
    (``Task.max_batch_rows``; the cap of one process's ``batch_size`` times ``processes``)."""
    caps = {n: t.max_batch_rows(batch_size) for n, t in tasks.items()}
    caps = {n: c * processes for n, c in caps.items() if c is not None}
    return {n: [tasks[n].batch_rows(f) for f in features[n]] for n in caps}, caps


def describe_rows(draws: StepDraws, task: str, unit: str, cap: int) -> str:
    """The cap and the rows per batch of the current epoch of ``task``'s stream, for the log."""
    stream = draws.streams[task]
    per_batch = [sum(stream.rows[i] for i in b) for b in stream._batches] if stream.rows else [0]
    return (f"batches of at most {stream.batch_size} examples and {cap} {unit} "
            f"(this epoch: {min(per_batch)} to {max(per_batch)} {unit}, mean {sum(per_batch) / len(per_batch):.1f})")


__all__ = ["StepDraws", "describe_rows", "replay", "row_caps"]
