"""Each task type: parsing, vocabulary, encoding, collation, head, loss, decoding, metrics."""

import math

import pytest
import torch
from transformers import AutoTokenizer

from polytask.backbones.encoder import resolve_backbone
from polytask.config import TaskConfig
from polytask.data.records import Record
from polytask.tasks import build_task


@pytest.fixture(scope="module")
def tok():
    return AutoTokenizer.from_pretrained(resolve_backbone("minilm"))


def make(type_, **kw):
    return build_task(TaskConfig(name="t", type=type_, **kw))


def parse_all(task, rows):
    out = []
    for i, r in enumerate(rows):
        ex, problems = task.parse(Record(r, "f.jsonl", i + 1))
        assert not problems, problems
        out.append(ex)
    return out


def run_head(task, feats, tok, hidden=8):
    batch = task.collate(feats, tok.pad_token_id)
    torch.manual_seed(0)
    head = task.make_head(hidden)
    states = torch.randn(batch["input_ids"].shape + (hidden,))
    out = head(states, batch["attention_mask"])
    return batch, out


def test_classification_pair_roundtrip(tok):
    task = make("classification", columns={"text": "a", "text_pair": "b", "label": "y"})
    rows = [{"a": "a cat", "b": "a dog", "y": 1}, {"a": "the sun", "b": "is hot today", "y": 0}]
    exs = parse_all(task, rows)
    task.fit(exs)
    assert task.labels == ["0", "1"]
    feats = task.encode(exs, tok, 32)
    assert feats[0]["labels"] == 1 and 1 in feats[1]["token_type_ids"]  # the pair is encoded
    batch, out = run_head(task, feats, tok)
    assert out.shape == (2, 2)
    assert batch["input_ids"].shape[1] == max(len(f["input_ids"]) for f in feats)  # dynamic padding
    loss = task.loss(out, batch)
    assert loss.ndim == 0 and math.isfinite(loss.item())
    assert set(task.decode(out, batch)) <= {"0", "1"}
    m = task.metrics(["1", "0", "1", "1"], ["1", "0", "0", "1"])
    assert m["accuracy"] == 0.75 and m["f1"] == pytest.approx(0.8)


def test_classification_input_problems():
    task = make("classification")
    _, p = task.parse(Record({"text": "  ", "label": "x"}, "f.jsonl", 3))
    assert [str(x) for x in p] == ["f.jsonl:3: field 'text': empty text"]
    _, p = task.parse(Record({"txt": "hi", "label": "x"}, "f.jsonl", 4))
    assert "field 'text': missing column (available: label, txt)" in str(p[0])
    _, p = task.parse(Record({"text": "hi", "label": None}, "f.jsonl", 5))
    assert "field 'label': missing label" in str(p[0])
    task.fit(parse_all(task, [{"text": "a", "label": "x"}]))
    ex = parse_all(task, [{"text": "b", "label": "z"}])[0]
    assert "label 'z' not seen in training" in task.check_eval(ex)


def test_multilabel(tok):
    task = make("multilabel")
    exs = parse_all(task, [{"text": "a b", "label": "x,y"}, {"text": "c", "label": ["z"]}, {"text": "d", "label": []}])
    task.fit(exs)
    assert task.labels == ["x", "y", "z"]
    feats = task.encode(exs, tok, 16)
    assert feats[0]["labels"] == [1.0, 1.0, 0.0] and feats[2]["labels"] == [0.0, 0.0, 0.0]
    batch, out = run_head(task, feats, tok)
    assert task.loss(out, batch).ndim == 0
    big = torch.tensor([[5.0, -5.0, 5.0]])
    assert task.decode(big, {}) == [["x", "z"]]
    m = task.metrics([["x"], ["y"]], [["x"], ["x", "y"]])
    assert m["micro_f1"] == pytest.approx(0.8)  # tp=2 fp=0 fn=1


