"""``polytask export --format hf``: the encoder loads with ``AutoModel`` (no missing keys, same
outputs); each exported task runs in ``transformers.pipeline`` with polytask's predictions; the
model card lists tasks and metrics; ``--push-to-hub`` offline fails before writing anything."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

from conftest import tiny_config
from polytask.config import from_dict
from polytask.errors import PolytaskError

TEXTS = ["Anna loved the soup", "the chef burned the pasta", "Oslo is cold in winter", "Berg met Anna in Oslo",
         "a dog runs", "the film was not good at all"]
PAIRS = [("a dog runs", "a dog is running"), ("the sky is blue", "Anna met Berg"), ("soup", "pasta")]
SENTENCES = [["Berg", "flew", "to", "Oslo"], ["Anna", "loved", "the", "unbelievably", "good", "soup"]]


@pytest.fixture(scope="module")
def exported(tiny_backbone, tmp_path_factory):
    """A 12-step hard-sharing run (topic keeps mean pooling, the others use cls) and its export."""
    import polytask
    from polytask.export import export_hf

    root = tmp_path_factory.mktemp("export")
    raw = tiny_config(tiny_backbone, root / "runs", max_steps=12, eval_every=6)
    for t in raw["tasks"]:
        if t["name"] != "topic":
            t.pop("pooling", None)
    run = polytask.train(from_dict(raw), progress=False)
    return run, export_hf(run, root / "hf"), polytask.load(run)


def test_encoder_loads_with_automodel_and_gives_the_same_outputs(exported):
    from transformers import AutoModel, AutoTokenizer

    _, out, pred = exported
    model, info = AutoModel.from_pretrained(out / "encoder", output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]
    assert not (out / "encoder" / "modules.json").exists()  # not a sentence-transformers backbone: not shown as one
    batch = AutoTokenizer.from_pretrained(out / "encoder")(TEXTS, padding=True, return_tensors="pt")
    with torch.no_grad():
        theirs = model.eval()(**batch).last_hidden_state
        ours = pred.model.arch.encode(dict(batch))
    assert torch.allclose(theirs, ours, atol=1e-5)


def test_classification_pipeline_gives_polytask_labels(exported):
    from transformers import pipeline

    _, out, pred = exported
    clf = pipeline("text-classification", model=str(out / "tasks" / "sentiment"), device="cpu")
    assert [r["label"] for r in clf(TEXTS)] == pred.predict("sentiment", TEXTS)
    config = json.loads((out / "tasks" / "sentiment" / "config.json").read_text())
    assert list(config["id2label"].values()) == pred.tasks["sentiment"].labels


def test_exported_logits_match_polytask_closely(exported):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    _, out, pred = exported
    batch = AutoTokenizer.from_pretrained(out / "tasks" / "sentiment")(TEXTS, padding=True, return_tensors="pt")
    model = AutoModelForSequenceClassification.from_pretrained(out / "tasks" / "sentiment").eval()
    with torch.no_grad():
        assert torch.allclose(model(**batch).logits, pred.model(dict(batch), "sentiment")[0], atol=1e-4)


def test_regression_pipeline_gives_polytask_scores(exported):
    from transformers import pipeline

    _, out, pred = exported
    reg = pipeline("text-classification", model=str(out / "tasks" / "similarity"), device="cpu",
                   function_to_apply="none")
    theirs = [r["score"] for r in reg([{"text": a, "text_pair": b} for a, b in PAIRS])]
    ours = pred.predict("similarity", [{"text_a": a, "text_b": b} for a, b in PAIRS])
    assert theirs == pytest.approx(ours, abs=1e-3)


def test_token_classification_pipeline_tags_each_words_first_piece_like_polytask(exported):
    from transformers import pipeline

    _, out, pred = exported
    tagger = pipeline("token-classification", model=str(out / "tasks" / "entities"), device="cpu",
                      aggregation_strategy="none", ignore_labels=[])
    ours = pred.predict("entities", SENTENCES)
    for words, tags in zip(SENTENCES, ours):
        pieces = tagger(" ".join(words))
        assert [p["entity"] for p in pieces if not p["word"].startswith("##")] == tags


def test_mean_pooling_task_is_reported_not_exported(exported):
    _, out, _ = exported
    manifest = json.loads((out / "polytask_export.json").read_text())
    assert set(manifest["tasks"]) == {"sentiment", "similarity", "entities"}
    reason = manifest["not_exported"]["topic"]
    assert "pooling 'mean'" in reason and "--format onnx" in reason and "polytask predict" in reason
    assert not (out / "tasks" / "topic").exists()


def test_model_card_lists_tasks_metrics_and_config(exported):
    run, out, _ = exported
    card = (out / "README.md").read_text()
    summary = json.loads((run / "summary.json").read_text())
    assert card.startswith("---\nlibrary_name: transformers")
    for task in ("sentiment", "topic", "similarity", "entities"):
        assert f"| {task} |" in card
    assert f"{summary['dev']['sentiment']['accuracy']:.4f}" in card
    assert "## Training config" in card and "max_steps: 12" in card
    assert "not exported: pooling 'mean'" in card


def test_push_to_hub_offline_fails_before_writing(exported, tmp_path, monkeypatch):
    from polytask.export import export_hf

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    run, _, _ = exported
    with pytest.raises(PolytaskError, match="HF_HUB_OFFLINE is set, so nothing can be uploaded"):
        export_hf(run, tmp_path / "out", push_to_hub="someone/tiny")
    assert not (tmp_path / "out").exists()


def test_cli_export_writes_folders_and_reports_a_bad_format(exported, tmp_path):
    run, _, _ = exported
    cmd = [sys.executable, "-c", "from polytask.cli import app; app()"]
    done = subprocess.run(cmd + ["export", str(run), "--out", str(tmp_path / "o")], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "o" / "encoder" / "model.safetensors").is_file()
    bad = subprocess.run(cmd + ["export", str(run), "--out", str(tmp_path / "p"), "--format", "tflite"],
                         capture_output=True, text=True)
    assert bad.returncode == 2 and "the formats are: hf" in bad.stderr


def card_groups(words: list[str], tags: list[str]) -> list[tuple[str, str]]:
    """polytask's word tags as the token-classification pipeline groups words (``B-``/``I-``
    dropped, a ``B-`` or a new type starts a group, ``O`` words group as ``O``)."""
    groups: list[tuple[str, list[str]]] = []
    for word, tag in zip(words, tags):
        bi, kind = (tag[0], tag[2:]) if tag[:2] in ("B-", "I-") else ("I", tag)
        if groups and groups[-1][0] == kind and bi == "I":
            groups[-1][1].append(word)
        else:
            groups.append((kind, [word]))
    return [(kind, " ".join(ws).lower()) for kind, ws in groups]


def test_model_card_snippet_runs_from_the_exported_folder_like_polytask(exported):
    """Issue 25.3: the card's Python block, as written, run from the exported folder offline:
    the pipelines load (a local folder without a pipeline name was looked up on the Hub) and
    give polytask's predictions, the tagger one tag per word (``aggregation_strategy="first"``)."""
    import re

    _, out, pred = exported
    block = re.search(r"```python\n(.*?)```", (out / "README.md").read_text(), flags=re.S).group(1)
    check = (f"import json\nprint(json.dumps({{'sentiment': [r['label'] for r in sentiment({TEXTS!r})],\n"
             f"  'similarity': [r['score'] for r in similarity({[{'text': a, 'text_pair': b} for a, b in PAIRS]!r})],\n"
             f"  'entities': [[(g['entity_group'], g['word']) for g in entities(' '.join(w), ignore_labels=[])]\n"
             f"               for w in {SENTENCES!r}]}}))\n")
    proc = subprocess.run([sys.executable, "-c", block + check], cwd=out, capture_output=True, text=True,
                          timeout=300, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert proc.returncode == 0, (block, proc.stderr[-3000:])
    theirs = json.loads(proc.stdout.splitlines()[-1])
    assert theirs["sentiment"] == pred.predict("sentiment", TEXTS)
    ours = pred.predict("similarity", [{"text_a": a, "text_b": b} for a, b in PAIRS])
    assert theirs["similarity"] == pytest.approx(ours, abs=1e-3)
    tags = pred.predict("entities", SENTENCES)
    assert [[tuple(g) for g in groups] for groups in theirs["entities"]] == [
        card_groups(w, t) for w, t in zip(SENTENCES, tags)]


def test_export_into_a_used_folder_is_refused_or_replaces_the_previous_export(exported, tmp_path):
    """Issue 25.5: an export into a folder holding an earlier export kept the earlier task folders
    (and --push-to-hub uploaded them); now it is refused, or replaced with --overwrite; a folder
    of other files is never cleared."""
    run, _, _ = exported
    cmd = [sys.executable, "-m", "polytask.cli", "export", str(run)]
    out = tmp_path / "o"
    assert subprocess.run(cmd + ["--out", str(out)], capture_output=True, text=True).returncode == 0
    (out / "tasks" / "old-task").mkdir()
    (out / "tasks" / "old-task" / "config.json").write_text("{}")  # a task of an earlier export
    again = subprocess.run(cmd + ["--out", str(out)], capture_output=True, text=True)
    assert again.returncode == 2 and "holds a previous export; replace it with --overwrite" in again.stderr
    assert (out / "tasks" / "old-task").is_dir()
    replaced = subprocess.run(cmd + ["--out", str(out), "--overwrite"], capture_output=True, text=True)
    assert replaced.returncode == 0, replaced.stderr
    assert sorted(p.name for p in (out / "tasks").iterdir()) == ["entities", "sentiment", "similarity"]
    other = tmp_path / "notes"
    other.mkdir()
    (other / "notes.txt").write_text("mine")
    refused = subprocess.run(cmd + ["--out", str(other), "--overwrite"], capture_output=True, text=True)
    assert refused.returncode == 2 and "not a polytask export" in refused.stderr
    assert (other / "notes.txt").read_text() == "mine"
