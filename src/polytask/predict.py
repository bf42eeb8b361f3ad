"""Load a run folder and predict: ``polytask.load(run_dir).predict(task, inputs)``.

The model is rebuilt offline from the run folder alone (backbone config + safetensors weights +
tokenizer + label vocabularies); nothing is unpickled and nothing is downloaded.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml

from polytask import checkpoint as ckpt
from polytask.config import from_dict
from polytask.data.records import Record
from polytask.errors import CheckpointError, DataError, PolytaskError
from polytask.evaluate import predict_features
from polytask.model import build_model
from polytask.tasks import build_task


class Predictor:
    def __init__(self, cfg, model, tasks, tokenizer, run_dir: Path):
        self.cfg, self.model, self.tasks, self.tokenizer, self.run_dir = cfg, model, tasks, tokenizer, run_dir

    @classmethod
    def load(cls, run_dir: str | Path) -> "Predictor":
        from transformers import AutoConfig, AutoModel, AutoTokenizer

        run_dir = Path(run_dir)
        ckpt.check_format(run_dir)
        for name in ("config.yaml", "vocab.json", "model.safetensors", "tokenizer", "backbone"):
            if not (run_dir / name).exists():
                raise CheckpointError(f"{run_dir} is not a complete run folder: {name} is missing")
        cfg = from_dict(yaml.safe_load((run_dir / "config.yaml").read_text()), source=str(run_dir / "config.yaml"))
        vocab = json.loads((run_dir / "vocab.json").read_text())
        tasks = {}
        for tc in cfg.tasks:
            task = build_task(tc)
            task.load_vocab_state(vocab[tc.name])
            tasks[tc.name] = task
        if cfg.model.kind == "causal_lm":  # LoRA runs hold adapters only: the base comes from its source
            from polytask.architectures.causal_lm import rebuild_backbone

            backbone = rebuild_backbone(cfg, run_dir)
        else:
            backbone = AutoModel.from_config(AutoConfig.from_pretrained(run_dir / "backbone"))
        model = build_model(cfg, backbone, tasks)
        ckpt.load_weights(model, run_dir / "model.safetensors")
        model.eval()
        tokenizer = AutoTokenizer.from_pretrained(run_dir / "tokenizer")
        return cls(cfg, model, tasks, tokenizer, run_dir)

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
        pad_id = self.tokenizer.pad_token_id or 0
        return predict_features(self.model, t, feats, pad_id, batch_size)

    def predict_all(self, inputs: list[Any], batch_size: int = 64) -> dict[str, list]:
        """Every task's prediction for the same inputs (tasks whose fields the inputs have)."""
        return {name: self.predict(name, inputs, batch_size) for name in self.tasks}
