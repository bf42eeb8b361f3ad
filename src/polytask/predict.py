"""Load a run folder and predict: ``polytask.load(run_dir).predict(task, inputs)``.

The model is rebuilt offline from the run folder alone (backbone config + safetensors weights +
tokenizer + label vocabularies); nothing is unpickled and nothing is downloaded.
"""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path
from typing import Any, Sequence

import torch

from polytask.backbones import pad_id, saved_processor
from polytask.batching import feature_length
from polytask.batching import eval_batches
from polytask.data.records import Record
from polytask.errors import CheckpointError, DataError, DataProblem, PolytaskError
from polytask.dataset import bind_inputs, encode_all, prepare
from polytask.devices import module_device, to_device
from polytask.evaluate import evaluate, macro_score
from polytask.model import MultiTaskModel, rebuild_model
from polytask.precision import autocast, prepare_inference
from polytask.predict_images import probabilities, view_pass
from polytask.registry import allowing_code, registered_only
from polytask.run_folder import RunFolder
from polytask.tasks import Task, build_task


class Predictor:
    """A trained multi-task model, loaded from its run folder: ``polytask.load(run_dir)``.

    Attributes:
        cfg: the run's resolved :class:`polytask.config.Config`.
        model: the :class:`polytask.model.MultiTaskModel` (eval mode, best weights).
        tasks: ``{name: Task}`` with the saved label vocabularies.
        tokenizer: the run's tokenizer.
        run: its :class:`polytask.run_folder.RunFolder`.

    Methods: :meth:`predict` (one task), :meth:`predict_all` (every task, one encoder pass per
    distinct input where the architecture allows).
    """

    def __init__(self, cfg, model, tasks, tokenizer, run: RunFolder, precision: str = "fp32"):
        self.cfg, self.model, self.tasks, self.tokenizer, self.run = cfg, model, tasks, tokenizer, run
        self.precision = precision  # fp32, bf16 (autocast) or int8 (quantized linear layers): polytask.precision

    @property
    def run_dir(self) -> Path:
        return self.run.path

    @property
    def pad_id(self) -> int:
        return pad_id(self.tokenizer)

    @classmethod
    def load(cls, run_dir: str | Path, allow_code: bool = False, precision: str = "auto") -> "Predictor":
        """Rebuild the trained model of ``run_dir`` (offline). A run folder may come from anywhere,
        so only registered components are built, and its tokenizer and backbone config never run
        their own code (``auto_map``), unless ``allow_code`` (see
        :func:`polytask.registry.registered_only`, :func:`polytask.registry.allowing_code`).
        ``precision``: fp32, bf16, int8, or auto (the run's training precision where this device
        computes it natively, else fp32): :func:`polytask.precision.prepare_inference`."""
        run = RunFolder(run_dir)
        run.require_complete()
        cfg = run.read_config()
        vocab = run.read_vocab()
        guard = allowing_code() if allow_code else registered_only(str(run.path / RunFolder.CONFIG))
        with guard:
            tasks = {tc.name: bind_inputs(cfg, build_task(tc)) for tc in cfg.tasks}
            for name, task in tasks.items():
                if name not in vocab:
                    raise CheckpointError(f"{run.path / RunFolder.VOCAB} has no vocabulary for task '{name}' "
                                          f"(config.yaml and the run's files disagree: a damaged run folder)")
                task.load_vocab_state(vocab[name])
            model = rebuild_model(cfg, run, tasks)
            tokenizer = saved_processor(cfg.model, run.path / RunFolder.TOKENIZER) or run.load_tokenizer()
        chosen = prepare_inference(model, precision, cfg.train.mixed_precision, cfg.model.kind)
        return cls(cfg, model, tasks, tokenizer, run, chosen)

    def predict(self, task: str, inputs: Sequence[Any], batch_size: int = 64, *,
                max_new_tokens: int | None = None) -> list:
        """Task ``task``'s predictions for ``inputs``, in order.

        Args:
            task: one of :attr:`tasks`.
            inputs: a list of inputs, each a string (the task's first text field; for tagging,
                whitespace-separated words), a list of words (tagging), a dict of fields (the
                task's field names or its data's column names), or a :class:`Record` read from a
                file (problems then name its file and line). A bare string is rejected.
            batch_size: inputs per forward pass.
            max_new_tokens: generation tasks only: decode at most this many tokens (default: the
                task's configured ``max_new_tokens``; larger values are allowed).

        Returns:
            One prediction per input: a label name (classification), a list of label names
            (multilabel), a float (regression), a list of tags (tagging) or a text (generation).

        Raises:
            DataError: an input lacks a field of the task or has an invalid value.
        """
        self._check_tasks([task])
        return self.predict_tasks([task], inputs, batch_size, strict=True, max_new_tokens=max_new_tokens)[task]

    def predict_all(self, inputs: Sequence[Any], batch_size: int = 64, *, tasks: Sequence[str] | None = None,
                    scores: bool = False, max_new_tokens: int | None = None) -> "AllPredictions":
        """Every task's predictions for the same inputs, each input encoded once where possible.

        An input is predicted only for the tasks whose fields it has; the others are skipped for
        that input (``None`` in that task's list) and reported in ``result.skipped``. On
        architectures whose encoder pass does not depend on the task
        (``Architecture.shared_encoder``: hard sharing, MMoE, PLE), each distinct encoded input
        runs through the encoder once and every task's head reads that one output; otherwise (and
        for generation tasks) each task gets its own pass. Image tasks share a pass when their
        evaluation preprocessing is the same (``Task.view_key``): the classification-like tasks
        (centre crop) one pass per distinct image, the dense tasks (the whole image squashed)
        another, never one across the two (:mod:`polytask.predict_images`).

        Args:
            inputs: as for :meth:`predict`; a dict may hold the fields of several tasks.
            tasks: the tasks to predict (default: all).
            scores: also compute label probabilities (``result.scores``) where a task has them.

        Returns:
            :class:`AllPredictions`: ``{task: [prediction or None per input]}`` with ``.skipped``
            (``{task: {input index: reason}}``) and ``.scores``.
        """
        names = list(tasks) if tasks is not None else list(self.tasks)
        self._check_tasks(names)
        return self.predict_tasks(names, inputs, batch_size, strict=False, scores=scores, max_new_tokens=max_new_tokens)

    def shares_encoder(self, task: str) -> bool:
        """Whether ``task`` is predicted from a task-independent encoder pass that other tasks
        share (text: one pass per distinct encoding; images: one per distinct view and image)."""
        return bool(getattr(self.model.arch, "shared_encoder", False)) and \
            type(self.tasks[task]).predict_batch is Task.predict_batch

    def generates(self, task: str) -> bool:
        """Whether ``task`` decodes text step by step (a generation task: ``max_new_tokens`` applies)."""
        return type(self.tasks[task]).predict_batch is not Task.predict_batch

    def parse_inputs(self, names: Sequence[str], inputs: Sequence[Any], strict: bool) -> ParsedInputs:
        """Validate ``inputs`` for tasks ``names`` (no tokenizing): raises DataError on an invalid value,
        or, with ``strict``, on a missing field; else missing fields skip the task for that input."""
        inputs = as_input_list(inputs)
        parsed = ParsedInputs(len(inputs))
        problems = []
        for name in names:
            t = self.tasks[name]
            for i, item in enumerate(inputs):
                # a Record (from an input file) keeps its file:line for error messages
                file, line = (item.file, item.line) if isinstance(item, Record) else ("<input>", i + 1)
                fields = task_fields(t, item.fields if isinstance(item, Record) else item)
                ex, bad = t.parse(Record(fields, file, line), with_target=False)
                missing = sorted({b.field for b in bad if b.field not in fields})
                if bad and not strict and missing and len(missing) == len({b.field for b in bad}):
                    parsed.skipped.setdefault(name, {})[i] = f"missing field(s): {', '.join(missing)}"
                    continue
                problems += [DataProblem(b.file, b.line, b.field, f"missing field (the input has: "
                                         f"{', '.join(sorted(fields)) or 'none'})") if b.field not in fields else b
                             for b in bad]
                parsed.examples.setdefault(name, []).append((i, ex))
        if problems:
            raise DataError(problems)
        return parsed

    @torch.no_grad()
    def predict_tasks(self, names: Sequence[str], inputs: Sequence[Any], batch_size: int = 64, *, strict: bool = False,
            scores: bool = False, max_new_tokens: int | None = None) -> "AllPredictions":
        """Predictions of tasks ``names`` (see :meth:`predict_all`; ``strict``: a missing field is an error)."""
        parsed = self.parse_inputs(names, inputs, strict)
        self.model.eval()
        result = AllPredictions({name: [None] * parsed.n for name in names}, parsed.skipped)
        device = module_device(self.model).type
        with generation_length(self.tasks, names, max_new_tokens), autocast(self.precision, device):
            feats = {name: self.tasks[name].encode([ex for _, ex in rows], self.tokenizer, self.cfg.model.max_length)
                     for name, rows in parsed.examples.items()}
            shared = {name: f for name, f in feats.items() if self.shares_encoder(name)}
            keys = {name: [self.tasks[name].view_key(x) for x in f] for name, f in shared.items()}
            keys = {name: k for name, k in keys.items() if None not in k}  # images: grouped by view
            text = {name: f for name, f in shared.items() if name not in keys}  # grouped by tokens
            out = one_pass(self.model, self.tasks, text, self.pad_id, batch_size, scores) if text else {}
            if keys:
                out.update(view_pass(self.model, self.tasks, {n: feats[n] for n in keys}, keys, self.pad_id,
                                     batch_size, scores))
            for name, f in feats.items():
                if name not in shared:
                    out[name] = task_pass(self.model, self.tasks[name], f, self.pad_id, batch_size, scores)
        for name, (preds, probs) in out.items():
            for (i, _), pred, prob in zip(parsed.examples[name], preds, probs):
                result[name][i] = pred
                if prob is not None:
                    result.scores.setdefault(name, [None] * parsed.n)[i] = prob
        return result

    def _check_tasks(self, names: Sequence[str]) -> None:
        if isinstance(names, str):
            raise PolytaskError(f"tasks: expected a list of task names, got the string {names!r}")
        for name in names:
            if name not in self.tasks:
                raise PolytaskError(f"unknown task '{name}'; this model has: {', '.join(self.tasks)}")


