"""K-shot training subsets: stratified by label for classification, reproducible per seed.

The few-shot protocol of Gao, Fisch & Chen, "Making Pre-trained Language Models Better Few-shot
Learners", ACL 2021 (several K-shot draws, each its own seed, mean and standard deviation
reported), with the draw stratified as in scikit-learn's ``train_test_split(stratify=...)``: each
label gets K examples in proportion to its training frequency (largest remainders, at least one
per label when K is at least the number of labels). Other task types draw K examples uniformly.
"""

from __future__ import annotations

from collections import defaultdict

import numpy as np

from polytask.adapt.spec import AdaptError


def allocate(counts: dict, k: int) -> dict:
    """Per label, how many of ``k`` draws (proportional; largest remainders; >= 1 when k allows)."""
    total = sum(counts.values())
    labels = sorted(counts, key=str)
    floor_one = k >= len(labels)
    quota = {lab: k * counts[lab] / total for lab in labels}
    take = {lab: min(counts[lab], max(int(quota[lab]), 1 if floor_one else 0)) for lab in labels}
    by_remainder = sorted(labels, key=lambda lab: (-(quota[lab] - int(quota[lab])), -counts[lab], str(lab)))
    while sum(take.values()) > k:  # the floor of one overshot: take back from the largest
        lab = max((lab for lab in labels if take[lab] > 1), key=lambda lab: (take[lab] - quota[lab], counts[lab]))
        take[lab] -= 1
    while sum(take.values()) < k:
        lab = next(lab for lab in by_remainder + labels if take[lab] < counts[lab])
        take[lab] += 1
        by_remainder = [x for x in by_remainder if x != lab] + [lab]
    return take


def k_shot(labels: list, k: int, seed: int, stratify: bool, task: str = "task") -> list[int]:
    """Sorted indices of ``k`` training examples drawn with ``seed`` (stratified by ``labels``)."""
    n = len(labels)
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise AdaptError(f"--shots: expected positive integers, got {k!r}")
    if k > n:
        raise AdaptError(f"--shots {k}: task '{task}' has only {n} training examples; use shots up to {n}")
    rng = np.random.default_rng(seed)
    if not stratify:
        return sorted(rng.choice(n, size=k, replace=False).tolist())
    rows: dict = defaultdict(list)
    for i, lab in enumerate(labels):
        rows[lab].append(i)
    take = allocate({lab: len(v) for lab, v in rows.items()}, k)
    out: list[int] = []
    for lab in sorted(rows, key=str):
        if take[lab]:
            out += rng.choice(rows[lab], size=take[lab], replace=False).tolist()
    return sorted(out)


def stratifies(task) -> bool:
    """Whether K-shot draws of ``task`` are stratified: single-label classification."""
    return task.type_name == "classification"
