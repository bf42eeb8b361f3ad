"""Typed configuration: YAML -> dataclasses, ``a.b=c`` overrides, errors that name the key path.

The schema is the dataclasses below; their docstrings and field comments are the reference
(README's "Configuration" section shows a worked example). Loading is strict: an unknown key,
a wrong type or a missing required key is a :class:`ConfigError` naming the dotted path, e.g.
``tasks[1].data.trian: unknown key (known: train, dev, test, ...)``.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from polytask.errors import ConfigError

# ---------------------------------------------------------------------------------------------
# Schema


@dataclass
class DataConfig:
    """Where a task's examples come from. Relative paths are resolved against ``data_dir``."""

    format: str | None = None  # jsonl | csv | tsv | conll | hf | synthetic (None: from extension)
    train: str | None = None  # file path, or split name for hf/synthetic
    dev: str | None = None
    test: str | None = None
    dataset: str | None = None  # hf: datasets name ("glue", "json", ...); synthetic: demo task name
    hf_config: str | None = None
    data_files: dict[str, str] | None = None  # hf with a local builder (json/csv): split -> file
    max_train: int | None = None  # keep the first N training examples
    max_eval: int | None = None  # keep the first N dev/test examples
    delimiter: str | None = None  # CSV/TSV override
    tag_column: int = -1  # CoNLL: which column holds the tag
    encoding: str = "utf-8"
    on_invalid: Literal["error", "skip"] = "error"  # invalid rows: stop with every problem, or drop them
    max_invalid: float = 0.01  # with skip: more than this fraction of a split's rows invalid is still an error


@dataclass
class TaskConfig:
    """One task: its type, data, the fields it reads, and how it is scored."""

    name: str
    type: str  # classification | multilabel | regression | tagging
    data: DataConfig = field(default_factory=DataConfig)
    # task field -> column in the data: text, text_pair, label (classification/multilabel),
    # target (regression), tokens / tags (tagging). Unlisted fields use their own name.
    columns: dict[str, str] = field(default_factory=dict)
    labels: list[str] | None = None  # fix the label set/order (default: from training data)
    # classification: the data's label values -> the names predictions, metrics and reports use
    # (TREC's 0..5 -> ABBR, ENTY, ...); labels and positive_label then name the new names
    label_names: dict[Any, str] | None = None
    pooling: Literal["cls", "mean", "attention"] = "cls"  # attention: a learned attention over positions
    main_metric: str | None = None  # default per type: accuracy, micro_f1, pearson, f1
    positive_label: str | None = None  # binary classification: the class whose F1 is "f1" (default: the second label)
    head_dropout: float = 0.1
    label_separator: str = ","  # multilabel: labels in one string are split on this
    # generation (text-to-text, model.kind: causal_lm; docs/llm.md):
    prompt: str | None = None  # format string over the record's fields, e.g. "Summarize:\n{text}\n"
    target: str | None = None  # column of the target text (default: columns.target, else "target")
    chat_template: bool = True  # wrap the prompt in the tokenizer's chat template when it has one
    system: str | None = None  # the chat template's system message (None: the template's default)
    max_new_tokens: int = 32  # decoding length (training targets are cut to it)
    num_beams: int = 1  # 1: greedy decoding; >1: beam search
    packing: bool = False  # pack several training examples into one sequence (no cross-attention)
    # extractive_qa (docs/qa.md): windows overlap by doc_stride tokens; decoding limits and no-answer rule
    doc_stride: int = 128
    max_answer_length: int = 30  # tokens
    n_best: int = 20  # best spans kept per window while decoding
    allow_unanswerable: bool = False  # SQuAD 2.0: questions without answers
    # no answer when the [CLS] start+end logit beats the best span's by more than this; auto: tuned on dev
    null_threshold: float | Literal["auto"] = 0.0
    max_windows_per_batch: int | None = None  # windows one training batch may hold (default: 1.5 x train.batch_size)
    # segmentation / detection on images (docs/vision.md)
    ignore_index: int | None = None  # segmentation: the mask value neither trained nor scored (Pets trimaps: 3)
    palette: dict[str, str] | None = None  # segmentation: colour masks, "#rrggbb" -> class name
    head_channels: int = 64  # segmentation / detection: the decoder's width over the pyramid
    score_threshold: float = 0.05  # detection: keep boxes scoring at least this
    nms_iou: float = 0.5  # detection: suppress a box overlapping a better one of its class by more (1: no NMS)
    max_detections: int = 100  # detection: boxes kept per image


