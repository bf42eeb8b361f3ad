"""The demo data must be reproducible, split-disjoint in randomness, balanced and well-formed."""

from __future__ import annotations

from collections import Counter

import pytest

from polytask.data import SYNTHETIC_TASKS, synthetic_records


@pytest.mark.parametrize("task", SYNTHETIC_TASKS)
def test_same_seed_same_records_and_splits_differ(task):
    a = synthetic_records(task, "train", 50, seed=3)
    assert a == synthetic_records(task, "train", 50, seed=3)
    assert a != synthetic_records(task, "dev", 50, seed=3)
    assert a != synthetic_records(task, "train", 50, seed=4)
    assert [r.line for r in a] == list(range(1, 51))
    assert a[0].file == f"synthetic:{task}:train"


def test_label_balance():
    sentiment = Counter(r.fields["label"] for r in synthetic_records("sentiment", "train", 400))
    assert sentiment == {"positive": 200, "negative": 200}
    topic = Counter(r.fields["label"] for r in synthetic_records("topic", "train", 400))
    assert topic == {"sports": 100, "tech": 100, "food": 100, "travel": 100}


def test_sentiment_has_negation_both_ways():
    records = synthetic_records("sentiment", "train", 300)
    negated = Counter(r.fields["label"] for r in records if " not " in r.fields["text"])
    assert negated["positive"] > 10 and negated["negative"] > 10


def test_similarity_fields_and_range():
    records = synthetic_records("similarity", "test", 200)
    scores = [r.fields["score"] for r in records]
    assert all(set(r.fields) == {"text_a", "text_b", "score"} for r in records)
    assert all(0.0 <= s <= 5.0 for s in scores)
    assert min(scores) < 1.0 and max(scores) > 4.0


def test_entities_are_aligned_iob2():
    for record in synthetic_records("entities", "train", 100):
        tokens, tags = record.fields["tokens"], record.fields["tags"]
        assert len(tokens) == len(tags)
        for prev, tag in zip(["O"] + tags, tags):
            if tag.startswith("I-"):
                assert prev[2:] == tag[2:] and prev != "O"
    tags = {t for r in synthetic_records("entities", "train", 100) for t in r.fields["tags"]}
    assert {"B-PER", "I-PER", "B-LOC", "B-ORG", "I-ORG", "O"} <= tags


def test_unknown_task_or_split():
    with pytest.raises(ValueError, match="known"):
        synthetic_records("nope", "train", 1)
    with pytest.raises(ValueError, match="split"):
        synthetic_records("topic", "validation", 1)
