"""What each training step trains on: the one source of truth for task and example draws.

For every micro-step of step ``k`` (``train.grad_accum`` of them), :meth:`StepDraws.next`
chooses the task(s) -- every task, for weighting methods that need all tasks in a step, else one
task from the seeded sampler -- and, for each chosen task, the next batch of example indices
from that task's seeded, length-grouped :class:`~polytask.batching.BatchStream`. The trainer
calls it; ``polytask compare`` replays it (:func:`replay`) to count the examples and tokens a
finished run trained on, so the two can never drift apart.

The draws are a pure function of the seed, the dataset sizes and lengths, and the number of
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
                 max_steps: int, all_tasks: bool, grouped: bool = True):
        self.sampler = sampler
        self.tasks = list(lengths)
        self.lengths = lengths
        self.max_steps = max_steps
        self.all_tasks = all_tasks
        self.streams = {n: BatchStream(lengths[n], batch_size, seed + i, grouped=grouped)
                        for i, n in enumerate(self.tasks)}
        self.probes = {n: BatchStream(lengths[n], batch_size, seed + PROBE_SEED_OFFSET + i, grouped=grouped)
                       for i, n in enumerate(self.tasks)}
        self.examples = {n: 0 for n in self.tasks}  # cumulative, over every micro-step drawn
        self.tokens = {n: 0 for n in self.tasks}

    @classmethod
    def from_config(cls, cfg: Config, lengths: dict[str, list[int]], all_tasks: bool) -> "StepDraws":
        """The draws of a run of ``cfg`` whose training examples have these token ``lengths``."""
        names = list(lengths)
        sampler = build_sampler(cfg.sampling.name, names, [len(lengths[n]) for n in names], cfg.seed,
                                cfg.sampling.args)
        t = cfg.train
        return cls(sampler, lengths, t.batch_size, cfg.seed, t.max_steps, all_tasks, grouped=t.length_grouping)

    def next(self, step: int) -> dict[str, list[int]]:
        """One micro-step of step ``step``: ``{task: example indices}``."""
        names = self.tasks if self.all_tasks else [self.sampler.sample(step, self.max_steps)]
        drawn = {n: self.streams[n].next() for n in names}
        for n, idx in drawn.items():
            self.examples[n] += len(idx)
            self.tokens[n] += sum(self.lengths[n][i] for i in idx)
        return drawn

    def probe(self, task: str) -> list[int]:
        """A batch for a cosine probe (its own stream: training draws are unaffected)."""
        return self.probes[task].next()

    def state_dict(self) -> dict:
        return {"sampler": self.sampler.state_dict(),
                "streams": {n: s.state_dict() for n, s in self.streams.items()},
                "probes": {n: s.state_dict() for n, s in self.probes.items()},
                "examples": dict(self.examples), "tokens": dict(self.tokens)}

    def load_state_dict(self, state: dict) -> None:
        self.sampler.load_state_dict(state["sampler"])
        for n, s in self.streams.items():
            s.load_state_dict(state["streams"][n])
        for n, s in self.probes.items():
            s.load_state_dict(state["probes"][n])
        self.examples = {n: int(v) for n, v in state["examples"].items()}
        self.tokens = {n: int(v) for n, v in state["tokens"].items()}


def replay(cfg: Config, lengths: dict[str, list[int]], steps: int, all_tasks: bool) -> dict:
    """Examples and tokens per task per step that a run of ``cfg`` drew in its first ``steps`` steps.

    Returns per-step lists ``examples[step][task_index]`` and ``tokens[step][task_index]``.
    """
    draws = StepDraws.from_config(cfg, lengths, all_tasks)
    names = draws.tasks
    examples, tokens = [], []
    for step in range(steps):
        before_ex, before_tok = dict(draws.examples), dict(draws.tokens)
        for _ in range(cfg.train.grad_accum):
            draws.next(step)
        examples.append([draws.examples[n] - before_ex[n] for n in names])
        tokens.append([draws.tokens[n] - before_tok[n] for n in names])
    return {"tasks": names, "examples": examples, "tokens": tokens}


__all__ = ["StepDraws", "replay"]