def test_regression_standardises_and_maps_back(tok):
    task = make("regression", columns={"target": "score"})
    exs = parse_all(task, [{"text": "a", "score": 1.0}, {"text": "b", "score": "3"}])
    task.fit(exs)
    assert task.mean == 2.0 and task.std == pytest.approx(math.sqrt(2))
    feats = task.encode(exs, tok, 16)
    assert feats[0]["labels"] == pytest.approx(-1 / math.sqrt(2))
    out = torch.tensor([[0.0], [1.0]])
    assert task.decode(out, {}) == pytest.approx([2.0, 2.0 + math.sqrt(2)])
    for bad, msg in [(float("nan"), "not a finite number"), ("high", "expected a number"), (None, "expected a number")]:
        _, p = task.parse(Record({"text": "a", "score": bad}, "s.csv", 9))
        assert msg in str(p[0]) and "s.csv:9: field 'score'" in str(p[0])
    m = task.metrics([1.0, 2.0, 3.0], [1.0, 2.0, 4.0])
    assert m["spearman"] == pytest.approx(1.0) and m["mse"] == pytest.approx(1 / 3)
    assert task.higher_is_better and not make("regression", main_metric="mse").higher_is_better


def test_tagging_labels_first_piece_only(tok):
    task = make("tagging")
    words = ["Johanssonville", "visited", "Paris"]
    exs = parse_all(task, [{"tokens": words, "tags": ["B-PER", "O", "B-LOC"]}])
    task.fit(exs)
    assert task.labels[0] == "O"
    feat = task.encode(exs, tok, 32)[0]
    pieces = tok.convert_ids_to_tokens(feat["input_ids"])
    assert len(pieces) > len(words) + 2  # the long name is split into several pieces
    labelled = [(p, task.labels[l]) for p, l in zip(pieces, feat["labels"]) if l != -100]
    assert labelled == [(pieces[1], "B-PER"), ("visited", "O"), ("paris", "B-LOC")]
    batch, out = run_head(task, [feat], tok)
    assert out.shape[:2] == batch["input_ids"].shape
    # decoding maps first pieces back to words: force B-LOC everywhere
    forced = torch.zeros_like(out)
    forced[..., task.labels.index("B-LOC")] = 1.0
    assert task.decode(forced, batch) == [["B-LOC", "B-LOC", "B-LOC"]]


def test_tagging_truncated_words_predicted_O(tok):
    task = make("tagging")
    exs = parse_all(task, [{"tokens": ["a"] * 20, "tags": ["B-X"] * 20}])
    task.fit(exs)
    feat = task.encode(exs, tok, 8)[0]
    batch, out = run_head(task, [feat], tok)
    preds = task.decode(out, batch)[0]
    assert len(preds) == 20 and preds[6:] == ["O"] * 14


def test_tagging_length_mismatch_reported():
    task = make("tagging")
    _, p = task.parse(Record({"tokens": ["a", "b"], "tags": ["O"]}, "x.conll", 12))
    assert str(p[0]) == "x.conll:12: field 'tags': 1 tags for 2 tokens"


def test_tagging_entity_f1():
    task = make("tagging")
    m = task.metrics([["B-PER", "I-PER", "O"]], [["B-PER", "I-PER", "B-LOC"]])
    assert m["precision"] == 1.0 and m["recall"] == 0.5 and m["f1"] == pytest.approx(2 / 3)


@pytest.mark.parametrize("value", [True, False, "abc", None])
def test_regression_rejects_non_numbers_including_booleans(value):
    task = make("regression", columns={"target": "score"})
    ex, problems = task.parse(Record({"text": "a", "score": value}, "f.jsonl", 3))
    assert ex is None and "expected a number" in str(problems[0]) and "f.jsonl:3" in str(problems[0])


def test_a_typo_sized_regression_target_is_warned_about():
    task = make("regression", columns={"target": "score"})
    rows = [{"text": "a", "score": v} for v in [1.0, 2.5, 3.0, 1e30, 4.0, 2.0]]
    examples = [task.parse(Record(r, "s.jsonl", i + 1))[0] for i, r in enumerate(rows)]
    task.fit(examples)
    (warning,) = task.warnings
    assert "s.jsonl:4 (1e+30)" in warning and "flattens every other target" in warning
    task.fit(examples[:3] + examples[4:])
    assert task.warnings == []


