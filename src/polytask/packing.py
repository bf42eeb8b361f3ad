"""Sequence packing: several short examples in one row, with no attention across them.

Padding a batch of short examples to its longest wastes compute on pad tokens; packing places
several examples end to end in one row of at most ``capacity`` tokens instead (as in T5,
Raffel et al., JMLR 2020, and the "packing with attention masking" of Krell, Kosec, Perez &
Fitzgibbon, "Efficient Sequence Packing without Cross-contamination", 2021). To keep every
example exactly what it would be alone, a packed row gets

- a block-diagonal causal attention mask: a token sees only earlier tokens *of its own example*
  (:func:`block_causal_mask`), and
- per-example position ids that restart at 0 for each example (rotary/learned positions see
  the same positions as without packing).

The loss is the same token mean as without packing (the targets are the same tokens), so a
packed step computes the same gradient up to floating-point rounding.

The layout of a packed batch is described by ``segment_ids`` (R, W): ``k >= 1`` for the k-th
example of the row, 0 for padding at the row's end. Padding is its own segment (it attends
to earlier padding only), so no attention row is empty and nothing becomes NaN.
"""

from __future__ import annotations

import torch
from torch import Tensor


def pack(lengths: list[int], capacity: int) -> list[list[int]]:
    """Group example indices into rows of at most ``capacity`` tokens (first-fit decreasing).

    Longest examples are placed first, each in the first row with room, which is within 22%
    of the fewest possible rows (Johnson, 1973). An example longer than ``capacity`` gets a row
    of its own. Within a row, examples keep their original order; rows are returned in the
    order of their first example. Deterministic.
    """
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    rows: list[list[int]] = []
    room: list[int] = []
    for i in order:
        n = lengths[i]
        for r, free in enumerate(room):
            if n <= free:
                rows[r].append(i)
                room[r] -= n
                break
        else:
            rows.append([i])
            room.append(capacity - n)
    rows = [sorted(r) for r in rows]
    return sorted(rows, key=lambda r: r[0])


def balanced_pack(lengths: list[int], capacity: int) -> list[list[int]]:
    """Rows of at most ``capacity`` tokens that waste the least padding.

    A packed batch is as wide as its longest row, so first-fit rows of uneven lengths (a last,
    half-empty row) are padding too. This tries :func:`pack` with row limits from the longest
    example up to ``capacity`` (at most ~64 tries, well under a millisecond for 64 examples) and
    keeps the packing with the fewest padded tokens (rows x widest row); ties go to the larger
    limit (fewer rows).
    """
    if not lengths:
        return []
    lo = min(max(lengths), capacity)
    step = max(1, (capacity - lo) // 64)

    def cost(rows: list[list[int]]) -> int:
        return len(rows) * max(sum(lengths[i] for i in r) for r in rows)

    best = pack(lengths, capacity)
    best_cost = cost(best)
    for limit in range(capacity - step, lo - 1, -step):
        rows = pack(lengths, limit)
        c = cost(rows)
        if c < best_cost:
            best, best_cost = rows, c
    return best


def layout(lengths: list[int], capacity: int) -> tuple[list[list[int]], list[tuple[int, int]]]:
    """Rows of example indices (:func:`balanced_pack`) and, per example, its ``(row, start)``."""
    rows = balanced_pack(lengths, capacity)
    where: list[tuple[int, int]] = [(0, 0)] * len(lengths)
    for r, members in enumerate(rows):
        start = 0
        for i in members:
            where[i] = (r, start)
            start += lengths[i]
    return rows, where


def segment_tensors(lengths: list[int], where: list[tuple[int, int]], n_rows: int, width: int
                    ) -> tuple[Tensor, Tensor]:
    """``segment_ids`` and ``position_ids`` (R, W) for examples placed at ``where``."""
    segments = torch.zeros(n_rows, width, dtype=torch.long)
    positions = torch.zeros(n_rows, width, dtype=torch.long)
    next_segment = [1] * n_rows
    for (r, s), n in sorted(zip(where, lengths)):
        segments[r, s:s + n] = next_segment[r]
        positions[r, s:s + n] = torch.arange(n)
        next_segment[r] += 1
    for r in range(n_rows):  # padding after the last example: positions continue, segment 0
        used = int((segments[r] > 0).sum())
        positions[r, used:] = torch.arange(width - used)
    return segments, positions


def block_causal_mask(segment_ids: Tensor, dtype: torch.dtype = torch.float32) -> Tensor:
    """Additive attention mask (R, 1, W, W): 0 where query q may see key k (same segment and
    ``k <= q``), the dtype's most negative value elsewhere. Works for eager and SDPA attention."""
    same = segment_ids.unsqueeze(2) == segment_ids.unsqueeze(1)  # (R, W, W)
    width = segment_ids.shape[1]
    causal = torch.ones(width, width, dtype=torch.bool, device=segment_ids.device).tril()
    allowed = same & causal
    mask = torch.zeros(allowed.shape, dtype=dtype, device=segment_ids.device)
    mask.masked_fill_(~allowed, torch.finfo(dtype).min)
    return mask.unsqueeze(1)


def padding_fraction(lengths: list[int], rows: list[list[int]] | None = None) -> float:
    """Share of pad tokens in a batch: padded to its longest example, or packed into ``rows``."""
    if not lengths:
        return 0.0
    if rows is None:
        total = len(lengths) * max(lengths)
    else:
        total = len(rows) * max(sum(lengths[i] for i in r) for r in rows)
    return 1.0 - sum(lengths) / total


__all__ = ["balanced_pack", "block_causal_mask", "layout", "pack", "padding_fraction", "segment_tensors"]
