"""From a Config to tokenized, validated per-task splits: every data problem found up front.

``prepare`` reads every split of every task, validates each record with its task, fits the
label vocabularies on train, checks dev/test against them, and raises one :class:`DataError`
listing every problem (file, line, field) before any model is built. ``check`` runs the same
path without a model.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from polytask.backbones.io import PIXELS, io_of_kind
from polytask.config import Config, TaskConfig
from polytask.data.records import Record, read_records
from polytask.errors import ConfigError, DataError, DataProblem, group_problems
from polytask.tasks import Example, Task, build_task

SPLITS = ("train", "dev", "test")


@dataclass
class TaskData:
    """One task's examples per split; ``features`` are filled by :func:`encode_all`."""

    task: Task
    examples: dict[str, list[Example]] = field(default_factory=dict)
    features: dict[str, list[dict]] = field(default_factory=dict)
    skipped: dict[str, list[DataProblem]] = field(default_factory=dict)  # invalid rows dropped (on_invalid: skip)


SLICE = re.compile(r"^(?P<path>.+)\[(?P<start>\d*):(?P<stop>\d*)\]$")


def split_slice(value: str) -> tuple[str, slice | None]:
    """``file[a:b]`` (the Hugging Face datasets split-slicing convention, in examples): the file
    and the slice of its examples; a plain path: the path and None. E.g. SQuAD publishes no test
    set: ``dev: squad/dev.json[:5000]`` and ``test: squad/dev.json[5000:]`` split its dev set."""
    m = SLICE.match(value)
    if not m:
        return value, None
    start, stop = (int(x) if x else None for x in (m["start"], m["stop"]))
    return m["path"], slice(start, stop)


def resolve_path(cfg: Config, task: TaskConfig, split: str) -> str | None:
    value = getattr(task.data, split)
    if value is None or task.data.format in ("hf", "synthetic"):
        return value
    value, part = split_slice(value)
    path = Path(value).expanduser()
    path = str(path if path.is_absolute() else Path(cfg.data_dir) / path)
    return path if part is None else f"{path}[{part.start or ''}:{part.stop or ''}]"


def read_split(cfg: Config, tc: TaskConfig, split: str) -> tuple[list[Record], list[DataProblem]]:
    where = resolve_path(cfg, tc, split)
    limit = tc.data.max_train if split == "train" else tc.data.max_eval
    if tc.data.format == "synthetic":
        from polytask.data.synthetic import synthetic_records

        n = limit or {"train": 600, "dev": 200, "test": 200}[split]
        return synthetic_records(tc.data.dataset or tc.name, split, n, seed=cfg.seed), []
    if tc.data.format == "hf":
        files = tc.data.data_files
        if files:  # local files through a datasets builder: paths relative to data_dir
            files = {k: str(Path(cfg.data_dir) / v) if not Path(v).is_absolute() else v for k, v in files.items()}
        return read_records(tc.data.dataset or "", "hf", split=where, config_name=tc.data.hf_config,
                            data_files=files, max_examples=limit)
    where, part = split_slice(where)
    if not Path(where).exists():
        origin = f"tasks[{tc.name}].data.{split}"
        hint = f" (relative to data_dir={cfg.data_dir!r})" if not Path(split_slice(getattr(tc.data, split))[0]).is_absolute() else ""
        return [], [DataProblem(where, None, None, f"file not found, configured at {origin}{hint}")]
    read_limit = limit if part is None else (None if part.stop is None else part.stop)
    records, problems = read_records(
        where, tc.data.format, max_examples=read_limit, delimiter=tc.data.delimiter,
        tag_column=tc.data.tag_column, encoding=tc.data.encoding,
    )
    if part is not None:
        records = records[part][:limit] if limit else records[part]
    return records, problems


