"""The command line, run as a user would run it (a real subprocess), on the tiny backbone."""

import json
import re
import subprocess
import sys

import pytest
import yaml

from conftest import tiny_config


def cli(*args, check=True):
    proc = subprocess.run([sys.executable, "-m", "polytask.cli", *map(str, args)],
                          capture_output=True, text=True, timeout=600)
    if check and proc.returncode != 0:
        raise AssertionError(f"exit {proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}")
    return proc


@pytest.fixture(scope="module")
def config_file(tiny_backbone, tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    path = root / "tiny.yaml"
    path.write_text(yaml.safe_dump(tiny_config(tiny_backbone, root / "runs", max_steps=20, eval_every=10)))
    return path


@pytest.fixture(scope="module")
def run_dir(config_file):
    proc = cli("train", config_file, "name=cli-run", "--no-progress")
    assert "best step" in proc.stdout and "macro" in proc.stdout
    return config_file.parent / "runs" / "cli-run"


def test_help_for_every_command():
    for cmd in ("train", "evaluate", "predict", "check"):
        out = cli(cmd, "--help").stdout
        assert "Usage" in out and len(out) > 200


def test_check_reports_counts(config_file):
    out = cli("check", config_file).stdout
    assert "topic (classification): train=160, dev=40, test=40, 4 labels" in out
    assert "config and data OK" in out


def test_check_bad_override_fails_clearly(config_file):
    proc = cli("check", config_file, "train.max_steps=many", check=False)
    assert proc.returncode == 2 and "train.max_steps: expected int, got str 'many'" in proc.stderr


def test_check_reports_every_data_problem(tmp_path, config_file):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "ok", "label": "a"}\n{"text": "", "label": "b"}\n[1, 2]\n')
    cfg = yaml.safe_load(config_file.read_text())
    cfg["tasks"].append({"name": "extra", "type": "classification", "data": {"train": str(bad)}})
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(cfg))
    proc = cli("check", path, check=False)
    assert proc.returncode == 2
    assert "2 data problems" in proc.stderr
    assert f"{bad}:2: field 'text': empty text" in proc.stderr and f"{bad}:3:" in proc.stderr


def test_evaluate_matches_training_summary(run_dir):
    out = json.loads(cli("evaluate", run_dir, "--split", "test").stdout)
    summary = json.loads((run_dir / "summary.json").read_text())
    assert set(out["metrics"]) == set(summary["test"])
    for task, metrics in summary["test"].items():
        assert out["metrics"][task] == pytest.approx(metrics)


def test_predict_text_and_file(run_dir, tmp_path):
    out = cli("predict", run_dir, "--task", "topic", "--text", "the chef made soup", "--text", "a late flight").stdout
    rows = [json.loads(line) for line in out.splitlines()]
    assert [r["input"] for r in rows] == ["the chef made soup", "a late flight"]
    assert all(r["topic"] in ("food", "sports", "tech", "travel") for r in rows)
    inputs = tmp_path / "in.jsonl"
    inputs.write_text(json.dumps({"text": "Anna Berg likes Oslo", "tokens": ["Anna", "Berg", "likes", "Oslo"],
                                  "text_a": "a dog", "text_b": "a dog"}) + "\n")
    cli("predict", run_dir, "--input", inputs, "--output", tmp_path / "out.jsonl")
    row = json.loads((tmp_path / "out.jsonl").read_text())
    assert set(row) == {"input", "sentiment", "topic", "similarity", "entities"}
    assert len(row["entities"]) == 4 and isinstance(row["similarity"], float)


def test_predict_unknown_task(run_dir):
    proc = cli("predict", run_dir, "--task", "nope", "--text", "x", check=False)
    assert proc.returncode == 2 and "unknown task 'nope'" in proc.stderr


@pytest.mark.parametrize("override, message", [
    ("model.max_length=4096", "model.max_length: 4096 is more than the backbone's 128 position embeddings"),
    ("train.grad_clip=-1", "train.grad_clip: must be a positive finite number"),
    ("tasks.topic.main_metric=bleu", "tasks[topic].main_metric: 'bleu' is not a metric of a classification task"),
    ("name=../escaped", "name: '../escaped' must be one folder name"),
])
def test_check_catches_settings_that_would_fail_later(config_file, override, message):
    proc = cli("check", config_file, override, check=False)
    assert proc.returncode == 2 and message in proc.stderr


