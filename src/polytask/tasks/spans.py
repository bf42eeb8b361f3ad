"""Answer spans for extractive question answering: windows, labels, decoding and SQuAD scores.

The pieces of :mod:`polytask.tasks.extractive_qa` that do not touch a model, so each can be
tested alone.

- **Windows** (Devlin et al. 2019, sec. 4.2; the ``doc_stride`` of the BERT SQuAD recipe): a
  question and a context longer than ``max_length`` tokens become several ``[CLS] question
  [SEP] context-part [SEP]`` windows whose context parts overlap by ``doc_stride`` tokens (the
  fast tokenizer's ``return_overflowing_tokens``). The tokenizer's character offsets map every
  context token back to the context, exactly (unicode code points, whitespace excluded).
- **Labels**: a window that holds the whole answer is labelled with the answer's first and last
  token; any other window (and every window of an unanswerable question, Rajpurkar et al. 2018)
  points both ends at the ``[CLS]`` position, the no-answer position.
- **Decoding** (the post-processing of the transformers QA examples): per window, the
  ``n_best`` best start and ``n_best`` best end context tokens; a pair ``(i, j)`` with ``i <= j
  < i + max_answer_length`` scores ``start_logit(i) + end_logit(j)``; the best pair over all
  windows of a question wins. The no-answer score is the smallest ``[CLS]`` start + end logit
  over the windows; SQuAD 2.0 tasks answer nothing when it beats the best span by more than
  ``null_threshold``.
- **Scores**: exact match and F1 of Rajpurkar et al. (2016) with the official answer
  normalisation (lower case, no punctuation, no articles, single spaces), taken from
  ``torchmetrics``' SQuAD metric, maximised over a question's reference answers; an
  unanswerable question scores 1 only for an empty prediction (the SQuAD 2.0 script's rule).
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass
from functools import lru_cache

import torch
from torch import Tensor

MASKED = -10000.0  # the logit of an ineligible position (as the transformers pipeline masks them)


@dataclass
class Window:
    """One window of one question: its tokens, and where its context tokens are."""

    input_ids: list[int]
    token_type_ids: list[int] | None
    first: int  # position of the first context token
    offsets: list[tuple[int, int]]  # character span of each context token, in order
    cls: int  # the no-answer position


def question_budget(max_length: int, doc_stride: int) -> int:
    """Most question tokens a window keeps: room is left for 3 special tokens and more context
    tokens than the overlap (the tokenizer refuses a stride as long as the context part)."""
    return max(1, min(max_length // 2, max_length - 3 - doc_stride - 1))


def cut_questions(questions: list[str], tokenizer, max_tokens: int) -> list[str]:
    """Questions longer than ``max_tokens`` tokens cut at a token boundary (rare: a question
    longer than half a window)."""
    enc = tokenizer(questions, add_special_tokens=False, return_offsets_mapping=True)
    out = []
    for q, offs in zip(questions, enc["offset_mapping"]):
        out.append(q if len(offs) <= max_tokens else q[: offs[max_tokens - 1][1]])
    return out


def make_windows(questions: list[str], contexts: list[str], tokenizer, max_length: int,
                 doc_stride: int) -> list[list[Window]]:
    """Every question's windows (one tokenizer call for all): at least one each."""
    questions = cut_questions(questions, tokenizer, question_budget(max_length, doc_stride))
    enc = tokenizer(questions, contexts, truncation="only_second", max_length=max_length, stride=doc_stride,
                    return_overflowing_tokens=True, return_offsets_mapping=True)
    out: list[list[Window]] = [[] for _ in questions]
    cls_id = tokenizer.cls_token_id
    for w, q in enumerate(enc["overflow_to_sample_mapping"]):
        seq = enc.sequence_ids(w)
        ctx = [j for j, s in enumerate(seq) if s == 1]
        ids = enc["input_ids"][w]
        offsets = [tuple(enc["offset_mapping"][w][j]) for j in ctx]
        types = enc["token_type_ids"][w] if "token_type_ids" in enc else None
        cls = ids.index(cls_id) if cls_id is not None and cls_id in ids else 0
        out[q].append(Window(ids, types, ctx[0] if ctx else len(ids), offsets, cls))
    return out


