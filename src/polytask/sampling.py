"""Task samplers: which task's batch a training step uses.

Each sampler draws from ``p_t`` over tasks with its own seeded generator; its state (the
generator, and a position for round-robin) is explicit so a resumed run draws the same tasks.

- ``proportional``: ``p_t ∝ n_t`` (dataset sizes), i.e. examples are seen uniformly.
- ``temperature``: ``p_t ∝ n_t^(1/T)``; T=1 is proportional, T→∞ uniform (Arivazhagan et al.
  2019 use T=5 for multilingual NMT). Hyper-parameter ``T`` (default 2).
- ``uniform``: every task equally often.
- ``round_robin``: tasks in turn, a fixed cycle.
- ``annealed``: ``p_t ∝ n_t^alpha`` with ``alpha = 1 - 0.8 * step / max_steps``, from
  proportional towards uniform over training (Stickland & Murray 2019, "annealed sampling").
"""

from __future__ import annotations

import math

import torch

from polytask.registry import resolve


class Sampler:
    def __init__(self, tasks: list[str], sizes: list[int], seed: int = 0):
        self.tasks = list(tasks)
        self.sizes = torch.tensor(sizes, dtype=torch.float64)
        self.generator = torch.Generator().manual_seed(seed)

    def probabilities(self, step: int, max_steps: int) -> torch.Tensor:  # (T,)
        raise NotImplementedError

    def sample(self, step: int, max_steps: int) -> str:
        p = self.probabilities(step, max_steps)
        return self.tasks[int(torch.multinomial(p, 1, generator=self.generator))]

    def state_dict(self) -> dict:
        return {"generator": self.generator.get_state().tolist()}

    def load_state_dict(self, state: dict) -> None:
        self.generator.set_state(torch.tensor(state["generator"], dtype=torch.uint8))


class Proportional(Sampler):
    def probabilities(self, step, max_steps):
        return self.sizes / self.sizes.sum()


class Temperature(Sampler):
    def __init__(self, tasks, sizes, seed=0, T: float = 2.0):
        super().__init__(tasks, sizes, seed)
        if isinstance(T, bool) or not isinstance(T, (int, float)) or not math.isfinite(T) or T <= 0:
            raise ValueError(f"T: the temperature must be a positive finite number, got {T!r}")
        self.T = T

    def probabilities(self, step, max_steps):
        p = self.sizes ** (1.0 / self.T)
        return p / p.sum()


class Uniform(Sampler):
    def probabilities(self, step, max_steps):
        return torch.full((len(self.tasks),), 1.0 / len(self.tasks), dtype=torch.float64)


class Annealed(Sampler):
    def probabilities(self, step, max_steps):
        alpha = 1.0 - 0.8 * step / max(max_steps - 1, 1)
        p = self.sizes ** alpha
        return p / p.sum()


class RoundRobin(Sampler):
    def __init__(self, tasks, sizes, seed=0):
        super().__init__(tasks, sizes, seed)
        self.position = 0

    def probabilities(self, step, max_steps):
        return Uniform.probabilities(self, step, max_steps)

    def sample(self, step, max_steps):
        task = self.tasks[self.position % len(self.tasks)]
        self.position += 1
        return task

    def state_dict(self):
        return {**super().state_dict(), "position": self.position}

    def load_state_dict(self, state):
        super().load_state_dict(state)
        self.position = int(state["position"])


REGISTRY: dict[str, type[Sampler]] = {
    "proportional": Proportional,
    "temperature": Temperature,
    "uniform": Uniform,
    "round_robin": RoundRobin,
    "annealed": Annealed,
}


def build_sampler(name: str, tasks: list[str], sizes: list[int], seed: int, args: dict | None = None) -> Sampler:
    return resolve(REGISTRY, name, "sampler")(tasks, sizes, seed, **(args or {}))