def test_predict_input_file_reports_every_problem_with_file_and_line(run_dir, tmp_path):
    bad = tmp_path / "in.jsonl"
    bad.write_text('{"text": "fine"}\n{not json\n{"text": ""}\n')
    proc = cli("predict", run_dir, "--task", "topic", "--input", bad, check=False)
    assert proc.returncode == 2 and "2 data problems" in proc.stderr
    assert f"{bad}:2: invalid JSON" in proc.stderr and f"{bad}:3: field 'text': empty text" in proc.stderr


def test_check_fails_on_a_backbone_it_cannot_load(config_file, tmp_path):
    proc = cli("check", config_file, f"model.backbone={tmp_path}", check=False)  # a folder with no model
    assert proc.returncode == 2 and "model.backbone: cannot load" in proc.stderr and "local folder" in proc.stderr


def test_check_prints_label_order_counts_and_the_positive_class(tmp_path, tiny_backbone):
    rows = [{"text": f"t{i}", "label": "yes" if i % 3 else "no"} for i in range(30)]
    data = tmp_path / "train.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    raw = tiny_config(tiny_backbone, tmp_path)
    raw["tasks"] = [{"name": "b", "type": "classification", "data": {"train": str(data)}, "positive_label": "no"}]
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(raw))
    out = cli("check", path).stdout
    assert "b (classification): train=30, 2 labels in this order: no (10), yes (20); binary f1 is of 'no'" in out
    proc = cli("check", path, "tasks.b.positive_label=maybe", check=False)
    assert proc.returncode == 2 and "tasks[b].positive_label: 'maybe' must be one of the two labels" in proc.stderr


def strict_json(text: str):
    """JSON as a strict parser reads it: NaN and Infinity are not JSON."""
    def refuse(constant):
        raise AssertionError(f"not valid JSON: {constant}")
    return json.loads(text, parse_constant=refuse)


def test_evaluate_names_the_splits_and_scores_train(run_dir):
    """Issue 25.2: `--split val` is one line naming the splits (not a traceback); `--split train`
    scores the training data (not empty metrics and NaN, which is not JSON)."""
    proc = cli("evaluate", run_dir, "--split", "val", check=False)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    assert "--split 'val': the splits are dev, test and train" in proc.stderr
    out = strict_json(cli("evaluate", run_dir, "--split", "train").stdout)
    assert out["split"] == "train" and set(out["metrics"]) == {"sentiment", "topic", "similarity", "entities"}
    assert isinstance(out["macro"], float)


def test_predict_input_file_skips_bad_lines_and_counts_honestly(run_dir, tmp_path):
    """Issue 25.7: one bad line rejected the whole file (no skip), a problem was counted once per
    task ("3 data problems" over two bullets), and "wrote 6 predictions" counted skipped rows."""
    rows = ['{"text": "Anna loved the soup"}', '{not json', '{"text": ""}', '{"text": "a late flight"}',
            '{"text_a": "a dog", "text_b": "a cat"}', '{"tokens": ["Anna", "flew"]}',
            '{"text": "the chef made soup"}', '{"text": "Oslo in May"}']
    data = tmp_path / "in.jsonl"
    data.write_text("\n".join(rows) + "\n")
    proc = cli("predict", run_dir, "--input", data, check=False)  # every task: sentiment and topic read 'text'
    assert proc.returncode == 2 and "--on-invalid skip" in proc.stderr, proc.stderr
    counted = int(re.search(r"(\d+) data problems:", proc.stderr).group(1))
    assert counted == proc.stderr.count("  - ") and proc.stderr.count(":3: field 'text': empty text") == 1
    out = tmp_path / "out.jsonl"
    proc = cli("predict", run_dir, "--input", data, "--output", out, "--on-invalid", "skip")
    written = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["input"] for r in written] == [json.loads(x) for i, x in enumerate(rows) if i not in (1, 2)]
    assert f"{data}:2: invalid JSON" in proc.stderr and f"{data}:3: field 'text': empty text" in proc.stderr
    assert f"wrote 6 rows to {out}: 6 of 8 inputs predicted; 2 invalid, left out" in proc.stdout
    one = cli("predict", run_dir, "--task", "topic", "--input", data, "--output", out, "--on-invalid", "skip")
    assert f"wrote 4 rows to {out}: 4 of 8 inputs predicted; 4 invalid, left out" in one.stdout  # --task: missing
    assert f"{data}:5: field 'text': missing field" in one.stderr  # fields are problems too


