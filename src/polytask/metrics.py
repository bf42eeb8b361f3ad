"""Evaluation metrics as pure functions over lists or numpy arrays.

Each wraps the reference implementation (scikit-learn, scipy, seqeval, rouge-score) rather than
re-deriving it, so numbers match what papers and other toolkits report. The wrappers only fix
the edge cases that would otherwise crash or print warnings in the middle of training:
undefined precision counts as 0, and a correlation with a constant input is 0, not NaN.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from scipy import stats
from sklearn import metrics as sk
from sklearn.preprocessing import MultiLabelBinarizer


def _pair(y_true: Sequence, y_pred: Sequence) -> None:
    if len(y_true) != len(y_pred):
        raise ValueError(f"length mismatch: {len(y_true)} true vs {len(y_pred)} predicted")
    if len(y_true) == 0:
        raise ValueError("no examples to score")


def accuracy(y_true: Sequence, y_pred: Sequence) -> float:
    """Fraction of exact matches."""
    _pair(y_true, y_pred)
    return float(sk.accuracy_score(y_true, y_pred))


def macro_f1(y_true: Sequence, y_pred: Sequence) -> float:
    """Unweighted mean of per-class F1 over the classes seen in either list (0 where undefined)."""
    _pair(y_true, y_pred)
    return float(sk.f1_score(y_true, y_pred, average="macro", zero_division=0))


def f1_binary(y_true: Sequence, y_pred: Sequence, positive: Any) -> float:
    """F1 of the ``positive`` class against everything else (also works with >2 classes)."""
    _pair(y_true, y_pred)
    t = [y == positive for y in y_true]
    p = [y == positive for y in y_pred]
    return float(sk.f1_score(t, p, pos_label=True, average="binary", zero_division=0))


def matthews(y_true: Sequence, y_pred: Sequence) -> float:
    """Matthews correlation (CoLA's metric); 0.0 when a row or column of the confusion is empty."""
    _pair(y_true, y_pred)
    return float(sk.matthews_corrcoef(y_true, y_pred))


def _correlation(fn, x: Sequence[float], y: Sequence[float]) -> float:
    _pair(x, y)
    a, b = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    if len(a) < 2 or np.ptp(a) == 0 or np.ptp(b) == 0:
        return 0.0  # undefined: early in training a regression head often predicts a constant
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        value = float(fn(a, b)[0])
    return 0.0 if np.isnan(value) else value


def pearson(x: Sequence[float], y: Sequence[float]) -> float:
    """Pearson r; 0.0 (not NaN) when either input is constant or has fewer than 2 points."""
    return _correlation(stats.pearsonr, x, y)


def spearman(x: Sequence[float], y: Sequence[float]) -> float:
    """Spearman rho; 0.0 (not NaN) when either input is constant or has fewer than 2 points."""
    return _correlation(stats.spearmanr, x, y)


def _is_label_sets(rows: Any) -> bool:
    if isinstance(rows, np.ndarray):
        return False
    return any(isinstance(r, (set, frozenset)) or any(isinstance(v, str) for v in r)
               for r in rows)


def multilabel_f1(y_true: Any, y_pred: Any, average: str = "micro") -> float:
    """F1 over (example, label) decisions.

    Accepts either label sets per example (rows that are ``set``/``frozenset`` or hold strings,
    e.g. ``[{"a", "b"}, set()]``) or a 0/1 indicator matrix (numpy array or equal-length rows).
    ``average`` is ``"micro"`` (pool all decisions) or ``"macro"`` (mean of per-label F1).
    """
    if average not in ("micro", "macro"):
        raise ValueError(f"average must be 'micro' or 'macro', got {average!r}")
    _pair(y_true, y_pred)
    if _is_label_sets(y_true) or _is_label_sets(y_pred):
        binarizer = MultiLabelBinarizer()
        binarizer.fit(list(y_true) + list(y_pred))
        t, p = binarizer.transform(y_true), binarizer.transform(y_pred)
    else:
        t, p = np.asarray(y_true, dtype=int), np.asarray(y_pred, dtype=int)
        if t.ndim != 2 or t.shape != p.shape:
            raise ValueError(f"indicator matrices must be 2-D and equal: {t.shape} vs {p.shape}")
    return float(sk.f1_score(t, p, average=average, zero_division=0))


def entity_prf(true_tag_seqs: Sequence[Sequence[str]], pred_tag_seqs: Sequence[Sequence[str]],
               *, mode: str | None = None, scheme: Any = None) -> dict[str, float]:
    """Entity-level precision, recall and F1 with seqeval's semantics.

    An entity counts only if its type and both boundaries match. By default (``mode=None``)
    seqeval behaves like the CoNLL ``conlleval`` script: IOB1/IOB2 are accepted and an ``I-X``
    after ``O`` starts a new entity. ``mode="strict"`` with a ``scheme`` (a seqeval scheme class
    or a name like ``"IOB2"``) rejects such ill-formed spans instead.
    """
    from seqeval import metrics as sq
    from seqeval import scheme as schemes

    _pair(true_tag_seqs, pred_tag_seqs)
    for i, (t, p) in enumerate(zip(true_tag_seqs, pred_tag_seqs)):
        if len(t) != len(p):
            raise ValueError(f"sequence {i}: {len(t)} true tags vs {len(p)} predicted")
    if isinstance(scheme, str):
        scheme = getattr(schemes, scheme)
    true, pred = [list(s) for s in true_tag_seqs], [list(s) for s in pred_tag_seqs]
    kwargs = {"mode": mode, "scheme": scheme, "zero_division": 0}
    return {"precision": float(sq.precision_score(true, pred, **kwargs)),
            "recall": float(sq.recall_score(true, pred, **kwargs)),
            "f1": float(sq.f1_score(true, pred, **kwargs))}


def rouge(references: Sequence[str], predictions: Sequence[str],
          use_stemmer: bool = True) -> dict[str, float]:
    """Mean ROUGE-1/2/L F-measure (``rouge_score`` package, Porter stemming as in the
    original ROUGE ``-m`` option). Needs the optional extra: ``pip install 'polytask[llm]'``."""
    try:
        from rouge_score import rouge_scorer
    except ImportError as exc:
        raise ImportError("rouge() needs the 'rouge-score' package; "
                          "install it with: pip install 'polytask[llm]'") from exc
    _pair(references, predictions)
    keys = ("rouge1", "rouge2", "rougeL")
    scorer = rouge_scorer.RougeScorer(list(keys), use_stemmer=use_stemmer)
    totals = dict.fromkeys(keys, 0.0)
    for ref, pred in zip(references, predictions):
        scores = scorer.score(ref, pred)
        for key in keys:
            totals[key] += scores[key].fmeasure
    return {key: totals[key] / len(references) for key in keys}


def delta_m(mtl: Mapping[str, float], single: Mapping[str, float],
            higher_is_better: Mapping[str, bool]) -> float:
    """Average relative change of the multi-task model over single-task baselines, in percent
    (Maninis et al., 2019): ``100 * mean_t s_t * (M_mtl,t - M_single,t) / |M_single,t|`` with
    ``s_t = +1`` if higher is better for task t, else ``-1``. Positive means multi-task helps.

    The baseline enters as an absolute value so the sign still means "better" when a baseline
    is negative (e.g. a Matthews correlation below 0); for positive baselines this is exactly
    the published formula. A zero baseline makes the relative change undefined: ValueError.
    """
    tasks = list(single)
    if not tasks:
        raise ValueError("delta_m needs at least one task")
    if set(mtl) != set(single):
        raise ValueError(f"tasks differ: multi-task {sorted(mtl)} vs single-task {sorted(single)}")
    missing = [t for t in tasks if t not in higher_is_better]
    if missing:
        raise ValueError(f"higher_is_better is missing tasks: {missing}")
    total = 0.0
    for task in tasks:
        base = float(single[task])
        if base == 0:
            raise ValueError(f"single-task metric of '{task}' is 0: relative change undefined")
        sign = 1.0 if higher_is_better[task] else -1.0
        total += sign * (float(mtl[task]) - base) / abs(base)
    return 100.0 * total / len(tasks)


__all__ = ["accuracy", "macro_f1", "f1_binary", "matthews", "pearson", "spearman",
           "multilabel_f1", "entity_prf", "rouge", "delta_m"]
