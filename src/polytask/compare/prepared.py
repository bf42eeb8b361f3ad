"""The comparison's own data, read once.

``polytask compare`` needs the data for its bookkeeping: the training-set sizes that set the
budgets, the token length of every training example (to replay what each sub-run trained on),
and the dev inputs of the serving-cost measurement. :class:`Prepared` reads the base config's
splits once, at the start of a comparison, and is handed to planning, accounting and serving.
Sub-runs still read their own data in :func:`polytask.train.train`.

A sub-run that reads a task differently from the base config (a ``single_overrides`` or method
override of its data section, another ``data_dir``, or another seed for synthetic data) gets
that task read once more, on first use, and cached here too.
"""

from __future__ import annotations

import json
from dataclasses import replace
from typing import Any

from polytask.backbones import input_processor
from polytask.batching import feature_length
from polytask.config import Config, TaskConfig, to_dict
from polytask.dataset import TaskData, prepare


class Prepared:
    """Every task's examples (``data``: name -> :class:`~polytask.dataset.TaskData`) of the base
    config without its compare section, and training lengths per task and tokenizer."""

    def __init__(self, cfg: Config, splits: tuple[str, ...] = ("train", "dev")):
        self.cfg = replace(cfg, compare=None)
        self.splits = tuple(splits)
        self.data: dict[str, TaskData] = prepare(self.cfg, splits=self.splits)
        self._other: dict[str, TaskData] = {}  # tasks a sub-run reads differently, by _data_key
        self._lengths: dict[str, list[int]] = {}  # by _lengths_key
        self._rows: dict[str, list[int]] = {}  # forward rows per example (QA windows), by _lengths_key
        self._tokenizers: dict[str, Any] = {}

    @property
    def sizes(self) -> dict[str, int]:
        """Number of training examples per task (after ``max_train``)."""
        return {n: len(td.examples.get("train", [])) for n, td in self.data.items()}

    def train_lengths(self, cfg: Config) -> dict[str, list[int]]:
        """Token count of every training example of every task of ``cfg`` (a sub-run's config,
        or the base), as ``train`` encodes them; in ``cfg.tasks`` order."""
        out: dict[str, list[int]] = {}
        for tc in cfg.tasks:
            key = _lengths_key(cfg, tc)
            if key not in self._lengths:
                td = self.task_data(cfg, tc)
                feats = td.task.encode(td.examples["train"], self.tokenizer(cfg.model), cfg.model.max_length)
                self._lengths[key] = [feature_length(f) for f in feats]
                self._rows[key] = [td.task.batch_rows(f) for f in feats]
            out[tc.name] = self._lengths[key]
        return out

    def train_rows(self, cfg: Config) -> tuple[dict[str, list[int]], dict[str, int]]:
        """Rows per training example and the cap per batch of the tasks of ``cfg`` that cap their
        rows (extractive QA's windows, :func:`polytask.draws.row_caps`), as ``train`` draws them."""
        self.train_lengths(cfg)
        rows, caps = {}, {}
        for tc in cfg.tasks:
            cap = self.task_data(cfg, tc).task.max_batch_rows(cfg.train.batch_size)
            if cap is not None:
                rows[tc.name], caps[tc.name] = self._rows[_lengths_key(cfg, tc)], cap
        return rows, caps

    def task_data(self, cfg: Config, tc: TaskConfig) -> TaskData:
        """Task ``tc``'s examples as a run of ``cfg`` reads them (the base data when they agree)."""
        if self._reads_like_base(cfg, tc):
            return self.data[tc.name]
        key = _data_key(cfg, tc)
        if key not in self._other:
            self._other[key] = prepare(replace(cfg, compare=None, tasks=[tc]), splits=("train",))[tc.name]
        return self._other[key]

    def tokenizer(self, model_cfg):
        """The input processor of ``model_cfg`` (its tokenizer for text), loaded once per backbone and kind."""
        key = f"{model_cfg.kind}:{model_cfg.backbone}:{to_dict(model_cfg.image)}"
        if key not in self._tokenizers:
            self._tokenizers[key] = input_processor(model_cfg)
        return self._tokenizers[key]

    def _reads_like_base(self, cfg: Config, tc: TaskConfig) -> bool:
        base = self.cfg
        if tc.name not in self.data or "train" not in self.splits or cfg.data_dir != base.data_dir:
            return False
        if tc.data.format == "synthetic" and cfg.seed != base.seed:  # synthetic data depends on the seed
            return False
        return tc == base.task(tc.name)


def _data_key(cfg: Config, tc: TaskConfig) -> str:
    return json.dumps([to_dict(tc), cfg.data_dir, cfg.seed if tc.data.format == "synthetic" else None],
                      sort_keys=True, default=str)


def _lengths_key(cfg: Config, tc: TaskConfig) -> str:
    return json.dumps([_data_key(cfg, tc), cfg.model.max_length, cfg.model.backbone], default=str)