def test_config_errors_list_every_unknown_key_with_a_suggestion(config_file, tmp_path):
    """Issue 25.14: every unknown key at once, each with its closest known key; an override naming
    an unknown task lists the tasks; a data error names data.on_invalid: skip."""
    cfg = yaml.safe_load(config_file.read_text())
    cfg["train"]["max_stpes"] = 3
    cfg["tasks"][1]["polling"] = "cls"
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(cfg))
    proc = cli("check", path, check=False)
    assert proc.returncode == 2 and "2 unknown keys:" in proc.stderr, proc.stderr
    assert "train.max_stpes: unknown key; did you mean 'max_steps'? (known: " in proc.stderr
    assert "tasks[1].polling: unknown key; did you mean 'pooling'? (known: " in proc.stderr
    proc = cli("check", config_file, "tasks.topik.pooling=cls", check=False)
    assert proc.returncode == 2 and ("no list item 'topik' (known: sentiment, topic, similarity, entities, or an "
                                     "index 0..3); did you mean 'topic'?") in proc.stderr, proc.stderr
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "ok", "label": "a"}\n{"text": "", "label": "b"}\n')
    cfg = yaml.safe_load(config_file.read_text())
    cfg["tasks"].append({"name": "extra", "type": "classification", "data": {"train": str(bad)}})
    path.write_text(yaml.safe_dump(cfg))
    proc = cli("check", path, check=False)
    assert proc.returncode == 2 and "data.on_invalid: skip" in proc.stderr, proc.stderr


def test_help_is_wrapped_without_bool_types_and_logs_get_no_progress_bars(config_file):
    """Issue 25.16: help showed "<bool>" on every flag and kept the docstrings' source line breaks
    (lines broken mid-sentence); a progress bar wrote carriage returns into a log (stderr not a terminal)."""
    import os

    proc = subprocess.run([sys.executable, "-m", "polytask.cli", "train", "--help"], capture_output=True, text=True,
                          env={**os.environ, "COLUMNS": "80"}, timeout=60)
    out = proc.stdout
    assert "<bool>" not in out and "--overwrite " in out and "--no-overwrite" not in out
    lines = out.splitlines()
    start = next(i for i, line in enumerate(lines) if line.strip().startswith("Ctrl-C"))
    end = lines.index("", start)
    paragraph = [line.strip() for line in lines[start:end]]
    assert len(paragraph) > 1 and all(len(line) >= 55 for line in paragraph[:-1]), paragraph  # re-wrapped
    proc = cli("train", config_file, "name=log-run", "train.max_steps=10", "train.eval_every=5")
    assert "\r" not in proc.stderr and "\r" not in proc.stdout
    assert "step 5 dev |" in proc.stdout and "step 10 dev |" in proc.stdout


def test_label_names_rename_numeric_labels_and_predict_shows_scores(tmp_path, tiny_backbone):
    """Issue 25.10: a task whose data labels are numbers (TREC) predicted "3"; label_names maps
    them to names everywhere, and predict --scores adds label probabilities (as the server does)."""
    rows = [{"text": f"question number {i}", "label": i % 3} for i in range(24)]
    data = tmp_path / "q.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    raw = tiny_config(tiny_backbone, tmp_path / "runs", max_steps=2, eval_every=2)
    raw["tasks"] = [{"name": "trec", "type": "classification", "data": {"train": str(data), "dev": str(data)},
                     "label_names": {0: "ABBR", 1: "DESC", 2: "LOC"}}]
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(raw))
    assert "3 labels in this order: ABBR (8), DESC (8), LOC (8)" in cli("check", path).stdout
    cli("train", path, "--no-progress")
    run = tmp_path / "runs" / "tiny"
    out = cli("predict", run, "--text", "Who wrote Hamlet?", "--scores").stdout
    row = json.loads(out.splitlines()[0])
    assert row["trec"] in ("ABBR", "DESC", "LOC") and set(row["scores"]["trec"]) == {"ABBR", "DESC", "LOC"}
    assert sum(row["scores"]["trec"].values()) == pytest.approx(1.0, abs=1e-4)
    bad = tmp_path / "bad.yaml"
    raw["tasks"][0]["label_names"] = {0: "ABBR", 1: "DESC"}
    bad.write_text(yaml.safe_dump(raw))
    proc = cli("check", bad, check=False)
    assert proc.returncode == 2 and "label '2' has no entry in label_names" in proc.stderr


def test_python_api_writes_no_progress_bar_into_a_log(config_file, tmp_path):
    """Issue 25.16: polytask.train() from a script whose output goes to a file drew a progress bar
    (carriage returns) into it; by default it now draws one only on a terminal."""
    script = (f"import polytask\npolytask.train({str(config_file)!r}, ['name=api-log', 'train.max_steps=4', "
              f"'train.eval_every=2', 'output_dir={tmp_path}'])\n")
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "\r" not in proc.stderr and "\r" not in proc.stdout and "step 4 dev |" in proc.stdout