def answer_tokens(window: Window, start: int, text: str) -> tuple[int, int]:
    """The first and last token of the answer ``text`` at character ``start`` when the window
    holds all of it, else ``(cls, cls)``. Whitespace around the answer text is not part of it."""
    lead = len(text) - len(text.lstrip())
    start, end = start + lead, start + lead + len(text.strip())  # [start, end) characters
    offs = window.offsets
    if not offs or end <= start or offs[0][0] > start or offs[-1][1] < end:
        return window.cls, window.cls
    first = next(k for k, (_, b) in enumerate(offs) if b > start)  # the token holding `start`
    last = max(k for k, (a, _) in enumerate(offs) if a < end)  # the token holding `end - 1`
    if last < first:  # the answer lies between tokens (characters the tokenizer dropped)
        return window.cls, window.cls
    return window.first + first, window.first + last


def eligible_mask(first: list[int], counts: list[int], cls: list[int], width: int) -> Tensor:
    """(W, T) bool: the positions an answer may start or end at (context tokens and [CLS])."""
    mask = torch.zeros(len(first), width, dtype=torch.bool)
    for w, (f, n, c) in enumerate(zip(first, counts, cls)):
        mask[w, f: f + n] = True
        mask[w, c] = True
    return mask


def log_probs(logits: Tensor, eligible: Tensor) -> Tensor:
    """(W, T, 2) start/end logits -> (W, T, 2) log-softmax over each window's eligible positions
    (the training loss reads it; decoding reads the raw logits)."""
    masked = logits.float().masked_fill(~eligible.unsqueeze(-1), MASKED)  # (W, T, 2)
    return masked.log_softmax(dim=1)


@dataclass
class Span:
    """A candidate answer: context characters ``[start, end)``, its score and window."""

    start: int
    end: int
    score: float  # start logit + end logit
    window: int