@dataclass
class ImageConfig:
    """Image inputs (``model.kind: vision``; docs/vision.md). ``size``/``mean``/``std`` None: the
    backbone's own preprocessing. Augmentation applies to training batches only, never to eval."""

    size: int | None = None  # square side fed to the backbone (pixels)
    mean: list[float] | None = None  # per-channel normalisation of [0, 1] pixels
    std: list[float] | None = None
    crop_scale: list[float] = field(default_factory=lambda: [0.8, 1.0])  # random resized crop: area range; [1, 1]: none
    flip: bool = True  # random horizontal flip (p = 0.5); false for digits, text, left/right labels
    jitter: float = 0.0  # colour jitter strength: brightness, contrast, saturation each in [1 - j, 1 + j]
    convert: bool = False  # grey / RGBA / palette files: convert to RGB instead of reporting them


@dataclass
class ModelConfig:
    """The shared backbone: a hub name, a local folder, or ``minilm`` (the packaged MiniLM)."""

    backbone: str = "minilm"  # with kind causal_lm, the encoder default means smollm2 (SmolLM2-135M)
    max_length: int = 128  # truncation only; batches are padded to their own longest example
    dtype: Literal["float32", "bfloat16"] = "float32"
    kind: Literal["encoder", "causal_lm", "vision"] = "encoder"  # causal_lm: a decoder LLM (docs/llm.md); vision: docs/vision.md
    image: ImageConfig = field(default_factory=ImageConfig)  # kind vision only
    gradient_checkpointing: bool = False  # recompute activations in backward: less memory, ~30% more compute


@dataclass
class ComponentConfig:
    """A registered component chosen by name, with its ``__init__`` arguments."""

    name: str
    args: dict[str, Any] = field(default_factory=dict)


@dataclass
class TrainConfig:
    """The optimisation loop. Steps are optimizer steps (each ``grad_accum`` micro-batches)."""

    max_steps: int = 300
    batch_size: int = 32
    eval_batch_size: int = 64
    lr: float = 5e-5
    head_lr: float | None = None  # default: same as lr
    weighting_lr: float = 0.01  # for methods with learnable parameters (uncertainty, GradNorm)
    weight_decay: float = 0.01  # applied to weight matrices only (no biases, no LayerNorm)
    warmup_ratio: float = 0.1
    schedule: Literal["linear", "cosine", "constant"] = "linear"
    grad_clip: float | None = 1.0
    grad_accum: int = 1
    eval_every: int = 100
    early_stopping: int | None = None  # stop after N evaluations without improvement
    log_every: int = 10
    # where gradient-based weighting methods take task gradients:
    # representation | last_layers | shared (all shared parameters: T x P memory) | adapters
    # (a LoRA shared by all tasks on a frozen LLM); see docs/weighting.md
    grad_space: Literal["representation", "last_layers", "shared", "adapters"] = "representation"
    grad_layers: int = 1  # for last_layers
    # steps that train one task (loss-based methods) measure no task-gradient cosines; a probe
    # takes them (eval mode, one batch per task, no update) at the first log step at or after
    # every multiple of cosine_every. Default: eval_every; 0: never.
    cosine_every: int | None = None
    length_grouping: bool = True
    checkpoint_every: int | None = None  # default: eval_every; checkpoints are what --resume uses
    keep_checkpoints: int = 2  # newest N kept (the best weights are kept separately)
    on_nonfinite: Literal["skip", "stop"] = "skip"  # a NaN/inf loss or gradient: skip the batch, or stop
    max_skips: int = 10  # stop when more than this many batches are skipped ...
    skip_window: int = 100  # ... within this many steps
    num_threads: int | None = None  # torch CPU threads (default: torch's choice; printed at start)
    # micro-steps' batches collated ahead on a background thread (pinned on CUDA) while a step
    # computes; 0: each batch is collated when its step needs it. Never changes what is trained.
    prefetch: int = 2
    # processes that do the per-item work of the batches the prefetch thread makes (and of
    # evaluation): image decoding and augmentation (docs/vision.md); 0: on the thread itself.
    # Never changes what is trained (an item's result does not depend on where it is made).
    workers: int = 0
    device: Literal["auto", "cpu", "cuda", "mps"] = "auto"  # auto: what Accelerate picks (CUDA, MPS, else CPU)
    # autocast through Accelerate; fp16 adds a gradient scaler; auto: bf16 where the device computes
    # it natively (CUDA with bf16, CPUs with AMX; printed at start), else no (float32)
    mixed_precision: Literal["auto", "no", "bf16", "fp16"] = "auto"
    # fsdp: parameters, gradients and optimizer state sharded over the processes (torch FSDP2
    # fully_shard per transformer block; docs/distributed.md, polytask.sharding); none: data parallel
    shard: Literal["none", "fsdp"] = "none"
    # the backbone through torch.compile (encoder backbones, unsharded; the first steps compile it;
    # a CPU needs a C++ compiler): polytask.steps.compile_backbone, docs/distributed.md
    compile: bool = False
    report_to: list[str] = field(default_factory=list)  # trackers: tensorboard, mlflow, wandb (docs/tracking.md)


