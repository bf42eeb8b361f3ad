"""Which tasks to train together, from an inter-task affinity matrix.

The score of a grouping (TAG's network-selection objective, Fifty et al. NeurIPS 2021, sec. 3.2,
restricted to partitions: every task is trained in exactly one group): each task receives the
mean affinity onto it from the other members of its group, and the score is the sum over tasks,

    score(P) = sum_{G in P} sum_{t in G, |G| > 1} 1/(|G| - 1) * sum_{s in G, s != t} Z[s -> t]

(a task alone in its group contributes 0). For g groups the best partition is found

- exhaustively over every partition of the T tasks into g non-empty groups when
  ``T <= EXHAUSTIVE_MAX`` (8 tasks: 4140 partitions in all), and otherwise
- by beam search (TAG's paper uses a branch-and-bound-like search; polytask keeps the
  ``beam`` best partial partitions while adding the tasks one at a time to an existing group
  or to a new one). The beam is exact when it is at least the number of partial partitions;
  otherwise it is a heuristic (it may miss the optimum).
"""

from __future__ import annotations

from typing import Iterator, Sequence

EXHAUSTIVE_MAX = 8
BEAM = 256

Partition = list[list[int]]


def score(Z: Sequence[Sequence[float]], groups: Partition) -> float:
    """Total affinity of a partition of task indices (row i of ``Z``: the task stepped on)."""
    total = 0.0
    for g in groups:
        if len(g) < 2:
            continue
        for t in g:
            total += sum(Z[s][t] for s in g if s != t) / (len(g) - 1)
    return total


def partitions(n: int, k: int) -> Iterator[Partition]:
    """Every partition of ``range(n)`` into exactly ``k`` non-empty groups (each once)."""

    def extend(i: int, groups: Partition) -> Iterator[Partition]:
        if i == n:
            if len(groups) == k:
                yield [list(g) for g in groups]
            return
        if len(groups) + (n - i) < k:  # too few tasks left to open the missing groups
            return
        for g in groups:
            g.append(i)
            yield from extend(i + 1, groups)
            g.pop()
        if len(groups) < k:
            groups.append([i])
            yield from extend(i + 1, groups)
            groups.pop()

    yield from extend(0, [])


def best_exhaustive(Z, k: int) -> tuple[Partition, float]:
    n = len(Z)
    best = max(partitions(n, k), key=lambda p: score(Z, p))
    return best, score(Z, best)


def best_beam(Z, k: int, beam: int = BEAM) -> tuple[Partition, float]:
    """Beam search over partial partitions (tasks added in index order)."""
    n = len(Z)
    frontier: list[Partition] = [[]]
    for i in range(n):
        grown = []
        for groups in frontier:
            for j in range(len(groups)):
                grown.append([g + [i] if jj == j else list(g) for jj, g in enumerate(groups)])
            if len(groups) < k:
                grown.append([list(g) for g in groups] + [[i]])
        left = n - i - 1
        grown = [p for p in grown if len(p) + left >= k]
        grown.sort(key=lambda p: score(Z, p), reverse=True)
        frontier = grown[:beam]
    done = [p for p in frontier if len(p) == k]
    best = max(done, key=lambda p: score(Z, p))
    return best, score(Z, best)


def best_grouping(Z, k: int, beam: int = BEAM) -> tuple[Partition, float, str]:
    """The best partition into ``k`` groups, its score, and how it was found."""
    if len(Z) <= EXHAUSTIVE_MAX:
        return (*best_exhaustive(Z, k), "exhaustive")
    return (*best_beam(Z, k, beam), f"beam search (width {beam})")


def groupings(Z, names: list[str], beam: int = BEAM) -> list[dict]:
    """For g = 1 .. T-1 groups: the recommended grouping (by task name), its score, the search."""
    out = []
    for k in range(1, len(names)):
        groups, value, how = best_grouping(Z, k, beam)
        out.append({"groups": k, "grouping": [[names[i] for i in g] for g in groups], "score": value,
                    "search": how})
    return out


def best_partners(Z, names: list[str]) -> dict[str, dict]:
    """For each task t, the other task s whose step helps t most (largest Z[s -> t])."""
    out = {}
    for t, name in enumerate(names):
        s = max((s for s in range(len(names)) if s != t), key=lambda s: Z[s][t])
        out[name] = {"partner": names[s], "affinity": Z[s][t]}
    return out
