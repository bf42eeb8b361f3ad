"""Extractive question answering: the answer is a span of the context (SQuAD; Rajpurkar et al.
2016, and SQuAD 2.0's unanswerable questions, Rajpurkar et al. 2018).

Fields: ``question``, ``context``, ``answers`` (one or more ``{text, answer_start}``, a
character offset into the context; none: unanswerable), optional ``id``. Answers may also come
as Hugging Face's ``{text: [...], answer_start: [...]}`` or, in flat files, as the columns
``answer_text`` and ``answer_start`` (an empty text: unanswerable).

One example is one question; its feature holds all of its windows (:mod:`polytask.tasks.spans`:
question + context windows of ``max_length`` tokens overlapping by ``doc_stride``), so a batch of
``B`` questions is ``W >= B`` windows, padded to the longest window of the batch. Budgets and
batch sizes count questions; the windows are logged next to them. A training batch holds at
most ``max_windows_per_batch`` windows (default 1.5 x ``train.batch_size``): it stops taking
questions at the cap (:func:`polytask.batching.cut`), so length grouping cannot gather a batch of
3x the average windows; a question is never split (one over the cap is a batch of its own).

Head (Devlin et al. 2019, sec. 4.2): dropout and one linear layer from each token state to a
start and an end logit, ``(W, T, 2)``. Loss: the mean of the start and the end cross-entropy over
each window's eligible positions (context tokens and [CLS]), averaged over windows.
Decoding: the best span over all windows of a question by start + end logit, as the
transformers QA examples post-process, optionally no answer (SQuAD 2.0).
Metrics: exact match and F1 (main metric), for SQuAD 2.0 also per answerable / unanswerable
question and the best no-answer threshold. ``null_threshold: auto`` (SQuAD 2.0 tasks only) sets
the threshold at the end of training to the one that maximises dev F1 (:meth:`tune_on_dev`;
the SQuAD 2.0 script's ``best_f1_threshold``); it is kept in the task's saved state, so a loaded
run, ``serve`` and the exports use it. Until then (evaluations during training) it is 0.
"""

from __future__ import annotations

import json
import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from polytask.errors import ConfigError, DataProblem
from polytask.tasks import spans as S
from polytask.tasks.base import Example, Task, _pad


class SpanHead(nn.Module):
    """Token states -> start and end logits (the BERT SQuAD head, Devlin et al. 2019)."""

    def __init__(self, hidden_size: int, dropout: float):
        super().__init__()
        self.dropout = nn.Dropout(dropout)
        self.out = nn.Linear(hidden_size, 2)

    def forward(self, hidden: Tensor, mask: Tensor) -> Tensor:  # (W, T, H) -> (W, T, 2)
        return self.out(self.dropout(hidden))