def test_huge_texts_encode_like_the_tokenizer_does_without_tokenizing_it_all(tok):
    task = make("classification")
    text, pair = "the quick brown fox jumps " * 4000, "over the lazy dog " * 3000  # 104 kB, 54 kB
    single = task.parse(Record({"text": text, "label": "a"}, "f", 1))[0]
    both = task.parse(Record({"text": text, "text_pair": pair, "label": "a"}, "f", 2))[0]
    task.fit([single])
    assert task.encode([single], tok, 64)[0]["input_ids"] == tok(text, truncation=True, max_length=64)["input_ids"]
    # The reference: the tokenizer itself, on prefixes of the texts. Truncating the whole 104 + 54 kB
    # pair takes the tokenizers library 13 GB (every pairing of both sides' overflowing windows),
    # which killed a test worker; "longest_first" keeps the first tokens of each side and gives the
    # odd token to the longer side, so prefixes that keep more than max_length tokens each and the
    # first side the longer give the ids of the whole texts.
    head, pair_head = text[:4000], pair[:2000]
    assert len(tok(head)["input_ids"]) > len(tok(pair_head)["input_ids"]) > 64
    reference = tok(head, pair_head, truncation=True, max_length=64)["input_ids"]
    assert task.encode([both], tok, 64)[0]["input_ids"] == reference


@pytest.mark.parametrize("max_length", [16, 31, 32])
def test_long_pairs_are_cut_to_prefixes_that_truncate_like_the_whole_pair(tok, monkeypatch, max_length):
    """pair_prefixes on every length relation (a side within half the budget, both over it, ties,
    odd and even budgets): the same ids and token types as the tokenizer on the whole pair."""
    import random

    import polytask.tasks.base as base

    monkeypatch.setattr(base, "MAX_CHARS_PER_TOKEN", 1)  # every pair takes the prefix path
    task, rng = make("classification"), random.Random(max_length)
    words = "the quick brown fox jumps over lazy dog antidisestablishmentarianism ünïcode 42 , .".split()
    for line in range(60):
        a, b = (" ".join(rng.choice(words) for _ in range(rng.randint(1, 60))) for _ in range(2))
        if line % 10 == 0:
            b = a  # a tie
        ex = task.parse(Record({"text": a, "text_pair": b, "label": "a"}, "f", line))[0]
        task.fit([ex])
        mine = task.encode([ex], tok, max_length)[0]
        ref = tok(a, b, truncation=True, max_length=max_length)
        assert mine["input_ids"] == ref["input_ids"], (a, b)
        assert mine["token_type_ids"] == ref["token_type_ids"]


def test_binary_f1_is_of_the_positive_label():
    default, chosen = make("classification"), make("classification", positive_label="a")
    exs = [Record({"text": "x", "label": lab}, "f", i) for i, lab in enumerate("aab")]
    for task in (default, chosen):
        task.fit([task.parse(r)[0] for r in exs])
    refs, preds = ["a", "a", "b", "b"], ["a", "b", "b", "b"]
    assert default.positive_label == "b" and default.metrics(preds, refs)["f1"] == pytest.approx(0.8)
    assert chosen.positive_label == "a" and chosen.metrics(preds, refs)["f1"] == pytest.approx(2 / 3)


@pytest.mark.parametrize("type_", ["tagging", "classification"])
def test_loss_units_split_a_mean_exactly(tok, type_):
    """The units-weighted mean of two slices' losses is the whole batch's loss (how several
    processes share one global batch: polytask.devices.shard)."""
    task = make(type_)
    if type_ == "tagging":
        rows = [{"tokens": ["Johanssonville", "visited", "Paris"], "tags": ["B-PER", "O", "B-LOC"]},
                {"tokens": ["Hi"], "tags": ["O"]},
                {"tokens": ["New", "York", "is", "big", "today"], "tags": ["B-LOC", "I-LOC", "O", "O", "O"]}]
    else:
        rows = [{"text": "good", "label": "pos"}, {"text": "bad", "label": "neg"}, {"text": "fine", "label": "pos"}]
    exs = parse_all(task, rows)
    task.fit(exs)
    feats = task.encode(exs, tok, 32)
    units = [task.loss_units(f) for f in feats]
    assert units == ([3, 1, 5] if type_ == "tagging" else [1, 1, 1])
    batch, out = run_head(task, feats, tok)
    out = out.detach()
    whole = float(task.loss(out, batch))
    parts = [(feats[:1], units[0]), (feats[1:], units[1] + units[2])]
    shared = 0.0
    for part, u in parts:
        b = task.collate(part, tok.pad_token_id)
        width = b["input_ids"].shape[1]
        o = out[[feats.index(f) for f in part]][:, :width] if out.dim() == 3 else out[[feats.index(f) for f in part]]
        shared += u / sum(units) * float(task.loss(o, b))
    assert shared == pytest.approx(whole, rel=1e-6)
