"""Each reader on small real files: good input, and every kind of bad input it must report."""

from __future__ import annotations

import pytest

from polytask.data import read_records
from polytask.data.hf import read_hf
from polytask.errors import DataError


def write(path, text, encoding="utf-8"):
    path.write_bytes(text.encode(encoding))
    return path


def test_jsonl_good(tmp_path):
    f = write(tmp_path / "a.jsonl", '{"text": "hi", "label": 1}\n\n{"text": "yo", "label": 0}\n')
    records, problems = read_records(f)
    assert problems == []
    assert [r.fields["text"] for r in records] == ["hi", "yo"]
    assert [r.line for r in records] == [1, 3]
    assert records[0].file == str(f)


def test_json_extension_is_json_lines(tmp_path):
    f = write(tmp_path / "a.json", '{"a": 1}\n{"a": 2}\n')
    records, problems = read_records(f)
    assert len(records) == 2 and problems == []


def test_jsonl_bad_lines_are_all_reported(tmp_path):
    f = write(tmp_path / "a.jsonl", '{"a": 1}\n{"a": \n[1, 2]\n{"a": 4}\n"text"\n')
    records, problems = read_records(f)
    assert [r.fields["a"] for r in records] == [1, 4]
    assert [p.line for p in problems] == [2, 3, 5]
    assert "invalid JSON" in problems[0].message
    assert "got list" in problems[1].message and "got str" in problems[2].message
    assert all(p.file == str(f) for p in problems)
    assert "a.jsonl:2" in str(DataError(problems))


def test_csv_good_with_quoted_newline(tmp_path):
    text = 'text,label\n"one, two",pos\n"multi\nline",neg\nlast,pos\n'
    records, problems = read_records(write(tmp_path / "a.csv", text))
    assert problems == []
    assert records[0].fields == {"text": "one, two", "label": "pos"}
    assert records[1].fields["text"] == "multi\nline"
    assert [r.line for r in records] == [2, 3, 5]


def test_csv_wrong_field_count(tmp_path):
    f = write(tmp_path / "a.csv", "text,label\nok,1\ntoo,many,fields\nshort\nfine,0\n")
    records, problems = read_records(f)
    assert len(records) == 2
    assert [p.line for p in problems] == [3, 4]
    assert "expected 2 fields" in problems[0].message and "got 3" in problems[0].message


def test_csv_empty_and_bad_header(tmp_path):
    _, problems = read_records(write(tmp_path / "e.csv", ""))
    assert problems and "header" in problems[0].message
    _, problems = read_records(write(tmp_path / "d.csv", "a,a\n1,2\n"))
    assert problems[0].line == 1 and problems[0].field == "a"


def test_tsv_keeps_bare_quotes(tmp_path):
    f = write(tmp_path / "a.tsv", 'text\tlabel\nhe said "hi\t1\nbye\t0\n')
    records, problems = read_records(f)
    assert problems == []
    assert records[0].fields == {"text": 'he said "hi', "label": "1"}
    assert len(records) == 2


def test_custom_delimiter(tmp_path):
    records, problems = read_records(write(tmp_path / "a.csv", "a;b\n1;2\n"), delimiter=";")
    assert problems == [] and records[0].fields == {"a": "1", "b": "2"}


CONLL = "-DOCSTART- -X- O\n\nEU NNP B-ORG\nrejects VBZ O\n\nPeter NNP B-PER\nBlackburn NNP I-PER\n"


def test_conll_good(tmp_path):
    records, problems = read_records(write(tmp_path / "a.conll", CONLL))
    assert problems == []
    assert [r.fields["tokens"] for r in records] == [["EU", "rejects"], ["Peter", "Blackburn"]]
    assert records[1].fields["tags"] == ["B-PER", "I-PER"]
    assert records[0].fields["columns"][1] == ["NNP", "VBZ"]
    assert [r.line for r in records] == [3, 6]