@dataclass
class MethodConfig:
    """One multi-task variant for ``polytask compare``: the base config with these changes.

    ``weighting`` / ``sampling`` / ``architecture`` replace the base config's component when
    given; ``overrides`` are ``a.b=c`` strings applied after them (e.g. ``train.lr=1e-4``).
    """

    name: str  # a folder name: letters, digits, '-', '_', '.'
    weighting: ComponentConfig | None = None
    sampling: ComponentConfig | None = None
    architecture: ComponentConfig | None = None
    overrides: list[str] = field(default_factory=list)


@dataclass
class SearchConfig:
    """``compare.search``: Optuna TPE search instead of the exhaustive grid (docs/compare.md).

    ``space`` maps override keys to a list of choices or ``{low, high, log, step}``; every model
    and seed gets ``trials`` trials (the grid's fairness rule), chosen on dev.
    """

    trials: int = 8  # trials per model and seed, the same for every model
    space: dict[str, Any] = field(default_factory=dict)  # key -> [choices] | {low, high, log, step}
    seed: int = 0  # the TPE sampler's seed (the same for every model's study)
    startup_trials: int | None = None  # random trials before TPE's model (default: max(1, trials // 3))


@dataclass
class CompareConfig:
    """``polytask compare``: single-task baselines vs multi-task methods, over seeds.

    See docs/compare.md. ``budget: converge`` (default) trains every model with early stopping on
    its dev score (patience ``train.early_stopping``; default: the evaluations of one
    equal-examples budget) up to ``cap_factor`` times its
    equal-examples budget; ``budget: examples`` gives each single-task model as many examples of
    its task as the base multi-task config shows it (and methods that draw every task each
    step get proportionally fewer steps); ``budget: steps`` gives every model ``train.max_steps``.
    ``grid`` (``{train.lr: [1e-5, 3e-5]}``) trains every model at every point, each chosen on dev.
    """

    seeds: list[int] | None = None  # default: [seed]
    budget: Literal["converge", "examples", "steps"] = "converge"
    cap_factor: float = 3.0  # budget converge: the step cap is this multiple of the examples budget
    grid: dict[str, list[Any]] = field(default_factory=dict)  # override key -> values, same for every model
    jobs: int = 1  # sub-runs trained at once (jobs > 1: each in its own process, one GPU or one torch thread each)
    methods: list[MethodConfig] = field(default_factory=list)  # default: one method, the base config
    single_overrides: list[str] = field(default_factory=list)  # applied to single-task runs only
    isolate: bool = True  # each sub-run in a fresh process (exact peak memory, memory returned)
    inference_examples: int = 256  # dev examples per task for the serving-cost measurement (0: skip)
    search: SearchConfig | None = None  # Optuna TPE search, an alternative to grid
    executor: Literal["local", "ray"] = "local"  # where sub-runs train (`--executor`)
    ray_address: str | None = None  # executor ray: the cluster (`--ray-address`); None: a local Ray instance
    retries: int = 2  # executor ray: attempts after a sub-run's worker died (Ray's max_retries)


@dataclass
class Config:
    """A whole run. ``data_dir`` anchors relative data paths; ``output_dir/name`` is the run."""

    tasks: list[TaskConfig]
    name: str = "run"
    output_dir: str = "runs"
    data_dir: str = "."
    seed: int = 13
    model: ModelConfig = field(default_factory=ModelConfig)
    architecture: ComponentConfig = field(default_factory=lambda: ComponentConfig("hard"))
    weighting: ComponentConfig = field(default_factory=lambda: ComponentConfig("equal"))
    sampling: ComponentConfig = field(default_factory=lambda: ComponentConfig("proportional"))
    train: TrainConfig = field(default_factory=TrainConfig)
    compare: CompareConfig | None = None  # polytask compare only

    @property
    def run_dir(self) -> Path:
        return Path(self.output_dir) / self.name

    def task(self, name: str) -> TaskConfig:
        for t in self.tasks:
            if t.name == name:
                return t
        raise KeyError(name)


