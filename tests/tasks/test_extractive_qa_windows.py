"""Extractive QA: the windows of a training batch are bounded (issue 27, memory). A batch counts
questions, but stops taking them at ``max_windows_per_batch`` windows; questions stay whole,
the draws stay a pure function of the seed (exact resume), and the log shows the cap."""

from __future__ import annotations

import json

import pytest

from conftest import tiny_config
from polytask.batching import epoch_batches
from polytask.config import TaskConfig, from_dict
from polytask.tasks import build_task
from polytask.tasks.base import Example

SHORT = "The Eiffel Tower in Paris was finished in 1889."
FILLER = " It was the tallest structure in the world for forty-one years, until a building in New York passed it."


def long_context(n: int) -> str:
    return SHORT + FILLER * n


def rows() -> list[dict]:
    """36 questions: 24 on a one-window context, 12 on contexts of several windows (at 32 tokens)."""
    out = []
    for i in range(36):
        context = SHORT if i % 3 else long_context(1 + i % 4)
        out.append({"id": f"q{i}", "question": "When was it finished?", "context": context,
                    "answers": [{"text": "1889", "answer_start": context.index("1889")}]})
    return out


def windows_per_question(tiny_backbone, max_windows=None) -> tuple[list[int], list[int], object]:
    from transformers import AutoTokenizer

    cfg = TaskConfig(name="qa", type="extractive_qa", doc_stride=8, max_windows_per_batch=max_windows)
    task = build_task(cfg)
    examples = [Example({"question": r["question"], "context": r["context"], "answers": [("1889", 0)]}, "x")
                for r in rows()]
    feats = task.encode(examples, AutoTokenizer.from_pretrained(tiny_backbone), 32)
    return [len(f["input_ids"]) for f in feats], [task.batch_rows(f) for f in feats], task


def test_batches_never_exceed_the_window_cap_and_keep_every_question_whole(tiny_backbone):
    lengths, windows, task = windows_per_question(tiny_backbone)
    cap = task.max_batch_rows(8)
    assert cap == 12 and max(windows) >= 5 and min(windows) == 1  # long contexts: many windows (real tokenizer)
    capped_any = False
    for epoch in range(6):
        plain = epoch_batches(lengths, 8, seed=1, epoch=epoch, group=2)
        batches = epoch_batches(lengths, 8, seed=1, epoch=epoch, group=2, rows=windows, max_rows=cap)
        per_batch = [sum(windows[i] for i in b) for b in batches]
        assert all(w <= cap or len(b) == 1 for w, b in zip(per_batch, batches))
        assert all(len(b) <= 8 for b in batches)
        assert sorted(i for b in batches for i in b) == list(range(len(lengths)))  # every question once
        capped_any |= max(sum(windows[i] for i in b) for b in plain) > cap  # the cap had something to do
        assert batches == epoch_batches(lengths, 8, seed=1, epoch=epoch, group=2, rows=windows, max_rows=cap)
    assert capped_any


def test_a_question_over_the_cap_is_a_batch_of_its_own(tiny_backbone):
    lengths, windows, task = windows_per_question(tiny_backbone, max_windows=2)
    assert task.max_batch_rows(8) == 2
    batches = epoch_batches(lengths, 8, seed=0, epoch=0, rows=windows, max_rows=2)
    for b in batches:
        assert len(b) == 1 or sum(windows[i] for i in b) <= 2


def qa_run_config(tiny_backbone, tmp_path, name: str, max_steps: int) -> dict:
    path = tmp_path / "qa.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows()) + "\n")
    raw = tiny_config(tiny_backbone, tmp_path / "runs", max_steps=max_steps, eval_every=4, log_every=1,
                      batch_size=8, schedule="constant", warmup_ratio=0.0)
    raw.update(name=name, tasks=[{"name": "qa", "type": "extractive_qa", "doc_stride": 8,
                                  "data": {"train": str(path), "dev": str(path)}}])
    return raw


def trajectory(run_dir) -> list[dict]:
    events = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [{k: e.get(k) for k in ("step", "loss", "examples", "tokens", "rows_peak")}
            for e in events if e["kind"] == "train"]


def test_training_logs_the_cap_stays_under_it_and_resumes_exactly(tiny_backbone, tmp_path, capsys):
    from polytask.train import train

    straight = train(from_dict(qa_run_config(tiny_backbone, tmp_path, "straight", 8)), progress=False)
    log = capsys.readouterr().err
    assert "task 'qa': batches of at most 8 examples and 12 windows (this epoch:" in log
    events = trajectory(straight)
    assert len(events) == 8 and all(0 < e["rows_peak"]["qa"] <= 12 for e in events)
    per_step = [b["examples"]["qa"] - a["examples"]["qa"] for a, b in zip(events, events[1:])]
    assert min(per_step) < 8  # some batch stopped taking questions at the cap

    parts = train(from_dict(qa_run_config(tiny_backbone, tmp_path, "parts", 4)), progress=False)
    train(resume=parts, overrides=["train.max_steps=8"], progress=False)
    assert trajectory(parts) == events


def test_the_cap_must_be_positive(tmp_path):
    from polytask.errors import ConfigError

    raw = {"name": "t", "output_dir": str(tmp_path),
           "tasks": [{"name": "qa", "type": "extractive_qa", "max_windows_per_batch": 0, "data": {"train": "x"}}]}
    with pytest.raises(ConfigError, match=r"tasks\[0\]\.max_windows_per_batch: must be positive"):
        from_dict(raw)