class AllPredictions(dict):
    """``{task: [prediction, or None where the input lacks the task's fields]}`` from
    :meth:`Predictor.predict_all`.

    Attributes:
        skipped: ``{task: {input index: reason}}`` for the inputs a task was not predicted for.
        scores: ``{task: [{label: probability} or None]}`` when asked for and the task has them.
    """

    def __init__(self, preds: dict[str, list], skipped: dict[str, dict[int, str]] | None = None):
        super().__init__(preds)
        self.skipped: dict[str, dict[int, str]] = skipped or {}
        self.scores: dict[str, list] = {}


class ParsedInputs:
    """Validated inputs per task: ``examples[task] = [(input index, Example)]``, and ``skipped``."""

    def __init__(self, n: int):
        self.n = n
        self.examples: dict[str, list] = {}
        self.skipped: dict[str, dict[int, str]] = {}


def as_input_list(inputs: Any) -> list:
    """``inputs`` as a list; a bare string or dict (one input, not a list of them) is an error."""
    if isinstance(inputs, (str, bytes, dict)):
        raise PolytaskError(f"inputs: expected a list of inputs, got one {type(inputs).__name__}; "
                            f"wrap a single input in a list: [{inputs!r:.40}]")
    try:
        return list(inputs)
    except TypeError:
        raise PolytaskError(f"inputs: expected a list of inputs, got {type(inputs).__name__}") from None