# ---------------------------------------------------------------------------------------------
# Loading


def load_config(path: str | Path, overrides: list[str] | None = None) -> Config:
    """Read a YAML file, apply ``key.sub=value`` overrides, and build a validated Config."""
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"config file not found: {path}")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: invalid YAML: {exc}") from exc
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of keys")
    for item in overrides or []:
        apply_override(raw, item)
    return from_dict(raw, source=str(path))


def from_dict(raw: dict, source: str = "<config>") -> Config:
    unknown = unknown_keys(Config, raw, "")  # every unknown key at once, before the first other error
    if len(unknown) == 1:
        raise ConfigError(unknown[0])
    if unknown:
        raise ConfigError(f"{len(unknown)} unknown keys:\n" + "\n".join(f"  - {u}" for u in unknown))
    cfg = _build(Config, raw, "")
    validate(cfg, source)
    return cfg


def to_dict(cfg: Any) -> Any:
    """Plain-data form (for saving the resolved config next to the weights)."""
    return dataclasses.asdict(cfg)


def differences(a: Any, b: Any, ignore: set[str] | frozenset[str] = frozenset()) -> list[str]:
    """Dotted keys (``train.lr``, ``tasks.0.data.max_train``) where two configs differ.

    ``a`` and ``b`` are Configs or their plain-data form; keys in ``ignore`` (dotted) are
    skipped with everything under them; numbers compare by value (``1`` equals ``1.0``).
    """
    out: list[str] = []

    def plain(x: Any) -> Any:
        return to_dict(x) if dataclasses.is_dataclass(x) else x

    def walk(x: Any, y: Any, path: str) -> None:
        if path in ignore:
            return
        if isinstance(x, dict) and isinstance(y, dict):  # keys by name: JSON saves {1: ..} as {"1": ..}
            x, y = ({str(k): v for k, v in d.items()} for d in (x, y))
            for k in sorted(set(x) | set(y)):
                walk(x.get(k), y.get(k), _join(path, k))
        elif isinstance(x, (list, tuple)) and isinstance(y, (list, tuple)) and len(x) == len(y):
            for i, (u, v) in enumerate(zip(x, y)):
                walk(u, v, _join(path, str(i)))
        elif x != y and not (_is_number(x) and _is_number(y) and float(x) == float(y)):
            out.append(path)

    walk(plain(a), plain(b), "")
    return out