class ExtractiveQATask(Task):
    type_name = "extractive_qa"
    default_metric = "f1"
    metric_names = ("f1", "exact_match", "has_ans_f1", "has_ans_exact", "no_ans_f1", "no_ans_exact", "best_f1")
    text_fields = ("question", "context")
    optional_fields = ("id",)
    target_field = "answers"
    row_unit = "windows"

    def __init__(self, cfg):
        super().__init__(cfg)
        self.tuned_threshold: float | None = None  # null_threshold: auto, once tuned on dev
        if cfg.doc_stride < 0 or cfg.max_answer_length < 1 or cfg.n_best < 1:
            raise ConfigError(f"tasks[{cfg.name}]: doc_stride must be >= 0, max_answer_length and n_best >= 1 "
                              f"(got {cfg.doc_stride}, {cfg.max_answer_length}, {cfg.n_best})")

    # -- reading -----------------------------------------------------------------------------
    def parse(self, record, with_target: bool = True):
        if "data" in record.fields and self.column("question") not in record.fields:  # SQuAD JSON read as JSONL
            return None, [DataProblem(record.file, record.line, None, "this looks like SQuAD JSON ({data: [...]}); "
                                      f"set tasks[{self.name}].data.format: squad")]
        problems, fields = [], {"id": str(record.fields.get(self.column("id"), record.line))}
        for f in self.text_fields:
            value = record.fields.get(self.column(f))
            if not isinstance(value, str) or not value.strip():
                what = "missing" if value is None else "empty" if isinstance(value, str) else f"not text ({value!r:.40})"
                problems.append(self._problem(record, self.column(f), f"{what} {f}", fields["id"]))
            fields[f] = value
        if with_target and not problems:
            answers, msg = self.read_answers(record.fields, fields["context"])
            if msg:
                problems.append(self._problem(record, self.column("answers"), msg, fields["id"]))
            fields["answers"] = answers
        if problems:
            return None, problems
        return Example(fields, f"{record.file}:{record.line}"), []

    def _problem(self, record, field: str, msg: str, qid: str | None = None) -> DataProblem:
        return DataProblem(record.file, record.line, field, msg, item=f"question {qid}" if qid else None)

    def read_answers(self, row: dict, context: str) -> tuple[list[tuple[str, int]], str | None]:
        """The answers as ``[(text, answer_start)]`` and a problem message, or None."""
        raw = row.get(self.column("answers"))
        if raw is None and self.column("answer_text") in row:  # flat columns: one answer
            text = row.get(self.column("answer_text"))
            raw = [] if text in (None, "") else [{"text": text, "answer_start": row.get(self.column("answer_start"))}]
        if isinstance(raw, str):  # a JSON list in a CSV cell
            try:
                raw = json.loads(raw)
            except json.JSONDecodeError:
                return [], f"answers: expected a JSON list of {{text, answer_start}}, got {raw!r:.60}"
        if isinstance(raw, dict) and isinstance(raw.get("text"), list):  # Hugging Face's columns
            raw = [{"text": t, "answer_start": s} for t, s in zip(raw["text"], raw.get("answer_start") or [])]
        raw = [] if raw is None else raw
        if not isinstance(raw, list):
            return [], f"answers: expected a list of {{text, answer_start}}, got {raw!r:.60}"
        if row.get("is_impossible") is True and raw:
            return [], "is_impossible is true but the question has answers"
        if not raw and not self.cfg.allow_unanswerable:
            return [], (f"unanswerable question (no answers), but task '{self.name}' does not allow them; set "
                        f"tasks[{self.name}].allow_unanswerable: true (SQuAD 2.0) or fix the answers")
        out = []
        for a in raw:
            got, msg = check_answer(a, context)
            if msg:
                return [], msg
            out.append(got)
        return out, None

    # -- the no-answer threshold ---------------------------------------------------------------
    @property
    def null_threshold(self) -> float:
        """The threshold decoding uses: the configured number, or under ``auto`` the one tuned on
        dev (0 before tuning). Setting ``cfg.null_threshold`` to a number on a loaded task wins."""
        value = self.cfg.null_threshold
        if value != "auto":
            return float(value)
        return self.tuned_threshold if self.tuned_threshold is not None else 0.0

    def tune_on_dev(self, dev_metrics: dict[str, float] | None) -> dict[str, float] | None:
        """Under ``null_threshold: auto``: take dev's ``best_f1_threshold`` (the threshold that
        maximises dev F1, :func:`spans.best_threshold`) as this task's threshold; what was chosen,
        or None (a set threshold, or no dev metrics to tune on)."""
        if self.cfg.null_threshold != "auto" or not dev_metrics or "best_f1_threshold" not in dev_metrics:
            return None
        self.tuned_threshold = float(dev_metrics["best_f1_threshold"])
        return {"null_threshold": self.tuned_threshold, "dev_best_f1": float(dev_metrics["best_f1"])}

    def vocab_state(self) -> dict:
        return {} if self.tuned_threshold is None else {"null_threshold": self.tuned_threshold}

    def load_vocab_state(self, state: dict) -> None:
        if state.get("null_threshold") is not None:
            self.tuned_threshold = float(state["null_threshold"])

    # -- tensors -----------------------------------------------------------------------------
    def encode(self, examples: list[Example], tokenizer, max_length: int) -> list[dict]:
        if not getattr(tokenizer, "is_fast", False):
            raise ConfigError(f"tasks[{self.name}]: extractive_qa needs a fast (Rust) tokenizer for character "
                              f"offsets; {type(tokenizer).__name__} is not one")
        if self.cfg.doc_stride + 8 > max_length:
            raise ConfigError(f"tasks[{self.name}].doc_stride: {self.cfg.doc_stride} leaves no room in windows of "
                              f"model.max_length={max_length} tokens; use a doc_stride well below max_length")
        windows = S.make_windows([e.fields["question"] for e in examples], [e.fields["context"] for e in examples],
                                 tokenizer, max_length, self.cfg.doc_stride)
        return [self.feature(ex, ws) for ex, ws in zip(examples, windows)]

    def feature(self, ex: Example, windows: list[S.Window]) -> dict:
        """One question's feature: its windows' tokens concatenated (``input_ids``: the length
        that batching and token budgets count) and where each window starts, ends and answers."""
        feat: dict[str, Any] = {
            "input_ids": [t for w in windows for t in w.input_ids],
            "sizes": [len(w.input_ids) for w in windows],
            "first": [w.first for w in windows], "cls": [w.cls for w in windows],
            "offsets": [w.offsets for w in windows], "context": ex.fields["context"],
        }
        if windows[0].token_type_ids is not None:
            feat["token_type_ids"] = [t for w in windows for t in w.token_type_ids]
        if "answers" in ex.fields:
            text, start = ex.fields["answers"][0] if ex.fields["answers"] else ("", -1)
            feat["labels"] = [S.answer_tokens(w, start, text) if text else (w.cls, w.cls) for w in windows]
        return feat

    def collate(self, feats: list[dict], pad_id: int) -> dict[str, Any]:
        """Every window of these questions as one row, padded to the longest window."""
        rows, types, meta = [], [], {"rows": [], "first": [], "cls": [], "offsets": [], "context": []}
        for f in feats:
            cut = [0]
            for n in f["sizes"]:
                cut.append(cut[-1] + n)
            meta["rows"].append(list(range(len(rows), len(rows) + len(f["sizes"]))))
            rows += [f["input_ids"][a:b] for a, b in zip(cut, cut[1:])]
            if "token_type_ids" in f:
                types += [f["token_type_ids"][a:b] for a, b in zip(cut, cut[1:])]
            for key in ("first", "cls", "offsets"):
                meta[key] += f[key]
            meta["context"].append(f["context"])
        width = max(len(r) for r in rows)
        batch: dict[str, Any] = {"input_ids": _pad(rows, width, pad_id),  # (W, T)
                                 "attention_mask": _pad([[1] * len(r) for r in rows], width, 0)}  # (W, T)
        if types:
            batch["token_type_ids"] = _pad(types, width, 0)  # (W, T)
        batch["eligible"] = S.eligible_mask(meta["first"], [len(o) for o in meta["offsets"]], meta["cls"], width)
        batch["qa"] = meta
        if "labels" in feats[0]:
            batch["labels"] = torch.tensor([se for f in feats for se in f["labels"]], dtype=torch.long)  # (W, 2)
        return batch

    # -- model side --------------------------------------------------------------------------
    def make_head(self, hidden_size: int) -> nn.Module:
        return SpanHead(hidden_size, self.cfg.head_dropout)

    def loss(self, out: Tensor, batch: dict[str, Tensor]) -> Tensor:
        logp = S.log_probs(out, batch["eligible"])  # (W, T, 2)
        start = F.nll_loss(logp[..., 0], batch["labels"][:, 0])
        end = F.nll_loss(logp[..., 1], batch["labels"][:, 1])
        return (start + end) / 2

    def batch_rows(self, feature: dict) -> int:
        """A question is one row per window."""
        return len(feature["sizes"])

    def max_batch_rows(self, batch_size: int) -> int:
        """``max_windows_per_batch``, by default 1.5 x the batch's questions (rounded up)."""
        cap = self.cfg.max_windows_per_batch
        return cap if cap is not None else math.ceil(1.5 * batch_size)

    def loss_units(self, feature: dict) -> int:
        """The mean is over windows: this question's windows."""
        return len(feature["sizes"])

    def predict_batch(self, model: nn.Module, batch: dict[str, Tensor]) -> list:
        """One forward pass over the batch's windows, decoded per question. (Overridden so that
        prediction never merges a question's windows with other tasks' one-row inputs.)"""
        out, _ = model(batch, self.name)
        return self.decode(out, batch)

    def decode(self, out: Tensor, batch: dict[str, Any]) -> list[dict]:
        logits = out.detach().float().cpu()  # (W, T, 2)
        meta, preds = batch["qa"], []
        for q, rows in enumerate(meta["rows"]):
            spans, null = S.best_spans(logits, rows, [meta["first"][r] for r in rows],
                                       [meta["offsets"][r] for r in rows], [meta["cls"][r] for r in rows],
                                       self.cfg.max_answer_length, self.cfg.n_best)
            preds.append(S.answer(meta["context"][q], spans, null, self.cfg.allow_unanswerable,
                                  self.null_threshold))
        return preds

    def reference(self, example: Example) -> list[str]:
        return [text for text, _ in example.fields["answers"]]

    def metrics(self, preds: list, refs: list) -> dict[str, float]:
        out = S.squad_scores([p["answer"] for p in preds], refs)
        if self.cfg.allow_unanswerable and preds and "null_margin" in preds[0]:
            threshold, best = S.best_threshold([p["null_margin"] for p in preds], [p["best_span"] for p in preds],
                                               refs)
            out.update(best_f1=best, best_f1_threshold=threshold)
        return out

    def data_summary(self, examples: list[Example], features: list[dict] | None = None) -> str:
        """Questions, contexts, unanswerable questions (and windows, once encoded)."""
        contexts = len({e.fields["context"] for e in examples})
        impossible = sum(1 for e in examples if not e.fields.get("answers"))
        windows = f", {sum(len(f['sizes']) for f in features)} windows" if features else ""
        return f"{len(examples)} questions, {contexts} contexts, {impossible} unanswerable{windows}"


def check_answer(a: Any, context: str) -> tuple[tuple[str, int], str | None]:
    """One answer as ``(text, answer_start)``, or the reason it is invalid."""
    if not isinstance(a, dict) or "text" not in a or "answer_start" not in a:
        return ("", -1), f"answer: expected {{text, answer_start}}, got {a!r:.60}"
    text, start = a["text"], a["answer_start"]
    if isinstance(start, str) and start.strip().lstrip("-").isdigit():
        start = int(start)
    if not isinstance(text, str) or not text.strip():
        return ("", -1), f"answer: empty answer text ({a!r:.60})"
    if isinstance(start, bool) or not isinstance(start, int):
        return ("", -1), f"answer_start: expected a character offset, got {start!r}"
    if context[start: start + len(text)] != text:
        there = context[max(start, 0): max(start, 0) + len(text)]
        return ("", -1), (f"answer_start {start} does not index the answer text {text!r:.40} (the context there "
                          f"reads {there!r:.40})")
    return (text, start), None
