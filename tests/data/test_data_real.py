"""Every real file in ../shared/data reads without problems and with the documented counts."""

from __future__ import annotations

from pathlib import Path

import pytest

from polytask.data import read_records

DATA = Path(__file__).resolve().parents[3] / "shared" / "data"

COUNTS = {  # from ../shared/data/README.md (CoNLL: sentences)
    "sst2": (6920, 872, 1821), "trec": (4952, 500, 500), "cola": (8551, 527, 516),
    "stsb": (5749, 1500, 1379), "mrpc": (3668, 408, 1725), "conll2003": (14041, 3250, 3453),
    "bbc": (1775, 225, 225),
}

pytestmark = pytest.mark.skipif(not DATA.is_dir(),
                                reason=f"real data folder {DATA} not present (../shared/data)")


@pytest.mark.parametrize("name", sorted(COUNTS))
def test_real_counts(name):
    ext = "conll" if name == "conll2003" else "jsonl"
    for split, expected in zip(("train", "dev", "test"), COUNTS[name]):
        records, problems = read_records(DATA / name / f"{split}.{ext}")
        assert problems == [], problems[:3]
        assert len(records) == expected, f"{name}/{split}"


def test_real_fields():
    sst2, _ = read_records(DATA / "sst2" / "dev.jsonl", max_examples=5)
    assert {"text", "label"} <= set(sst2[0].fields)
    conll, _ = read_records(DATA / "conll2003" / "dev.conll", max_examples=5)
    assert len(conll) == 5
    assert all(len(r.fields["tokens"]) == len(r.fields["tags"]) for r in conll)
    assert all(t == "O" or t[:2] in ("B-", "I-") for r in conll for t in r.fields["tags"])