def _is_number(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


def apply_override(raw: dict, item: str) -> None:
    """Apply ``a.b.c=value`` to the raw mapping. ``tasks.NAME.x`` or ``tasks.0.x`` address a task.

    The value is parsed as YAML (``3``, ``1e-4``, ``true``, ``[a, b]``, ``{k: v}``).
    """
    key, sep, text = item.partition("=")
    if not sep or not key:
        raise ConfigError(f"override '{item}' must look like key.sub=value")
    value = yaml.safe_load(text) if text.strip() else None
    parts = key.strip().split(".")
    node: Any = raw
    for i, part in enumerate(parts[:-1]):
        node = _child(node, part, ".".join(parts[: i + 1]))
    last = parts[-1]
    if isinstance(node, list):
        node[_list_index(node, last, key)] = value
    else:
        node[last] = value


def _child(node: Any, part: str, path: str) -> Any:
    if isinstance(node, list):
        return node[_list_index(node, part, path)]
    if not isinstance(node, dict):
        raise ConfigError(f"override path '{path}' goes through a non-mapping value")
    return node.setdefault(part, {})


def _list_index(items: list, part: str, path: str) -> int:
    if part.isdigit() and int(part) < len(items):
        return int(part)
    for i, item in enumerate(items):  # address list items by their name (tasks.sst2.x)
        if isinstance(item, dict) and item.get("name") == part:
            return i
    names = [str(item["name"]) for item in items if isinstance(item, dict) and "name" in item]
    close = difflib.get_close_matches(part, names, n=1, cutoff=0.6)
    known = f" (known: {', '.join(names)}, or an index 0..{len(items) - 1})" if names else (
        f" (indices 0..{len(items) - 1})" if items else " (the list is empty)")
    raise ConfigError(f"override path '{path}': no list item '{part}'{known}"
                      + (f"; did you mean '{close[0]}'?" if close else ""))


def _build(tp: Any, value: Any, path: str) -> Any:
    """Check ``value`` against type ``tp`` recursively; build dataclasses."""
    where = path or "<top>"
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp):
        return _build_dataclass(tp, value, path)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _build(arg, value, path)
            except ConfigError as exc:
                errors.append(str(exc))
        raise ConfigError(errors[0] if len(errors) == 1 else f"{where}: {_show(value)} fits none of {tp}")
    if origin is Literal:
        choices = typing.get_args(tp)
        if value is False and "no" in choices:  # YAML 1.1 reads a bare `no` as false
            value = "no"
        if value not in choices:
            raise ConfigError(f"{where}: {_show(value)} is not one of {list(choices)}")
        return value
    if origin is list:
        if not isinstance(value, list):
            raise ConfigError(f"{where}: expected a list, got {_show(value)}")
        (item_tp,) = typing.get_args(tp)
        return [_build(item_tp, v, f"{path}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {_show(value)}")
        key_tp, val_tp = typing.get_args(tp)
        return {_build(key_tp, k, path): _build(val_tp, v, _join(path, str(k))) for k, v in value.items()}
    if tp is Any:
        return value
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if tp is float and isinstance(value, str):
        try:  # YAML 1.1 reads "5e-5" as a string; accept it as the number it obviously is
            return float(value)
        except ValueError:
            pass
    if tp in (int, float) and isinstance(value, bool):
        raise ConfigError(f"{where}: expected {tp.__name__}, got {_show(value)}")
    if tp in (int, float, str, bool) and not isinstance(value, tp):
        raise ConfigError(f"{where}: expected {tp.__name__}, got {_show(value)}")
    return value


def _build_dataclass(tp: Any, value: Any, path: str) -> Any:
    """A dataclass from a mapping: unknown and missing keys are errors naming their path."""
    if not isinstance(value, dict):
        raise ConfigError(f"{path or '<top>'}: expected a mapping, got {_show(value)}")
    hints = typing.get_type_hints(tp)
    fields = {f.name: f for f in dataclasses.fields(tp)}
    unknown = [k for k in value if k not in fields]
    if unknown:
        raise ConfigError(_unknown_key(path, unknown[0], list(fields)))
    kwargs = {}
    for name, f in fields.items():
        if name in value:
            kwargs[name] = _build(hints[name], value[name], _join(path, name))
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise ConfigError(f"{_join(path, name)}: required key is missing")
    return tp(**kwargs)


def unknown_keys(tp: Any, value: Any, path: str) -> list[str]:
    """One line per key of the raw ``value`` that type ``tp`` (a config dataclass, or a list,
    mapping or optional of one) does not have, anywhere below it, each with its closest known key."""
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp) and isinstance(value, dict):
        hints, names = typing.get_type_hints(tp), [f.name for f in dataclasses.fields(tp)]
        return [line for k, v in value.items() for line in (
            unknown_keys(hints[k], v, _join(path, k)) if k in names else [_unknown_key(path, k, names)])]
    if origin in (typing.Union, types.UnionType):
        classes = [a for a in typing.get_args(tp) if dataclasses.is_dataclass(a)]
        return unknown_keys(classes[0], value, path) if len(classes) == 1 else []
    if origin is list and isinstance(value, list):
        return [line for i, v in enumerate(value) for line in unknown_keys(typing.get_args(tp)[0], v, f"{path}[{i}]")]
    if origin is dict and isinstance(value, dict):
        return [line for k, v in value.items() for line in unknown_keys(typing.get_args(tp)[1], v, _join(path, str(k)))]
    return []


def _unknown_key(path: str, key: Any, known: list[str]) -> str:
    close = difflib.get_close_matches(str(key), known, n=1, cutoff=0.6)
    hint = f"; did you mean '{close[0]}'?" if close else ""
    return f"{_join(path, str(key))}: unknown key{hint} (known: {', '.join(known)})"


# A name that becomes a folder (run name, task name, compare method): one path component.
NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$")


def check_name(value: str, key: str, source: str) -> None:
    if not NAME_PATTERN.match(value) or value in (".", ".."):
        raise ConfigError(f"{source}: {key}: {value!r} must be one folder name (letters, digits, '-', '_', '.'; "
                          f"no '/' or '..')")


