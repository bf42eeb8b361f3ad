"""The Task interface: a task owns its data fields, label vocabulary, head, loss and metrics.

A task knows nothing of other tasks, of the architecture, or of the weighting method. The life
of an example: a reader yields a :class:`Record` (raw columns + file:line); ``parse`` validates
it into an :class:`Example` (or reports :class:`DataProblem`s); ``fit`` builds the label
vocabulary from training examples; ``encode`` tokenizes many examples into features;
``collate`` pads a list of features into a batch of tensors (dynamic padding: to the longest
in the batch, never to a fixed length); the head maps encoder states to outputs; ``loss`` and
``decode`` read the head's output.
"""

from __future__ import annotations

import math
import reprlib
from dataclasses import dataclass
from typing import Any, ClassVar, Hashable

import torch
from torch import Tensor, nn

from polytask.config import TaskConfig
from polytask.data.records import Record
from polytask.data.unicode import lone_surrogate
from polytask.errors import ConfigError, DataProblem


LOWER_IS_BETTER = frozenset({"mse", "loss"})
# Single texts are cut to max_length * this many characters before tokenizing: far more than any
# real text needs per token, so the kept tokens are the same, without tokenizing megabytes to
# drop them.
MAX_CHARS_PER_TOKEN = 100


def pair_prefixes(tokenizer, text: str, pair: str, max_length: int) -> tuple[str, str]:
    """Prefixes of a long text pair that the tokenizer truncates to the same ids as the whole pair.

    Truncating a long pair whole is quadratic in memory in the ``tokenizers`` library (it builds
    every pairing of the two sides' overflowing windows: 13 GB for a 104 kB + 54 kB pair). Its
    ``longest_first`` rule keeps ``n`` tokens of a side of ``n <= budget / 2`` and the rest of the
    budget for the other side; when both are longer, ``budget // 2`` of each, the odd token going
    to the longer side (the second on a tie). So each side is tokenized alone (linear), and cut a
    margin past what it keeps, the longer side by the larger margin so that it stays the longer:
    the truncated ids are then those of the whole pair.
    """
    budget = max_length - tokenizer.num_special_tokens_to_add(pair=True)
    sides = [tokenizer(t, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]
             for t in (text, pair)]
    n = [len(o) for o in sides]
    if sum(n) <= budget:
        return text, pair
    longer = 0 if n[0] > n[1] else 1
    short = n[1 - longer]
    keep = [0, 0]
    keep[1 - longer] = short if short <= budget // 2 else budget // 2
    keep[longer] = budget - keep[1 - longer]
    out = []
    for i, (t, offsets) in enumerate(zip((text, pair), sides)):
        cut = min(n[i], keep[i] + (16 if i == longer else 8))
        out.append(t if cut == n[i] else t[: offsets[cut - 1][1]])
    return out[0], out[1]


@dataclass
class Example:
    """A validated example: the task's own field names, and where it came from."""

    fields: dict[str, Any]
    source: str  # "file:line", for error messages and prediction output


class Pooler(nn.Module):
    """One vector per example from its positions: the first one (``cls``), the masked mean
    (``mean``), or a learned attention over the positions (``attention``: additive attention
    pooling, Lin et al. 2017, "A Structured Self-Attentive Sentence Embedding", with one head:
    ``softmax(v . tanh(W h_t))`` over the unmasked positions, W of size H x H).

    ``attention`` lets each task's head look at its own positions: on images, where a vision
    backbone's positions are the last feature map's cells, a task about one region (the left
    digit of MultiMNIST) reads that region instead of the global average.
    """

    def __init__(self, mode: str, hidden_size: int | None = None):
        super().__init__()
        self.mode = mode
        if mode == "attention":
            self.proj = nn.Linear(hidden_size, hidden_size)
            self.score = nn.Linear(hidden_size, 1, bias=False)

    def forward(self, hidden: Tensor, mask: Tensor) -> Tensor:  # (B, T, H), (B, T) -> (B, H)
        if self.mode == "cls":
            return hidden[:, 0]
        if self.mode == "attention":
            scores = self.score(torch.tanh(self.proj(hidden))).squeeze(-1)  # (B, T)
            scores = scores.masked_fill(mask == 0, torch.finfo(scores.dtype).min)
            weights = scores.softmax(-1).unsqueeze(-1)  # (B, T, 1)
            return (weights * hidden).sum(1)
        m = mask.unsqueeze(-1).to(hidden.dtype)  # (B, T, 1)
        return (hidden * m).sum(1) / m.sum(1).clamp(min=1.0)


