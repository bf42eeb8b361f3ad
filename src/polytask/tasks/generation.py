"""Text-to-text tasks for a decoder LLM: a prompt in, generated text out (type ``generation``).

Every task is cast as "prompt -> target text", as in T5 (Raffel et al., "Exploring the Limits
of Transfer Learning with a Unified Text-to-Text Transformer", JMLR 2020) and instruction-style
multi-task fine-tuning (Wei et al., "Finetuned Language Models Are Zero-Shot Learners" (FLAN),
ICLR 2022; Sanh et al., "Multitask Prompted Training Enables Zero-Shot Task Generalization"
(T0), ICLR 2022). Use it with ``model.kind: causal_lm`` and ``architecture: causal_lm``.

Configuration (``tasks[i]``):
    prompt: a ``str.format`` template over the record's fields (e.g. ``"Summarize:\\n{text}\\n"``;
        default ``"{text}"``); every field it names is a required text field of the task.
    target / columns.target: the column holding the target text.
    chat_template: wrap the prompt as a user turn of the tokenizer's chat template (when it has
        one) and let the answer be the assistant turn (default true); ``system`` sets the system
        message (default: the template's own, e.g. SmolLM2's ~20-token one).
    max_new_tokens, num_beams: decoding (greedy for 1 beam; beam search, Graves 2012 / Sutskever
        et al. 2014, otherwise); training targets are cut to ``max_new_tokens`` tokens.
    labels: cast a classification task as generation: the generated text is parsed against
        this label set (given, or every distinct training target when ``main_metric`` is
        ``accuracy``/``exact_match``).
    packing: pack several training examples into one sequence (see :mod:`polytask.packing`).

Sequences: ``prompt tokens + target tokens + EOS``; the loss is the cross-entropy of the
target tokens (and EOS) only, averaged over those tokens: prompt and padding positions are
masked with -100. A target cut at ``max_new_tokens`` gets no EOS. Prompts are budgeted
``model.max_length - max_new_tokens - 1`` tokens in training and prediction alike; a longer
prompt has its longest field shortened (never the template's own words).

Metrics: free text -> ROUGE-1/2/L F-measure (Lin, 2004; main metric ``rougeL``); a label set
-> ``accuracy`` (the parsed label is the reference), ``exact_match`` (the generated text
itself, up to case, whitespace and surrounding punctuation, is the reference) and ``macro_f1``.
"""

from __future__ import annotations

import re
import string
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from polytask import metrics as M
from polytask.errors import ConfigError, PolytaskError
from polytask.packing import layout, segment_tensors
from polytask.tasks.base import Example, Task

IGNORE = -100
_MARK = "\u2063POLYTASK_PROMPT\u2063"  # a placeholder that no chat template alters
LABEL_METRICS = ("accuracy", "exact_match", "macro_f1")


class Generated(str):
    """A prediction: the parsed label (or the generated text), with the raw text in ``.text``."""

    text: str

    def __new__(cls, value: str, text: str | None = None):
        obj = super().__new__(cls, value)
        obj.text = value if text is None else text
        return obj


class LogitsHead(nn.Module):
    """The head of a generation task: the architecture already returns token logits."""

    def forward(self, hidden: Tensor, mask: Tensor) -> Tensor:
        return hidden


def normalize(text: str) -> str:
    """Lower case, single spaces, no surrounding whitespace or punctuation."""
    return " ".join(text.lower().split()).strip(string.punctuation + " ")