def validate(cfg: Config, source: str) -> None:
    """Checks across fields, and ranges, that types alone cannot express."""
    if not cfg.tasks:
        raise ConfigError(f"{source}: tasks: at least one task is required")
    check_name(cfg.name, "name", source)
    seen: set[str] = set()
    for i, task in enumerate(cfg.tasks):
        check_name(task.name, f"tasks[{i}].name", source)
        if task.name in seen:
            raise ConfigError(f"{source}: tasks[{i}].name: duplicate task name '{task.name}'")
        seen.add(task.name)
    _check_ranges(cfg, source)
    for i, name in enumerate(cfg.train.report_to):  # the trackers of polytask.tracking.TRACKERS
        if name not in ("tensorboard", "mlflow", "wandb"):
            raise ConfigError(f"{source}: train.report_to[{i}]: unknown tracker {name!r} "
                              "(one of: tensorboard, mlflow, wandb)")
    peft = cfg.architecture.args.get("peft") if cfg.architecture.name == "causal_lm" else None
    if cfg.train.grad_space == "adapters" and peft != "shared_lora":
        raise ConfigError(f"{source}: train.grad_space: 'adapters' needs an adapter shared by all tasks "
                          f"(architecture causal_lm with args.peft: shared_lora); per-task adapters have "
                          f"disjoint gradients. Use 'representation'")
    from polytask.sharding import check_config

    check_config(cfg.train, source)
    if cfg.train.compile and (cfg.model.kind != "encoder" or cfg.train.shard != "none"):
        raise ConfigError(f"{source}: train.compile: true is for encoder backbones trained unsharded (model.kind: "
                          f"{cfg.model.kind}, train.shard: {cfg.train.shard} here); torch.compile is not supported "
                          f"on this combination: set train.compile=false")
    if cfg.model.kind == "causal_lm" and cfg.model.backbone == "minilm":  # the encoder default: unset
        cfg.model.backbone = "smollm2"


def _check_ranges(cfg: Config, source: str) -> None:
    """Every numeric setting within its range; the error names the key and the allowed range."""
    t = cfg.train
    at_least = {  # key: (value, minimum); None values are "unset" and allowed
        "seed": (cfg.seed, 0), "model.max_length": (cfg.model.max_length, 1),
        "train.max_steps": (t.max_steps, 1), "train.batch_size": (t.batch_size, 1),
        "train.eval_batch_size": (t.eval_batch_size, 1), "train.grad_accum": (t.grad_accum, 1),
        "train.eval_every": (t.eval_every, 1), "train.log_every": (t.log_every, 1),
        "train.early_stopping": (t.early_stopping, 1), "train.grad_layers": (t.grad_layers, 1),
        "train.cosine_every": (t.cosine_every, 0), "train.checkpoint_every": (t.checkpoint_every, 1),
        "train.keep_checkpoints": (t.keep_checkpoints, 1), "train.max_skips": (t.max_skips, 0),
        "train.skip_window": (t.skip_window, 1), "train.num_threads": (t.num_threads, 1),
        "train.prefetch": (t.prefetch, 0), "train.workers": (t.workers, 0),
    }
    for i, task in enumerate(cfg.tasks):
        at_least.update({f"tasks[{i}].max_new_tokens": (task.max_new_tokens, 1),
                         f"tasks[{i}].num_beams": (task.num_beams, 1),
                         f"tasks[{i}].max_windows_per_batch": (task.max_windows_per_batch, 1),
                         f"tasks[{i}].data.max_train": (task.data.max_train, 1),
                         f"tasks[{i}].data.max_eval": (task.data.max_eval, 1)})
    if cfg.compare is not None:
        at_least["compare.inference_examples"] = (cfg.compare.inference_examples, 0)
        at_least["compare.jobs"] = (cfg.compare.jobs, 1)
        at_least["compare.retries"] = (cfg.compare.retries, 0)
        if cfg.compare.search is not None:
            at_least["compare.search.trials"] = (cfg.compare.search.trials, 1)
    if cfg.compare is not None and not (math.isfinite(cfg.compare.cap_factor) and cfg.compare.cap_factor >= 1):
        raise ConfigError(f"{source}: compare.cap_factor: must be a number >= 1 (the cap is that many times the "
                          f"equal-examples steps), got {cfg.compare.cap_factor}")
    for key, (value, low) in at_least.items():
        if value is not None and value < low:
            rule = "must be positive" if low == 1 else f"must be >= {low}"
            raise ConfigError(f"{source}: {key}: {rule}, got {value}")
    _check_upper_bounds(cfg, source)
    positive_finite = {"train.lr": t.lr, "train.head_lr": t.head_lr, "train.weighting_lr": t.weighting_lr,
                       "train.grad_clip": t.grad_clip}
    for key, value in positive_finite.items():
        if value is not None and not (math.isfinite(value) and value > 0):
            raise ConfigError(f"{source}: {key}: must be a positive finite number, got {value}")
    fractions = {"train.warmup_ratio": t.warmup_ratio, "train.weight_decay": t.weight_decay,
                 **{f"tasks[{i}].head_dropout": task.head_dropout for i, task in enumerate(cfg.tasks)}}
    for key, value in fractions.items():
        if not (math.isfinite(value) and 0 <= value < 1):
            raise ConfigError(f"{source}: {key}: must be in [0, 1), got {value}")
    for i, task in enumerate(cfg.tasks):
        _check_null_threshold(task, i, source)
        if not 0 <= task.data.max_invalid <= 1:
            raise ConfigError(f"{source}: tasks[{i}].data.max_invalid: must be in [0, 1], got {task.data.max_invalid}")