def window_spans(logits: Tensor, first: int, offsets: list[tuple[int, int]], max_answer_length: int,
                 k: int, window: int) -> list[Span]:
    """The ``k`` best valid spans among one window's ``k`` best start and ``k`` best end context
    tokens: end >= start, at most ``max_answer_length`` tokens. ``logits``: (T, 2), one window."""
    n = len(offsets)
    if n == 0:
        return []
    start = logits[first: first + n, 0]  # (n,)
    end = logits[first: first + n, 1]  # (n,)
    starts = torch.topk(start, min(k, n)).indices  # (k,)
    ends = torch.topk(end, min(k, n)).indices  # (k,)
    i, j = starts[:, None], ends[None, :]  # (k, 1), (1, k)
    ok = (j >= i) & (j - i < max_answer_length)  # (k, k)
    pair = (start[starts][:, None] + end[ends][None, :]).masked_fill(~ok, -math.inf)  # (k, k)
    best = torch.topk(pair.flatten(), min(k, int(ok.sum()))).indices.tolist()  # the k best valid pairs
    width = len(ends)
    return [Span(offsets[int(starts[t // width])][0], offsets[int(ends[t % width])][1], float(pair.flatten()[t]), window)
            for t in best]


def best_spans(logits: Tensor, rows: list[int], firsts: list[int], offsets: list[list[tuple[int, int]]],
               cls: list[int], max_answer_length: int, k: int = 20) -> tuple[list[Span], float]:
    """The ``k`` best spans over all windows (rows of ``logits``, (W, T, 2)) of one question,
    best first, and its no-answer score: the smallest ``[CLS]`` start + end logit over its
    windows (the transformers QA examples' rule)."""
    spans: list[Span] = []
    null = math.inf
    for w, row in enumerate(rows):
        spans += window_spans(logits[row], firsts[w], offsets[w], max_answer_length, k, w)
        null = min(null, float(logits[row, cls[w], 0] + logits[row, cls[w], 1]))
    spans.sort(key=lambda s: -s.score)
    return spans[:k], null


def answer(context: str, spans: list[Span], null: float, allow_null: bool, threshold: float) -> dict:
    """The prediction of one question: answer text, score (the softmax over the n-best
    candidates' logit sums, with the no-answer one under ``allow_null``), character start/end.
    With ``allow_null`` (SQuAD 2.0): no answer (empty text, start = end = -1) when the no-answer
    score beats the best span by more than ``threshold``; ``null_margin`` (that difference) and
    ``best_span`` are kept so that the threshold can be tuned on dev afterwards."""
    scores = torch.tensor([s.score for s in spans] + ([null] if allow_null else []), dtype=torch.float64)
    probs = scores.softmax(0).tolist() if len(scores) else []
    best = spans[0] if spans else None
    margin = null - best.score if best else math.inf
    out = {"answer": "", "score": round(probs[-1], 6) if allow_null and probs else 0.0, "start": -1, "end": -1}
    if best is not None and not (allow_null and margin > threshold):
        out = {"answer": context[best.start: best.end], "score": round(probs[0], 6),
               "start": best.start, "end": best.end}
    if allow_null:
        out["null_margin"] = round(margin, 6) if math.isfinite(margin) else 1e9
        out["best_span"] = context[best.start: best.end] if best else ""
    return out


# -- scores -----------------------------------------------------------------------------------
@lru_cache(maxsize=1 << 18)
def normalize(text: str) -> str:
    """The official SQuAD answer normalisation: lower case, no punctuation, no articles, single
    spaces (torchmetrics' implementation of it)."""
    from torchmetrics.functional.text.squad import _normalize_text

    return _normalize_text(text)


@lru_cache(maxsize=1 << 18)
def pair_scores(prediction: str, reference: str) -> tuple[float, float]:
    """(exact match, F1) of one prediction against one answer, in [0, 1], as the official script
    computes them (bag-of-tokens F1 of the normalised texts). Plain Python: torchmetrics' own
    per-pair tensors cost ~0.5 ms, 17 s for a SQuAD dev set; ``tests/tasks/test_extractive_qa.py``
    checks this against ``torchmetrics.functional.text.squad``. Cached: bootstrap rescores often."""
    pred, ref = normalize(prediction), normalize(reference)
    p_tok, r_tok = pred.split(), ref.split()
    if not p_tok or not r_tok:
        return float(pred == ref), float(p_tok == r_tok)
    same = sum((Counter(p_tok) & Counter(r_tok)).values())
    if same == 0:
        return float(pred == ref), 0.0
    precision, recall = same / len(p_tok), same / len(r_tok)
    return float(pred == ref), 2 * precision * recall / (precision + recall)


def question_scores(prediction: str, references: list[str]) -> tuple[float, float]:
    """(exact match, F1) of one question: the best over its answers; an unanswerable question
    (no answers) scores (1, 1) for an empty prediction and (0, 0) otherwise."""
    if not references:
        return (1.0, 1.0) if not prediction.strip() else (0.0, 0.0)
    if not prediction.strip():
        return 0.0, 0.0
    scored = [pair_scores(prediction, r) for r in references]
    return max(s[0] for s in scored), max(s[1] for s in scored)


def squad_scores(predictions: list[str], references: list[list[str]]) -> dict[str, float]:
    """Mean exact match and F1; with unanswerable questions among the references also the
    ``has_ans_*`` and ``no_ans_*`` means of the SQuAD 2.0 script."""
    scored = [question_scores(p, r) for p, r in zip(predictions, references)]
    out = {"exact_match": _mean([s[0] for s in scored]), "f1": _mean([s[1] for s in scored])}
    if any(not r for r in references):
        has = [s for s, r in zip(scored, references) if r]
        no = [s for s, r in zip(scored, references) if not r]
        out.update(has_ans_exact=_mean([s[0] for s in has]), has_ans_f1=_mean([s[1] for s in has]),
                   no_ans_exact=_mean([s[0] for s in no]), no_ans_f1=_mean([s[1] for s in no]))
    return out


def best_threshold(margins: list[float], spans: list[str], references: list[list[str]]) -> tuple[float, float]:
    """The ``null_threshold`` that maximises F1 over these questions, and that F1 (the SQuAD 2.0
    script's ``best_f1``): a question answers nothing when its ``null_margin`` exceeds it."""
    span_f1 = [question_scores(s, r)[1] for s, r in zip(spans, references)]
    null_f1 = [question_scores("", r)[1] for r in references]
    order = sorted(range(len(margins)), key=lambda i: margins[i])
    total = sum(null_f1)  # threshold below every margin: every question answers nothing
    best, best_t = total, (margins[order[0]] - 1.0) if order else 0.0
    for i in order:  # raise the threshold past margin i: question i now answers its span
        total += span_f1[i] - null_f1[i]
        if total > best:
            best, best_t = total, margins[i]
    return best_t, best / max(len(margins), 1)


def _mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else math.nan