def prepare(cfg: Config, splits: tuple[str, ...] = SPLITS) -> dict[str, TaskData]:
    """Read, validate and fit every task; raise DataError with every problem found.

    Invalid rows are problems, unless the task's ``data.on_invalid`` is ``skip``: then they are
    dropped and listed in ``TaskData.skipped``, as long as they are at most ``data.max_invalid``
    of their split's rows.
    """
    check_combination(cfg)
    problems: list[DataProblem] = []
    out: dict[str, TaskData] = {}
    for tc in cfg.tasks:
        out[tc.name], found = prepare_task(cfg, tc, splits)
        problems += found
    if problems:
        rows = [p for p in problems if p.line is not None]
        hint = ("(to train without the invalid rows instead, set data.on_invalid: skip on their task, or "
                "override tasks.NAME.data.on_invalid=skip; the skipped rows are listed)") if rows else None
        raise DataError(problems, hint=hint)
    return out


def check_combination(cfg: Config) -> None:
    """Refuse, before reading anything, a task/backbone/architecture combination that cannot
    work: a task type that cannot read what the backbone consumes, an architecture that cannot
    share it (each says why: ``Task.reads``, ``Architecture.refuses``)."""
    from polytask.architectures import architecture_class
    from polytask.tasks import REGISTRY

    io = io_of_kind(cfg.model.kind)
    readers = ", ".join(n for n, c in REGISTRY.items() if io.consumes in c.reads)
    for tc in cfg.tasks:
        cls = REGISTRY.get(tc.type)
        if cls is not None and io.consumes not in cls.reads:
            raise ConfigError(f"tasks[{tc.name}]: a {tc.type} task reads {', '.join(sorted(cls.reads))}, but "
                              f"model.kind={cfg.model.kind} is {io.describe}; with it use {readers}")
    arch = architecture_class(cfg.architecture.name)
    why = arch.refuses(io)
    if why:
        raise ConfigError(f"architecture.name: {cfg.architecture.name} cannot be used with model.kind="
                          f"{cfg.model.kind}: {why}")
    dense = [tc for tc in cfg.tasks if getattr(REGISTRY.get(tc.type), "reads_maps", False)]
    if dense and not arch.variant_for(io).passes_maps:
        raise ConfigError(f"tasks[{dense[0].name}]: a {dense[0].type} task reads the backbone's feature pyramid, "
                          f"which architecture {cfg.architecture.name} does not pass to the heads; use hard or mtan")


def bind_inputs(cfg: Config, task: Task) -> Task:
    """The task reads images when the backbone consumes pixels (polytask.preprocess.ImageInput)."""
    if io_of_kind(cfg.model.kind).consumes == PIXELS:
        from polytask.preprocess import ImageInput

        task.bind_inputs(ImageInput(convert=cfg.model.image.convert))
    return task


def prepare_task(cfg: Config, tc: TaskConfig, splits: tuple[str, ...]) -> tuple[TaskData, list[DataProblem]]:
    task = bind_inputs(cfg, build_task(tc))
    data = TaskData(task)
    problems: list[DataProblem] = []
    row_problems: dict[str, list[DataProblem]] = {}
    train_readable = True
    for split in splits:
        if getattr(tc.data, split) is None and tc.data.format != "synthetic":
            if split == "train":
                problems.append(DataProblem(f"<config tasks[{tc.name}]>", None, "data.train",
                                            "no training data configured"))
                train_readable = False
            continue
        records, found = read_split(cfg, tc, split)
        problems += [p for p in found if p.line is None]  # the file itself: never skipped
        row_problems[split] = [p for p in found if p.line is not None]
        if split == "train" and found:
            train_readable = False  # already reported; "no examples" would say it twice
        data.examples[split] = []
        for rec in records:
            ex, bad = task.parse(rec)
            row_problems[split] += bad
            if ex is not None:
                data.examples[split].append(ex)
        if split == "dev" and not records and not found:
            problems.append(DataProblem(str(resolve_path(cfg, tc, "dev")), None, None,
                                        f"task '{tc.name}' has an empty dev split (model selection and early "
                                        f"stopping would leave the task out); fill it, or remove data.dev to "
                                        f"train the task without dev metrics"))
    train = data.examples.get("train", [])
    if train:  # the valid rows (invalid ones were never examples)
        task.fit(train)
        for split in ("dev", "test"):
            row_problems.setdefault(split, []).extend(eval_problems(task, data, split))
    for split, found in row_problems.items():
        problems += invalid_rows(tc, data, split, found)
    if "train" in splits and not data.examples.get("train") and train_readable:
        problems.append(DataProblem(str(resolve_path(cfg, tc, "train")), None, None,
                                    f"task '{tc.name}' has no training examples"))
    return data, problems