def task_fields(t: Task, item: Any) -> dict[str, Any]:
    """One raw input as the record fields ``t.parse`` reads (the task's field names mapped to its columns)."""
    if not isinstance(item, dict):
        return {t.column(t.input_fields[0]): item}
    named = set(t.input_fields) | set(t.optional_fields)  # input_fields: the text fields, or the image field
    out = {k: v for k, v in item.items() if k not in named}
    for k, v in item.items():
        if k in named and (t.column(k) == k or t.column(k) not in item):  # an explicit column wins
            out[t.column(k)] = v
    return out


@contextmanager
def generation_length(tasks: dict[str, Task], names: Sequence[str], max_new_tokens: int | None):
    """Generation tasks among ``names`` decode at most ``max_new_tokens`` tokens inside the block."""
    if max_new_tokens is None:
        yield
        return
    if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or max_new_tokens < 1:
        raise PolytaskError(f"max_new_tokens: expected a positive integer, got {max_new_tokens!r}")
    changed = [tasks[n].cfg for n in names if hasattr(tasks[n].cfg, "max_new_tokens")
               and type(tasks[n]).predict_batch is not Task.predict_batch]
    saved = [c.max_new_tokens for c in changed]
    for c in changed:
        c.max_new_tokens = max_new_tokens
    try:
        yield
    finally:
        for c, v in zip(changed, saved):
            c.max_new_tokens = v