class GenerationTask(Task):
    type_name = "generation"
    default_metric = "rougeL"
    optional_fields = ()
    target_field = "target"

    def __init__(self, cfg):
        super().__init__(cfg)
        self.template = cfg.prompt if cfg.prompt is not None else "{text}"
        try:
            names = [f for _, f, _, _ in string.Formatter().parse(self.template) if f is not None]
        except ValueError as exc:
            raise ConfigError(f"tasks[{cfg.name}].prompt: not a valid format string: {exc}") from None
        if any(n == "" or n.isdigit() for n in names):
            raise ConfigError(f"tasks[{cfg.name}].prompt: use named fields like {{text}}, not {{}} or {{0}}")
        self.text_fields = tuple(dict.fromkeys(n.split(".")[0].split("[")[0] for n in names))
        self.labels: list[str] = list(cfg.labels) if cfg.labels else []
        self.classify = cfg.labels is not None or cfg.main_metric in ("accuracy", "exact_match")
        if not cfg.main_metric:
            self.main_metric = "accuracy" if self.classify else "rougeL"
        known = LABEL_METRICS if self.classify else ("rouge1", "rouge2", "rougeL")
        if self.main_metric not in known:
            raise ConfigError(f"tasks[{cfg.name}].main_metric: {self.main_metric!r} is not one of {list(known)}")
        self.tokenizer = None
        self.max_length: int | None = None
        self._wrap: tuple[str, str] | None = None

    # -- reading -----------------------------------------------------------------------------
    def column(self, field: str) -> str:
        if field == self.target_field and self.cfg.target:
            return self.cfg.target
        return super().column(field)

    def check_target(self, value: Any) -> tuple[Any, str | None]:
        value, msg = super().check_target(value)
        if msg is None and not str(value).strip():
            return value, "empty target text"
        return value, msg

    def fit(self, train: list[Example]) -> None:
        if self.classify and not self.cfg.labels:
            self.labels = sorted({e.fields["target"] for e in train})

    def check_eval(self, example: Example) -> str | None:
        if self.classify and example.fields["target"] not in self.labels:
            return f"label {example.fields['target']!r} is not in the label set {self.labels}"
        return None

    def vocab_state(self) -> dict:
        return {"labels": self.labels} if self.classify else {}

    def load_vocab_state(self, state: dict) -> None:
        if "labels" in state:
            self.labels = list(state["labels"])

    # -- prompts -----------------------------------------------------------------------------
    def render(self, fields: dict[str, Any]) -> str:
        """The prompt text for an example's fields, inside the chat template when used."""
        prefix, suffix = self._wrapping()
        return prefix + self.template.format(**fields) + suffix

    def _wrapping(self) -> tuple[str, str]:
        if self._wrap is None:
            tok = self.tokenizer
            self._wrap = ("", "")
            if self.cfg.chat_template and getattr(tok, "chat_template", None):
                system = [] if self.cfg.system is None else [{"role": "system", "content": self.cfg.system}]
                text = tok.apply_chat_template(system + [{"role": "user", "content": _MARK}], tokenize=False,
                                               add_generation_prompt=True)
                if text.count(_MARK) != 1:
                    raise ConfigError(f"tasks[{self.name}].chat_template: the tokenizer's chat template does not "
                                      "keep the user message verbatim; set chat_template: false")
                prefix, suffix = text.split(_MARK)
                self._wrap = (prefix, suffix)
        return self._wrap

    def _uses_template(self) -> bool:
        return self._wrapping() != ("", "")

    def _tokenize(self, texts: list[str]) -> list[list[int]]:
        # the chat template writes its own special tokens; otherwise the tokenizer's convention (BOS)
        return self.tokenizer(texts, add_special_tokens=not self._uses_template())["input_ids"]

    def prompt_budget(self) -> int:
        budget = self.max_length - self.cfg.max_new_tokens - 1
        if budget < 8:
            raise ConfigError(f"tasks[{self.name}]: model.max_length={self.max_length} leaves no room for a prompt "
                              f"next to max_new_tokens={self.cfg.max_new_tokens}")
        return budget

    def prompt_ids(self, examples: list[Example]) -> list[list[int]]:
        """Token ids of each prompt, over-long ones shortened to :meth:`prompt_budget`."""
        budget = self.prompt_budget()
        ids = self._tokenize([self.render(e.fields) for e in examples])
        for i, e in enumerate(examples):
            if len(ids[i]) > budget:
                ids[i] = self._shorten(e.fields, budget)
        return ids

    def _shorten(self, fields: dict[str, Any], budget: int) -> list[int]:
        """Cut the longest prompt field (by tokens) until the rendered prompt fits."""
        fields = dict(fields)
        ids = self._tokenize([self.render(fields)])[0]
        for attempt in range(4):
            excess = len(ids) - budget
            if excess <= 0:
                return ids
            name = max(self.text_fields, key=lambda f: len(str(fields[f])))
            piece = self.tokenizer(str(fields[name]), add_special_tokens=False)["input_ids"]
            keep = max(0, len(piece) - excess - 2 * attempt)  # re-tokenizing may merge differently
            fields[name] = self.tokenizer.decode(piece[:keep]) + " ..."
            ids = self._tokenize([self.render(fields)])[0]
        return ids[:budget]  # last resort (a template longer than the budget)

    # -- tensors -----------------------------------------------------------------------------
    def encode(self, examples: list[Example], tokenizer, max_length: int) -> list[dict]:
        """Features: ``input_ids`` (prompt + target + EOS), ``prompt_len``, ``target_ids``."""
        if self.tokenizer is not tokenizer:
            self.tokenizer, self._wrap = tokenizer, None
        self.max_length = max_length
        prompts = self.prompt_ids(examples)
        with_target = [e for e in examples if self.target_field in e.fields]
        targets = iter(self.tokenizer([str(e.fields["target"]) for e in with_target],
                                      add_special_tokens=False)["input_ids"] if with_target else [])
        eos = tokenizer.eos_token_id
        feats = []
        for ex, prompt in zip(examples, prompts):
            feat = {"input_ids": list(prompt), "prompt_len": len(prompt)}
            if self.target_field in ex.fields:
                target = next(targets)
                if len(target) >= self.cfg.max_new_tokens or eos is None:
                    target = target[: self.cfg.max_new_tokens]
                else:
                    target = target + [eos]
                feat["input_ids"] = feat["input_ids"] + target
                feat["target_ids"] = target
            feats.append(feat)
        return feats

    def collate(self, feats: list[dict], pad_id: int) -> dict[str, Tensor]:
        """Right-padded rows, or packed rows (``packing: true``, training features only).

        ``labels`` (R, W) holds next-token targets: ``labels[r, j]`` is the token that position
        j must predict, -100 where nothing is scored (prompt, the last token, padding). The
        examples' places are ``example_row``/``example_start``/``prompt_len`` (B,), so that
        prediction can read each prompt back.
        """
        lengths = [len(f["input_ids"]) for f in feats]
        has_targets = "target_ids" in feats[0]
        if self.cfg.packing and has_targets and len(feats) > 1:
            rows, where = layout(lengths, max(self.max_length or 0, max(lengths)))
        else:
            rows, where = [[i] for i in range(len(feats))], [(i, 0) for i in range(len(feats))]
        width = max(sum(lengths[i] for i in r) for r in rows)
        input_ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
        attention = torch.zeros((len(rows), width), dtype=torch.long)
        labels = torch.full((len(rows), width), IGNORE, dtype=torch.long)
        for f, n, (r, s) in zip(feats, lengths, where):
            ids = torch.tensor(f["input_ids"], dtype=torch.long)
            input_ids[r, s:s + n] = ids
            attention[r, s:s + n] = 1
            if has_targets and f.get("target_ids"):
                p = max(f["prompt_len"], 1)  # a first token with no prompt before it is not predicted
                labels[r, s + p - 1:s + n - 1] = ids[p:]
        batch = {"input_ids": input_ids, "attention_mask": attention,
                 "example_row": torch.tensor([w[0] for w in where]),
                 "example_start": torch.tensor([w[1] for w in where]),
                 "prompt_len": torch.tensor([f["prompt_len"] for f in feats])}
        if has_targets:
            batch["labels"] = labels
        if len(rows) < len(feats):  # packed: per-example segments and positions
            batch["segment_ids"], batch["position_ids"] = segment_tensors(lengths, where, len(rows), width)
        return batch

    def prompts(self, batch: dict[str, Tensor], pad_id: int) -> dict[str, Tensor]:
        """The batch's prompts alone, left-padded (for decoding), in example order."""
        rows = [batch["input_ids"][r, s:s + p] for r, s, p in
                zip(batch["example_row"].tolist(), batch["example_start"].tolist(), batch["prompt_len"].tolist())]
        width = max(len(x) for x in rows)
        ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, x in enumerate(rows):
            ids[i, width - len(x):] = x
            mask[i, width - len(x):] = 1
        return {"input_ids": ids, "attention_mask": mask}

    # -- model side --------------------------------------------------------------------------
    def make_head(self, hidden_size: int) -> nn.Module:
        return LogitsHead()

    def loss(self, out: Tensor, batch: dict[str, Tensor]) -> Tensor:
        """Mean cross-entropy over the scored target tokens. ``out`` is (N, V) logits of the
        scored positions in row-major order, or (R, W, V) logits of every position."""
        labels = batch["labels"]
        scored = labels != IGNORE
        if out.dim() == 3:
            out = out[scored]
        return F.cross_entropy(out.float(), labels[scored])

    def loss_units(self, feature: dict) -> int:
        """The mean is over scored target tokens: every token after the prompt (the first token
        of a prompt-less example is not predicted), as :meth:`collate` labels them."""
        if not feature.get("target_ids"):
            return 0
        return len(feature["input_ids"]) - max(feature["prompt_len"], 1)

    def predict_batch(self, model: nn.Module, batch: dict[str, Tensor]) -> list:
        arch = getattr(model, "arch", model)
        if not hasattr(arch, "generate"):
            raise PolytaskError(f"task '{self.name}' (generation) needs an architecture that generates "
                                f"(architecture: causal_lm), not {type(arch).__name__}")
        tok = self.tokenizer
        pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
        prompts = self.prompts(batch, pad)
        new = arch.generate(prompts, self.name, max_new_tokens=self.cfg.max_new_tokens,
                            num_beams=self.cfg.num_beams, eos_token_id=tok.eos_token_id, pad_token_id=pad)
        return [self.to_prediction(self.decode_tokens(row)) for row in new.tolist()]

    def decode_tokens(self, ids: list[int]) -> str:
        eos = self.tokenizer.eos_token_id
        if eos is not None and eos in ids:
            ids = ids[: ids.index(eos)]
        return self.tokenizer.decode(ids, skip_special_tokens=True).strip()

    def to_prediction(self, text: str) -> str:
        """The user-facing prediction: the parsed label for a label set, else the text."""
        if not self.classify:
            return text
        label = self.parse_label(text)
        return Generated(text if label is None else label, text)

    def parse_label(self, text: str) -> str | None:
        """The label the generated text names: an exact (normalised) match, else the label
        mentioned first as a whole word, else the label that starts a word first ("Sports." ->
        sport, "technology" -> tech); longest label on ties; else None."""
        norm = normalize(text)
        by_norm = {normalize(lab): lab for lab in self.labels}
        if norm in by_norm:
            return by_norm[norm]
        for end in (r"(?!\w)", ""):  # whole words first, then word prefixes
            found = []
            for key, lab in by_norm.items():
                m = re.search(r"(?<!\w)" + re.escape(key) + end, norm) if key else None
                if m:
                    found.append((m.start(), -len(key), lab))
            if found:
                return min(found)[2]
        return None

    def decode(self, out: Tensor, batch: dict[str, Tensor]) -> list:
        raise PolytaskError("generation tasks predict by decoding; use predict_batch")

    def reference(self, example: Example) -> Any:
        return str(example.fields["target"])

    def metrics(self, preds: list, refs: list) -> dict[str, float]:
        if not self.classify:
            return M.rouge(refs, [str(p) for p in preds])
        texts = [getattr(p, "text", p) for p in preds]
        parsed = [self.parse_label(str(t)) or "" for t in texts]
        return {
            "accuracy": M.accuracy(refs, parsed),
            "exact_match": sum(normalize(str(t)) == normalize(r) for t, r in zip(texts, refs)) / len(refs),
            "macro_f1": M.macro_f1(refs, parsed),
        }