def eval_problems(task: Task, data: TaskData, split: str) -> list[DataProblem]:
    """Dev/test rows the fitted task cannot score (e.g. a label never seen in training)."""
    out = []
    for ex in data.examples.get(split, []):
        msg = task.check_eval(ex)
        if msg:
            file, _, line = ex.source.rpartition(":")
            out.append(DataProblem(file, int(line), task.column(task.target_field), msg))
    return out


def invalid_rows(tc: TaskConfig, data: TaskData, split: str, found: list[DataProblem]) -> list[DataProblem]:
    """Apply ``data.on_invalid`` to a split's invalid rows: the problems that remain."""
    if not found or tc.data.on_invalid == "error":
        return found
    bad = {(p.file, p.line) for p in found}
    kept = [ex for ex in data.examples.get(split, []) if tuple(_location(ex.source)) not in bad]
    total = len(kept) + len(bad)
    if len(bad) > tc.data.max_invalid * total:
        return found + [DataProblem(found[0].file, None, None, f"{len(bad)} of {total} rows of task '{tc.name}' "
                                    f"({split}) are invalid, more than data.max_invalid={tc.data.max_invalid:g}")]
    data.examples[split] = kept
    data.skipped[split] = found
    return []


def data_warnings(data: dict[str, TaskData], show: int = 3) -> list[str]:
    """What the user should see before training: per task and split, the invalid rows skipped
    (how many, the first few), and what fitting found suspicious (``Task.warnings``)."""
    out = []
    for name, td in data.items():
        out += [f"task '{name}': {w}" for w in td.task.warnings]
        for split, found in td.skipped.items():
            first = "; ".join(group_problems(found)[:show])
            out.append(f"skipped {len(found)} invalid row{'s' if len(found) != 1 else ''} of task '{name}' "
                       f"({split}, data.on_invalid=skip): {first}")
    return out


def label_summary(td: TaskData) -> str:
    """What ``check`` prints about a task's labels: their order (the head's output order) with
    training counts, and the positive class of binary F1; empty for tasks without labels."""
    summary = td.task.data_summary(td.examples.get("train", []), td.features.get("train"))
    if summary:
        return f", train: {summary}"
    labels = td.task.vocab_state().get("labels")
    if not labels:
        return ""
    counts: dict[str, int] = {}
    for ex in td.examples.get("train", []):
        ref = td.task.reference(ex)
        for label in ref if isinstance(ref, list) else [ref]:
            counts[label] = counts.get(label, 0) + 1
    shown = ", ".join(f"{label} ({counts.get(label, 0)})" for label in labels[:12])
    more = f", ... {len(labels) - 12} more" if len(labels) > 12 else ""
    positive = getattr(td.task, "positive_label", None)
    binary = f"; binary f1 is of {positive!r}" if positive is not None else ""
    return f", {len(labels)} labels in this order: {shown}{more}{binary}"


def _location(source: str) -> tuple[str, int]:
    file, _, line = source.rpartition(":")
    return file, int(line) if line.isdigit() else -1


def encode_all(data: dict[str, TaskData], tokenizer, max_length: int) -> None:
    """Tokenize every split of every task once, before training."""
    for td in data.values():
        for split, examples in td.examples.items():
            td.features[split] = td.task.encode(examples, tokenizer, max_length) if examples else []
        td.task.for_training(td.features.get("train", []))  # augmented when collated (images)