def _check_null_threshold(task: TaskConfig, i: int, source: str) -> None:
    """``null_threshold: auto`` tunes SQuAD 2.0's no-answer threshold on dev: it needs both."""
    if task.null_threshold != "auto":
        return
    if not task.allow_unanswerable:
        raise ConfigError(f"{source}: tasks[{i}].null_threshold: auto tunes the no-answer threshold on dev, but "
                          f"task '{task.name}' does not allow unanswerable questions (every question is answered, "
                          f"the threshold is never used); set tasks[{i}].allow_unanswerable: true (SQuAD 2.0) or "
                          f"remove null_threshold")
    if task.data.dev is None and task.data.format != "synthetic":
        raise ConfigError(f"{source}: tasks[{i}].null_threshold: auto tunes the threshold on dev, but task "
                          f"'{task.name}' has no data.dev; add a dev split or set a number")


# Sanity bounds: past them a setting is a typo, not a plan (numpy and torch seeds are 32-bit; a
# synthetic task is generated in memory; 10**8 steps is months of training at 10 steps a second).
SEED_LIMIT = 2**32 - 1
MAX_STEPS_LIMIT = 10**8
SYNTHETIC_LIMIT = 10**6


def _check_upper_bounds(cfg: Config, source: str) -> None:
    """Seeds within 32 bits, ``train.max_steps`` within a sanity bound, synthetic tasks known and
    of a size that fits in memory; each error names its key."""
    from polytask.data.synthetic import SYNTHETIC_TASKS

    seeds = {"seed": cfg.seed, **{f"compare.seeds[{i}]": s for i, s in
                                  enumerate((cfg.compare.seeds or []) if cfg.compare is not None else [])}}
    for key, value in seeds.items():
        if not 0 <= value <= SEED_LIMIT:
            raise ConfigError(f"{source}: {key}: must be in 0..{SEED_LIMIT} (a 32-bit seed), got {value}")
    if cfg.train.max_steps > MAX_STEPS_LIMIT:
        raise ConfigError(f"{source}: train.max_steps: {cfg.train.max_steps} steps is past the sanity bound of "
                          f"{MAX_STEPS_LIMIT} (months of training); a typo?")
    for i, task in enumerate(cfg.tasks):
        if task.data.format != "synthetic":
            continue
        name = task.data.dataset or task.name
        if name not in SYNTHETIC_TASKS:
            key = f"tasks[{i}].data.dataset" if task.data.dataset else f"tasks[{i}].name"
            raise ConfigError(f"{source}: {key}: no synthetic task '{name}'; the synthetic tasks are "
                              f"{', '.join(SYNTHETIC_TASKS)} (set data.dataset to one of them to use another name)")
        for split in ("max_train", "max_eval"):
            value = getattr(task.data, split)
            if value is not None and value > SYNTHETIC_LIMIT:
                raise ConfigError(f"{source}: tasks[{i}].data.{split}: at most {SYNTHETIC_LIMIT} synthetic examples "
                                  f"(generated in memory), got {value}")


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def _show(value: Any) -> str:
    return f"{type(value).__name__} {value!r}"