class SequenceHead(nn.Module):
    """Pool -> dropout -> linear: the head of classification, multi-label and regression."""

    def __init__(self, hidden_size: int, n_out: int, pooling: str, dropout: float):
        super().__init__()
        self.pool = Pooler(pooling, hidden_size)
        self.dropout = nn.Dropout(dropout)
        self.out = nn.Linear(hidden_size, n_out)

    def forward(self, hidden: Tensor, mask: Tensor) -> Tensor:  # -> (B, n_out)
        return self.out(self.dropout(self.pool(hidden, mask)))


class Task:
    """Base class with the text-field handling shared by every task type."""

    type_name: ClassVar[str]
    default_metric: ClassVar[str]
    metric_names: ClassVar[tuple[str, ...]] = ()  # what ``metrics`` returns; main_metric is one of them
    text_fields: ClassVar[tuple[str, ...]] = ("text",)
    optional_fields: ClassVar[tuple[str, ...]] = ("text_pair",)
    target_field: ClassVar[str] = "label"
    #: the input kinds this task type can read (polytask.backbones.io): its head must make sense
    #: on what a backbone consuming them produces; ``check`` refuses the others
    reads: ClassVar[frozenset[str]] = frozenset({"tokens"})
    #: how the task reads a non-text input (an image: polytask.preprocess.ImageInput), bound by
    #: :meth:`bind_inputs` when the backbone consumes pixels; None: text fields, tokenized
    inputs: Any = None
    #: whether the head reads the backbone's pyramid (``Features.maps``: dense tasks); ``check``
    #: refuses such a task on an architecture that does not pass it (``Architecture.passes_maps``)
    reads_maps: ClassVar[bool] = False
    #: what one row of the forward pass is called in logs (:meth:`batch_rows`)
    row_unit: ClassVar[str] = "rows"

    def __init__(self, cfg: TaskConfig):
        self.cfg = cfg
        self.name = cfg.name
        self.main_metric = cfg.main_metric or self.default_metric
        self.warnings: list[str] = []  # what ``fit`` found suspicious in the training data
        if self.metric_names and self.main_metric not in self.metric_names:
            raise ConfigError(f"tasks[{cfg.name}].main_metric: {self.main_metric!r} is not a metric of a "
                              f"{self.type_name} task (one of: {', '.join(self.metric_names)})")

    @property
    def higher_is_better(self) -> bool:
        """Direction of the main metric (errors such as MSE are lower-is-better)."""
        return self.main_metric not in LOWER_IS_BETTER

    # -- reading -----------------------------------------------------------------------------
    def bind_inputs(self, inputs: Any) -> None:
        """Read ``inputs.fields`` through ``inputs`` instead of text fields (None: text)."""
        self.inputs = inputs

    @property
    def input_fields(self) -> tuple[str, ...]:
        return self.inputs.fields if self.inputs is not None else self.text_fields

    def column(self, field: str) -> str:
        return self.cfg.columns.get(field, field)

    def parse(self, record: Record, with_target: bool = True) -> tuple[Example | None, list[DataProblem]]:
        """Validate one record; returns the example or the problems found in it."""
        problems: list[DataProblem] = []
        fields: dict[str, Any] = {}
        wanted = list(self.input_fields) + ([self.target_field] if with_target else [])
        for f in wanted:
            col = self.column(f)
            if col not in record.fields:
                avail = ", ".join(sorted(record.fields)) or "none"
                problems.append(self._problem(record, col, f"missing column (available: {avail})"))
                continue
            msg = lone_surrogate(record.fields[col])  # never reaches the tokenizer (a TypeError there)
            if msg:
                value = None
            elif self.inputs is not None and f in self.inputs.fields:
                value, msg = self.inputs.read(record.fields[col], record.file)
            else:
                value, msg = self.check_field(f, record.fields[col])
            if msg:
                problems.append(self._problem(record, col, msg))
            fields[f] = value
        for f in self.optional_fields if self.inputs is None else ():
            col = self.column(f)
            if col in record.fields or f in self.cfg.columns:
                value, msg = self.check_field(f, record.fields.get(col))
                if msg:
                    problems.append(self._problem(record, col, msg))
                fields[f] = value
        if problems:
            return None, problems
        return Example(fields, f"{record.file}:{record.line}"), []

    def check_field(self, field: str, value: Any) -> tuple[Any, str | None]:
        """Normalise one field's value; return (value, problem message or None)."""
        if field in self.text_fields or field in self.optional_fields:
            if not isinstance(value, str):
                return value, f"expected text, got {type(value).__name__} {reprlib.repr(value)}"
            if not value.strip():
                return value, "empty text"
            return value, None
        return self.check_target(value)

    def check_target(self, value: Any) -> tuple[Any, str | None]:
        if value is None or (isinstance(value, float) and math.isnan(value)):
            return value, "missing label"
        if isinstance(value, (dict, list)):
            return value, f"expected a single label, got {reprlib.repr(value)}"
        return str(value), None

    def _problem(self, record: Record, field: str, msg: str) -> DataProblem:
        return DataProblem(record.file, record.line, field, msg)

    # -- vocabulary --------------------------------------------------------------------------
    def fit(self, train: list[Example]) -> None:
        """Build label vocabularies / target statistics from training examples."""

    def check_eval(self, example: Example) -> str | None:
        """A problem with a dev/test example relative to the fitted vocabulary, or None."""
        return None

    def vocab_state(self) -> dict:
        return {}

    def data_summary(self, examples: list[Example], features: list[dict] | None = None) -> str:
        """A line about this task's data for ``check`` and the training log (e.g. extractive QA's
        questions, contexts and windows); empty when the example count says it all."""
        return ""

    def load_vocab_state(self, state: dict) -> None:
        pass

    def tune_on_dev(self, dev_metrics: dict[str, float] | None) -> dict[str, float] | None:
        """Settings chosen on dev at the end of training (the best model's dev metrics), kept in
        :meth:`vocab_state`; what was chosen, or None (the default: nothing is tuned). E.g.
        extractive QA's ``null_threshold: auto``."""
        return None

    # -- tensors -----------------------------------------------------------------------------
    def encode(self, examples: list[Example], tokenizer, max_length: int) -> list[dict]:
        """Tokenize examples (one tokenizer call for all) and attach their targets; with bound
        inputs (images), ``tokenizer`` is their processor and the inputs make the features."""
        if self.inputs is not None:
            feats = self.inputs.encode(examples, tokenizer)
            for feat, ex in zip(feats, examples):
                if self.target_field in ex.fields:
                    feat["labels"] = self.encode_target(ex.fields[self.target_field])
            return feats
        clip = max_length * MAX_CHARS_PER_TOKEN  # a 10 MB line is not tokenized whole to keep 128 tokens
        pairs = [e.fields.get("text_pair") for e in examples]
        texts = [e.fields["text"] if p is not None else e.fields["text"][:clip] for e, p in zip(examples, pairs)]
        for i, pair in enumerate(pairs):
            if pair is not None and max(len(texts[i]), len(pair)) > clip:
                texts[i], pairs[i] = pair_prefixes(tokenizer, texts[i], pair, max_length)
        has_pair = any(p is not None for p in pairs)
        enc = tokenizer(
            texts, pairs if has_pair else None, truncation=True, max_length=max_length
        )
        feats = []
        for i, ex in enumerate(examples):
            feat = {k: enc[k][i] for k in ("input_ids", "token_type_ids") if k in enc}
            if self.target_field in ex.fields:
                feat["labels"] = self.encode_target(ex.fields[self.target_field])
            feats.append(feat)
        return feats

    def encode_target(self, value: Any) -> Any:
        raise NotImplementedError

    def for_training(self, feats: list[dict]) -> None:
        """Mark encoded training features: bound inputs augment them when collated (text: nothing)."""
        for f in feats if self.inputs is not None else ():
            f["augment"] = True

    def collate(self, feats: list[dict], pad_id: int) -> dict[str, Tensor]:
        """Pad to the longest sequence in this batch (bound inputs: their own collation)."""
        if self.inputs is not None:
            batch = self.inputs.collate(feats)
            if "labels" in feats[0]:
                batch["labels"] = self.collate_labels([f["labels"] for f in feats], 0)
            return batch
        width = max(len(f["input_ids"]) for f in feats)
        batch = {
            "input_ids": _pad([f["input_ids"] for f in feats], width, pad_id),
            "attention_mask": _pad([[1] * len(f["input_ids"]) for f in feats], width, 0),
        }
        if "token_type_ids" in feats[0]:
            batch["token_type_ids"] = _pad([f["token_type_ids"] for f in feats], width, 0)
        if "labels" in feats[0]:
            batch["labels"] = self.collate_labels([f["labels"] for f in feats], width)
        return batch

    def collate_labels(self, labels: list, width: int) -> Tensor:
        raise NotImplementedError

    def view_key(self, feature: dict) -> tuple[Hashable, Hashable] | None:
        """``(view, item)`` of an evaluation feature without a target: ``view`` names the
        preprocessing its collation applies (image: resize, crop or squash, size, mean, std) and
        ``item`` the input (the image file or array content). Features with equal keys, of any
        tasks, collate to identical model inputs, and a task collates another task's feature of
        its own ``view`` as its own: ``Predictor.predict_all`` runs the backbone once per distinct
        key. None where there is no such promise (text: keyed by its tokens there; features with
        targets or augmentation)."""
        if self.inputs is None or "labels" in feature:
            return None
        return self.inputs.view_key(feature)

    # -- model side --------------------------------------------------------------------------
    def bind_backbone(self, config: Any) -> None:
        """See the backbone's config before :meth:`make_head` (a dense head needs every stage's channels)."""

    def make_head(self, hidden_size: int) -> nn.Module:
        raise NotImplementedError

    def loss(self, out: Tensor, batch: dict[str, Tensor]) -> Tensor:
        raise NotImplementedError

    def batch_rows(self, feature: dict) -> int:
        """Rows of the forward pass this example becomes: 1 (an extractive QA question: its windows)."""
        return 1

    def max_batch_rows(self, batch_size: int) -> int | None:
        """The most rows one training batch of ``batch_size`` examples may hold (batches stop
        taking examples at it, :func:`polytask.batching.cut`); None: no cap (one row per example)."""
        return None

    def loss_units(self, feature: dict) -> int:
        """How many terms this training example adds to :meth:`loss`'s mean: 1 for a mean over
        examples (the default); a token-mean loss returns its scored tokens. Used to give each
        process its exact share of a global batch's loss (:func:`polytask.devices.shard`)."""
        return 1

    def predict_batch(self, model: nn.Module, batch: dict[str, Tensor]) -> list:
        """Predictions for one batch. Generation tasks override this to decode step by step."""
        out, _ = model(batch, self.name)
        return self.decode(out, batch)

    def decode(self, out: Tensor, batch: dict[str, Tensor]) -> list:
        """User-facing predictions for a batch (labels as strings, scores as floats, tags)."""
        raise NotImplementedError

    def reference(self, example: Example) -> Any:
        return example.fields[self.target_field]

    def metrics(self, preds: list, refs: list) -> dict[str, float]:
        raise NotImplementedError


def _pad(rows: list[list[int]], width: int, value: int) -> Tensor:
    out = torch.full((len(rows), width), value, dtype=torch.long)
    for i, row in enumerate(rows):
        out[i, : len(row)] = torch.tensor(row, dtype=torch.long)
    return out
