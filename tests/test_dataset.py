"""Bad input is reported before training, all at once, with file, line and field."""

import json

import pytest

from polytask.config import from_dict
from polytask.dataset import prepare
from polytask.errors import DataError


def write(path, lines):
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path.name


def test_every_problem_is_collected_with_its_location(tmp_path):
    j = lambda o: json.dumps(o)  # noqa: E731
    write(tmp_path / "cls_train.jsonl", [j({"text": "good", "label": "pos"}), "{not json",
                                         j({"text": "", "label": "neg"}), j({"label": "neg"})])
    write(tmp_path / "cls_dev.jsonl", [j({"text": "fine", "label": "pos"}), j({"text": "meh", "label": "neutral"})])
    write(tmp_path / "reg_train.csv", ["sentence,score", "a,1.0", "b,nan", "c,2.5,extra"])
    write(tmp_path / "ner_train.conll", ["EU B-ORG", "rejects O", "", "Peter B-PER extra", "Blackburn I-PER"])
    cfg = from_dict({
        "data_dir": str(tmp_path),
        "tasks": [
            {"name": "cls", "type": "classification", "data": {"train": "cls_train.jsonl", "dev": "cls_dev.jsonl"}},
            {"name": "reg", "type": "regression", "data": {"train": "reg_train.csv"},
             "columns": {"text": "sentence", "target": "score"}},
            {"name": "ner", "type": "tagging", "data": {"train": "ner_train.conll"}},
        ],
    })
    with pytest.raises(DataError) as info:
        prepare(cfg)
    msg = str(info.value)
    expected = [
        "cls_train.jsonl:2:",  # malformed JSON line
        "cls_train.jsonl:3: field 'text': empty text",
        "cls_train.jsonl:4: field 'text': missing column",
        "cls_dev.jsonl:2: field 'label': label 'neutral' not seen in training",
        "reg_train.csv:3: field 'score': target is not a finite number",
        "reg_train.csv:4:",  # wrong number of CSV fields
        "ner_train.conll:4:",  # wrong number of CoNLL columns
    ]
    for part in expected:
        assert part in msg, f"{part!r} not in:\n{msg}"
    assert len(info.value.problems) == len(expected)


def test_missing_file_names_the_config_key(tmp_path):
    cfg = from_dict({"data_dir": str(tmp_path),
                     "tasks": [{"name": "x", "type": "classification", "data": {"train": "nope.jsonl"}}]})
    with pytest.raises(DataError, match=r"nope.jsonl: file not found, configured at tasks\[x\].data.train"):
        prepare(cfg)


def test_task_without_training_data(tmp_path):
    (tmp_path / "empty.jsonl").write_text("\n")
    cfg = from_dict({"data_dir": str(tmp_path),
                     "tasks": [{"name": "x", "type": "classification", "data": {"train": "empty.jsonl"}},
                               {"name": "y", "type": "classification"}]})
    with pytest.raises(DataError) as info:
        prepare(cfg)
    assert "task 'x' has no training examples" in str(info.value)
    assert "field 'data.train': no training data configured" in str(info.value)


def test_good_data_prepares(tmp_path):
    write(tmp_path / "t.jsonl", [json.dumps({"text": f"t{i}", "label": str(i % 2)}) for i in range(10)])
    cfg = from_dict({"data_dir": str(tmp_path), "tasks": [
        {"name": "x", "type": "classification", "data": {"train": "t.jsonl", "dev": "t.jsonl", "max_train": 4}}]})
    data = prepare(cfg)
    assert len(data["x"].examples["train"]) == 4 and len(data["x"].examples["dev"]) == 10
    assert data["x"].task.labels == ["0", "1"]


def test_hugging_face_datasets_with_local_files(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "cache"))
    write(tmp_path / "tr.jsonl", [json.dumps({"sentence": f"s{i}", "gold": "ab"[i % 2]}) for i in range(6)])
    write(tmp_path / "va.jsonl", [json.dumps({"sentence": "v", "gold": "a"})])
    cfg = from_dict({"data_dir": str(tmp_path), "tasks": [{
        "name": "x", "type": "classification", "columns": {"text": "sentence", "label": "gold"},
        "data": {"format": "hf", "dataset": "json", "train": "train", "dev": "validation",
                 "data_files": {"train": "tr.jsonl", "validation": "va.jsonl"}}}]})
    data = prepare(cfg, splits=("train", "dev"))
    assert len(data["x"].examples["train"]) == 6 and data["x"].task.labels == ["a", "b"]
    assert data["x"].examples["dev"][0].source == "hf:json:validation:1"