def one_pass(model: MultiTaskModel, tasks: dict[str, Task], feats: dict[str, list[dict]], pad: int,
             batch_size: int, scores: bool) -> dict[str, tuple[list, list]]:
    """Predictions of every task in ``feats`` with ONE encoder pass per distinct encoded input.

    Inputs whose encodings (token ids and segment ids) are equal, within or across tasks, share a
    row; rows are batched by length; each task's head reads its rows of the encoder output."""
    index: dict[tuple, int] = {}
    rows: list[dict] = []
    where: dict[str, list[int]] = {}
    for name, fs in feats.items():
        for f in fs:
            key = (tuple(f["input_ids"]), tuple(f.get("token_type_ids", ())))
            if key not in index:
                index[key] = len(rows)
                rows.append(f)
            where.setdefault(name, []).append(index[key])
    users: dict[int, list[tuple[str, int]]] = {}
    for name, ids in where.items():
        for pos, r in enumerate(ids):
            users.setdefault(r, []).append((name, pos))
    out = {name: ([None] * len(fs), [None] * len(fs)) for name, fs in feats.items()}
    for idx in eval_batches([len(r["input_ids"]) for r in rows], batch_size):
        encoded = model.arch.encode(to_device(pad_rows([rows[r] for r in idx], pad), module_device(model)))
        per_task: dict[str, list[tuple[int, int]]] = {}
        for b, r in enumerate(idx):
            for name, pos in users[r]:
                per_task.setdefault(name, []).append((b, pos))
        for name, pairs in per_task.items():
            t = tasks[name]
            batch = to_device(t.collate([feats[name][pos] for _, pos in pairs], pad), module_device(model))
            hidden = encoded[[b for b, _ in pairs], : batch["input_ids"].shape[1]]
            f = model.arch.task_features(hidden, batch, name)
            logits = model.heads[name](f.hidden, f.mask)
            preds, probs = t.decode(logits, batch), probabilities(t, logits, scores)
            for (_, pos), p, q in zip(pairs, preds, probs):
                out[name][0][pos], out[name][1][pos] = p, q
    return out


def task_pass(model: MultiTaskModel, t: Task, feats: list[dict], pad: int, batch_size: int,
              scores: bool) -> tuple[list, list]:
    """Task ``t``'s predictions (and probabilities) with its own forward passes."""
    preds: list = [None] * len(feats)
    probs: list = [None] * len(feats)
    for idx in eval_batches([feature_length(f) for f in feats], batch_size):
        batch = to_device(t.collate([feats[i] for i in idx], pad), module_device(model))
        if type(t).predict_batch is Task.predict_batch:
            logits, _ = model(batch, t.name)
            got, q = t.decode(logits, batch), probabilities(t, logits, scores)
        else:  # generation decodes step by step
            got, q = t.predict_batch(model, batch), [None] * len(idx)
        for i, p, s in zip(idx, got, q):
            preds[i], probs[i] = p, s
    return preds, probs


def pad_rows(rows: list[dict], pad: int) -> dict[str, torch.Tensor]:
    """Model inputs for encoded rows, right-padded to the longest (as ``Task.collate`` pads)."""
    width = max(len(r["input_ids"]) for r in rows)

    def pad_to(key: str, value: int, fill=None) -> torch.Tensor:
        out = torch.full((len(rows), width), value, dtype=torch.long)
        for i, r in enumerate(rows):
            seq = r[key] if fill is None else [fill] * len(r["input_ids"])
            out[i, : len(seq)] = torch.tensor(seq, dtype=torch.long)
        return out

    batch = {"input_ids": pad_to("input_ids", pad), "attention_mask": pad_to("input_ids", 0, fill=1)}
    if "token_type_ids" in rows[0]:
        batch["token_type_ids"] = pad_to("token_type_ids", 0)
    return batch


def evaluate_run(run_dir: str | Path, split: str = "dev", overrides: list[str] | None = None,
                 allow_code: bool = False, precision: str = "auto") -> dict:
    """A trained run's metrics on its configured ``split`` data; ``overrides`` may move the data
    (``data_dir=...``). The saved label vocabularies are used, not ones refit on today's files.
    ``precision``: as for :meth:`Predictor.load` (auto: as the run's own dev evaluation was run)."""
    if split not in ("dev", "test", "train"):
        raise PolytaskError(f"--split {split!r}: the splits are dev, test and train (the names of data.dev, "
                            f"data.test and data.train in the config)")
    pred = Predictor.load(run_dir, allow_code=allow_code, precision=precision)
    cfg = pred.run.read_config(overrides)
    data = prepare(cfg, splits=tuple(dict.fromkeys(("train", split))))
    for name, td in data.items():
        td.task = pred.tasks[name]
        if split != "train":
            td.examples.pop("train", None)
    encode_all(data, pred.tokenizer, cfg.model.max_length)
    with autocast(pred.precision, module_device(pred.model).type):
        results = evaluate(pred.model, data, split, pred.pad_id, cfg.train.eval_batch_size)
    if not results:
        raise PolytaskError(f"no task of {run_dir} has {split} data (data.{split} in its config.yaml)")
    return {"split": split, "metrics": results, "macro": macro_score(results, pred.tasks), "precision": pred.precision}
