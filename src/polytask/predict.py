"""Load a run folder and predict: ``polytask.load(run_dir).predict(task, inputs)``.

The model is rebuilt offline from the run folder alone (backbone config + safetensors weights +
tokenizer + label vocabularies); nothing is unpickled and nothing is downloaded.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from polytask.backbones import pad_id
from polytask.data.records import Record
from polytask.errors import DataError, PolytaskError
from polytask.dataset import encode_all, prepare
from polytask.evaluate import evaluate, macro_score, predict_features
from polytask.model import rebuild_model
from polytask.run_folder import RunFolder
from polytask.tasks import build_task


class Predictor:
    def __init__(self, cfg, model, tasks, tokenizer, run: RunFolder):
        self.cfg, self.model, self.tasks, self.tokenizer, self.run = cfg, model, tasks, tokenizer, run

    @property
    def run_dir(self) -> Path:
        return self.run.path

    @property
    def pad_id(self) -> int:
        return pad_id(self.tokenizer)

    @classmethod
    def load(cls, run_dir: str | Path) -> "Predictor":
        run = RunFolder(run_dir)
        run.require_complete()
        cfg = run.read_config()
        vocab = run.read_vocab()
        tasks = {}
        for tc in cfg.tasks:
            task = build_task(tc)
            task.load_vocab_state(vocab[tc.name])
            tasks[tc.name] = task
        model = rebuild_model(cfg, run, tasks)
        return cls(cfg, model, tasks, run.load_tokenizer(), run)

    def predict(self, task: str, inputs: list[Any], batch_size: int = 64) -> list:
        """Predict for raw inputs: strings (the text) or dicts of fields (task or column names)."""
        if task not in self.tasks:
            raise PolytaskError(f"unknown task '{task}'; this model has: {', '.join(self.tasks)}")
        t = self.tasks[task]
        examples, problems = [], []
        for i, item in enumerate(inputs):
            fields = item if isinstance(item, dict) else {t.column(t.text_fields[0]): item}
            fields = {t.column(k) if k in t.text_fields + t.optional_fields else k: v for k, v in fields.items()}
            ex, bad = t.parse(Record(fields, "<input>", i + 1), with_target=False)
            problems += bad
            examples.append(ex)
        if problems:
            raise DataError(problems)
        feats = t.encode(examples, self.tokenizer, self.cfg.model.max_length)
        return predict_features(self.model, t, feats, self.pad_id, batch_size)

    def predict_all(self, inputs: list[Any], batch_size: int = 64) -> dict[str, list]:
        """Every task's prediction for the same inputs (tasks whose fields the inputs have)."""
        return {name: self.predict(name, inputs, batch_size) for name in self.tasks}


def evaluate_run(run_dir: str | Path, split: str = "dev", overrides: list[str] | None = None) -> dict:
    """A trained run's metrics on its configured ``split`` data; ``overrides`` may move the data
    (``data_dir=...``). The saved label vocabularies are used, not ones refit on today's files."""
    pred = Predictor.load(run_dir)
    cfg = pred.run.read_config(overrides)
    data = prepare(cfg, splits=("train", split))
    for name, td in data.items():
        td.task = pred.tasks[name]
        td.examples.pop("train", None)
    encode_all(data, pred.tokenizer, cfg.model.max_length)
    results = evaluate(pred.model, data, split, pred.pad_id, cfg.train.eval_batch_size)
    return {"split": split, "metrics": results, "macro": macro_score(results, pred.tasks)}