def test_conll_tag_column_and_token_only(tmp_path):
    records, _ = read_records(write(tmp_path / "a.txt", CONLL), tag_column=1)
    assert records[0].fields["tags"] == ["NNP", "VBZ"]
    records, problems = read_records(write(tmp_path / "b.iob", "a\nb\n\nc\n"))
    assert problems == [] and "tags" not in records[0].fields
    _, problems = read_records(write(tmp_path / "c.conll", CONLL), tag_column=5)
    assert "out of range" in problems[0].message


def test_conll_wrong_column_count(tmp_path):
    f = write(tmp_path / "a.conll", "EU NNP B-ORG\nrejects O\n\nPeter NNP B-PER\n")
    records, problems = read_records(f)
    assert [r.fields["tokens"] for r in records] == [["Peter"]]  # the bad sentence is skipped
    assert len(problems) == 1 and problems[0].line == 2
    assert "expected 3 columns, got 2" in problems[0].message


@pytest.mark.parametrize("name", ["missing.jsonl", "missing.csv", "missing.tsv", "missing.conll"])
def test_missing_file(tmp_path, name):
    path = tmp_path / name
    records, problems = read_records(path)
    assert records == []
    assert problems[0].file == str(path) and problems[0].line is None
    assert "file not found" in problems[0].message


def test_unknown_format(tmp_path):
    _, problems = read_records(tmp_path / "a.parquet")
    assert "format" in problems[0].message
    _, problems = read_records(tmp_path / "a.jsonl", fmt="xml")
    assert "unknown format 'xml'" in problems[0].message


@pytest.mark.parametrize("name", ["a.jsonl", "a.csv", "a.conll"])
def test_latin1_read_as_utf8(tmp_path, name):
    body = {"a.jsonl": '{"t": "ok"}\n{"t": "café"}\n', "a.csv": "t\nok\ncafé\n",
            "a.conll": "ok O\n\ncafé O\n"}[name]
    f = write(tmp_path / name, body, encoding="latin-1")
    records, problems = read_records(f)
    assert records == [] and len(problems) == 1
    assert problems[0].line == (3 if name != "a.jsonl" else 2)
    assert "not valid utf-8" in problems[0].message and "0xe9" in problems[0].message
    records, problems = read_records(f, encoding="latin-1")
    assert problems == [] and len(records) == 2


def test_utf8_bom_is_ignored(tmp_path):
    f = tmp_path / "a.csv"
    f.write_bytes(b"\xef\xbb\xbftext,label\nx,1\n")
    records, _ = read_records(f)
    assert records[0].fields == {"text": "x", "label": "1"}


@pytest.mark.parametrize("name,bad,key", [
    ("a.jsonl", "[1]", "i"), ("a.csv", "1,2", "i"), ("a.conll", "x y z", "tokens")])
def test_max_examples_keeps_first_valid(tmp_path, name, bad, key):
    """Item 1 is invalid, so the first three valid items are 0, 2 and 3."""
    item = {"a.jsonl": '{{"i": "{}"}}\n', "a.csv": "{}\n", "a.conll": "{} O\n\n"}[name]
    items = [item.format(i) for i in range(8)]
    items[1] = bad + "\n\n"
    header = "i\n" if name == "a.csv" else ""
    records, problems = read_records(write(tmp_path / name, header + "".join(items)),
                                     max_examples=3)
    values = [r.fields[key] for r in records]
    assert values in (["0", "2", "3"], [["0"], ["2"], ["3"]])
    assert len(problems) == 1


def test_hf_local_json_builder(tmp_path, monkeypatch):
    datasets = pytest.importorskip("datasets")
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "cache")  # not ~/.cache
    f = write(tmp_path / "d.jsonl", '{"text": "a", "label": 0}\n{"text": "b", "label": 1}\n')
    records, problems = read_records("json", "hf", split="train", data_files=str(f),
                                     max_examples=1)
    assert problems == []
    assert len(records) == 1 and records[0].fields == {"text": "a", "label": 0}
    assert records[0].file == "hf:json:train" and records[0].line == 1


def test_hf_error_becomes_problem(tmp_path):
    records, problems = read_hf("json", "train", data_files=str(tmp_path / "none.jsonl"),
                                cache_dir=str(tmp_path / "cache"))
    assert records == [] and len(problems) == 1
    assert problems[0].file == "hf:json:train" and "json" in problems[0].message
