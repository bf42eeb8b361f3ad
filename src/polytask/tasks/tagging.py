"""Token tagging with IOB tags (NER on CoNLL-2003 column files).

Fields: ``tokens`` (list of words) and ``tags`` (one tag per word). Words are split into word
pieces; the tag is predicted on each word's first piece and the other pieces are ignored in
the loss (label -100), the usual alignment. Words cut off by ``max_length`` are predicted "O".
Metrics: entity-level precision, recall and F1 with seqeval semantics (an entity counts only
if its type and both boundaries match). Default main metric: f1.
"""

from __future__ import annotations

import reprlib
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from polytask import metrics as M
from polytask.tasks.base import Example, Task

IGNORE = -100


class TokenHead(nn.Module):
    def __init__(self, hidden_size: int, n_tags: int, dropout: float):
        super().__init__()
        self.dropout = nn.Dropout(dropout)
        self.out = nn.Linear(hidden_size, n_tags)

    def forward(self, hidden: Tensor, mask: Tensor) -> Tensor:  # (B, T, H) -> (B, T, C)
        return self.out(self.dropout(hidden))


class TaggingTask(Task):
    type_name = "tagging"
    default_metric = "f1"
    metric_names = ("f1", "precision", "recall")
    text_fields = ("tokens",)
    optional_fields = ()
    target_field = "tags"

    def __init__(self, cfg):
        super().__init__(cfg)
        self.labels: list[str] = list(cfg.labels) if cfg.labels else []

    def check_field(self, field: str, value: Any) -> tuple[Any, str | None]:
        if isinstance(value, str):  # "EU rejects German call" for predict from the command line
            value = value.split()
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            return value, f"expected a list of strings, got {reprlib.repr(value)}"
        if not value:
            return value, "empty sentence"
        return value, None

    def parse(self, record, with_target: bool = True):
        example, problems = super().parse(record, with_target)
        if example and with_target and len(example.fields["tokens"]) != len(example.fields["tags"]):
            n, m = len(example.fields["tokens"]), len(example.fields["tags"])
            return None, [self._problem(record, self.column("tags"), f"{m} tags for {n} tokens")]
        return example, problems

    def fit(self, train: list[Example]) -> None:
        if not self.cfg.labels:
            found = {t for e in train for t in e.fields["tags"]}
            # "O" first so that index 0 is the neutral tag.
            self.labels = sorted(found, key=lambda t: (t != "O", t[2:], t))

    def check_eval(self, example: Example) -> str | None:
        unknown = sorted({t for t in example.fields["tags"] if t not in self.labels})
        return f"tags {unknown} not seen in training" if unknown else None

    def vocab_state(self) -> dict:
        return {"labels": self.labels}

    def load_vocab_state(self, state: dict) -> None:
        self.labels = list(state["labels"])

    def encode(self, examples: list[Example], tokenizer, max_length: int) -> list[dict]:
        words = [e.fields["tokens"] for e in examples]
        enc = tokenizer(words, is_split_into_words=True, truncation=True, max_length=max_length)
        feats = []
        for i, ex in enumerate(examples):
            word_ids = enc.word_ids(i)
            first = [j for j, w in enumerate(word_ids) if w is not None and (j == 0 or word_ids[j - 1] != w)]
            feat = {k: enc[k][i] for k in ("input_ids", "token_type_ids") if k in enc}
            feat["first_piece"] = first  # position of each kept word's first piece
            feat["n_words"] = len(ex.fields["tokens"])
            if "tags" in ex.fields:
                tag_ids = [IGNORE] * len(word_ids)
                for j in first:
                    tag_ids[j] = self.labels.index(ex.fields["tags"][word_ids[j]])
                feat["labels"] = tag_ids
            feats.append(feat)
        return feats

    def collate(self, feats: list[dict], pad_id: int) -> dict[str, Tensor]:
        batch = super().collate(feats, pad_id)
        width = batch["input_ids"].shape[1]
        # (B, T) position -> word index, -1 elsewhere; used to map predictions back to words.
        word_pos = torch.full((len(feats), width), -1, dtype=torch.long)
        for i, f in enumerate(feats):
            for w, j in enumerate(f["first_piece"]):
                word_pos[i, j] = w
        batch["word_pos"] = word_pos
        batch["n_words"] = torch.tensor([f["n_words"] for f in feats], dtype=torch.long)
        return batch

    def collate_labels(self, labels: list, width: int) -> Tensor:
        out = torch.full((len(labels), width), IGNORE, dtype=torch.long)
        for i, row in enumerate(labels):
            out[i, : len(row)] = torch.tensor(row, dtype=torch.long)
        return out

    def make_head(self, hidden_size: int) -> nn.Module:
        return TokenHead(hidden_size, len(self.labels), self.cfg.head_dropout)

    def loss(self, out: Tensor, batch: dict[str, Tensor]) -> Tensor:
        return F.cross_entropy(out.flatten(0, 1), batch["labels"].flatten(), ignore_index=IGNORE)

    def loss_units(self, feature: dict) -> int:
        """The mean is over tagged word pieces: this example's first pieces of kept words."""
        return sum(1 for label in feature["labels"] if label != IGNORE)

    def decode(self, out: Tensor, batch: dict[str, Tensor]) -> list[list[str]]:
        best = out.argmax(-1)  # (B, T)
        preds = []
        for i in range(best.shape[0]):
            tags = ["O"] * int(batch["n_words"][i])
            for j in (batch["word_pos"][i] >= 0).nonzero().flatten().tolist():
                tags[int(batch["word_pos"][i, j])] = self.labels[int(best[i, j])]
            preds.append(tags)
        return preds

    def metrics(self, preds: list, refs: list) -> dict[str, float]:
        return M.entity_prf(refs, preds)