def test_empty_dev_split_is_an_error(tmp_path):
    write(tmp_path / "train.jsonl", [json.dumps({"text": "good", "label": "pos"})])
    (tmp_path / "dev.jsonl").write_text("")
    cfg = from_dict({"data_dir": str(tmp_path), "tasks": [
        {"name": "cls", "type": "classification", "data": {"train": "train.jsonl", "dev": "dev.jsonl"}}]})
    with pytest.raises(DataError, match="task 'cls' has an empty dev split.*remove data.dev"):
        prepare(cfg)


def messy(tmp_path, n=200, empty=(3, 50), **data):
    rows = [json.dumps({"text": "" if i in empty else f"text {i}", "label": "ab"[i % 2]}) for i in range(n)]
    write(tmp_path / "train.jsonl", rows)
    return from_dict({"data_dir": str(tmp_path), "tasks": [
        {"name": "hate", "type": "classification", "data": {"train": "train.jsonl", **data}}]})


def test_invalid_rows_are_errors_by_default(tmp_path):
    with pytest.raises(DataError, match=r"train.jsonl: field 'text': empty text \(2 rows: lines 4, 51\)"):
        prepare(messy(tmp_path))


def test_on_invalid_skip_drops_them_and_lists_them(tmp_path):
    from polytask.dataset import data_warnings

    data = prepare(messy(tmp_path, on_invalid="skip"))
    assert len(data["hate"].examples["train"]) == 198
    assert [p.line for p in data["hate"].skipped["train"]] == [4, 51]
    (line,) = data_warnings(data)
    assert "skipped 2 invalid rows of task 'hate' (train" in line
    assert "train.jsonl: field 'text': empty text (2 rows: lines 4, 51)" in line


def test_on_invalid_skip_still_fails_past_max_invalid(tmp_path):
    with pytest.raises(DataError, match=r"3 of 200 rows of task 'hate' \(train\) are invalid, more than "
                                        r"data.max_invalid=0.01"):
        prepare(messy(tmp_path, empty=(1, 2, 3), on_invalid="skip"))
    assert len(prepare(messy(tmp_path, empty=(1, 2, 3), on_invalid="skip", max_invalid=0.02))["hate"]
               .examples["train"]) == 197


def test_the_same_problem_on_many_rows_is_one_line(tmp_path):
    write(tmp_path / "train.jsonl", [json.dumps({"text": f"t{i}", "class": "a"}) for i in range(3000)])
    cfg = from_dict({"data_dir": str(tmp_path), "tasks": [
        {"name": "t", "type": "classification", "data": {"train": "train.jsonl"}}]})
    with pytest.raises(DataError) as info:
        prepare(cfg)
    lines = str(info.value).splitlines()
    assert lines[0] == "3001 data problems:"  # every row, and "no training examples"
    assert "field 'label': missing column (available: class, text) (3000 rows: lines 1, 2, 3, ...)" in lines[1]
    assert "has no training examples" in lines[2]
    assert len(lines) == 4 and "data.on_invalid: skip" in lines[3]  # the hint, once, after the problems


def test_a_file_split_by_slices_feeds_dev_and_test(tmp_path):
    """``dev: f[:a]``, ``test: f[a:b]``: disjoint parts of one file (SQuAD has no test set), with
    max_eval applied within the slice and lines kept from the whole file."""
    rows = [json.dumps({"text": f"t{i}", "label": "ab"[i % 2]}) for i in range(10)]
    write(tmp_path / "all.jsonl", rows)
    cfg = from_dict({"data_dir": str(tmp_path), "tasks": [
        {"name": "cls", "type": "classification",
         "data": {"train": "all.jsonl[:6]", "dev": "all.jsonl[6:8]", "test": "all.jsonl[8:]", "max_eval": 1}}]})
    td = prepare(cfg)["cls"]
    texts = {s: [e.fields["text"] for e in td.examples[s]] for s in ("train", "dev", "test")}
    assert texts == {"train": [f"t{i}" for i in range(6)], "dev": ["t6"], "test": ["t8"]}
    assert td.examples["test"][0].source.endswith("all.jsonl:9")
    cfg.tasks[0].data.dev = "missing.jsonl[:3]"
    with pytest.raises(DataError, match=r"missing.jsonl: file not found, configured at tasks\[cls\].data.dev"):
        prepare(cfg)
