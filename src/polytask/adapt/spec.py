"""What ``polytask adapt`` reads: the trained run it starts from and the new task's YAML.

``NEW.yaml`` holds one task, in the schema of one entry of a config's ``tasks:`` list
(:class:`polytask.config.TaskConfig`), plus two optional sections::

    name: paraphrase
    type: classification
    data: {train: mrpc/train.jsonl, dev: mrpc/dev.jsonl, test: mrpc/test.jsonl}
    columns: {text: text_a, text_pair: text_b}
    main_metric: f1
    train: {max_steps: 200, batch_size: 16, lr: 1.0e-3}   # optional: overrides of the run's train section
    lora: {r: 8, alpha: 16}                               # optional: --tune lora's adapter (defaults shown)

The adaptation config is the source run's config with ``tasks`` replaced by the new task and
``train`` updated by the YAML's ``train:`` section, then by the command line's ``a.b=c``
overrides (e.g. ``data_dir=../shared/data train.max_steps=100``). Relative data paths resolve
against ``data_dir`` (default: the run's).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from polytask.backbones import has_encoder
from polytask.config import Config, apply_override, from_dict, to_dict
from polytask.errors import CheckpointError, ConfigError
from polytask.run_folder import RunFolder

TUNE_MODES = ("head", "lora", "full")
SUPPORTED_ARCHITECTURES = ("hard",)
LORA_KEYS = ("r", "alpha", "dropout", "target_modules")


class AdaptError(ConfigError):
    """A run folder or a new-task file that ``polytask adapt`` cannot use."""


@dataclass
class NewTask:
    """The new task's adaptation config (one task) and its LoRA arguments."""

    cfg: Config
    lora: dict = field(default_factory=dict)
    source: str = "<task>"

    @property
    def name(self) -> str:
        return self.cfg.tasks[0].name


def read_task_file(path: str | Path) -> dict:
    """The raw mapping of ``NEW.yaml``; a missing or malformed file names itself."""
    path = Path(path)
    if not path.exists():
        raise AdaptError(f"task file not found: {path}")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise AdaptError(f"{path}: invalid YAML: {exc}") from None
    if not isinstance(raw, dict):
        raise AdaptError(f"{path}: expected one task (a mapping with name, type, data, ...), got {type(raw).__name__}")
    return raw


def new_task_config(run_cfg: Config, task: dict | str | Path, overrides: list[str] | None = None) -> NewTask:
    """The adaptation config: the run's config, its tasks replaced by ``task`` (a dict or NEW.yaml)."""
    source = str(task) if not isinstance(task, dict) else "<task>"
    raw_task = copy.deepcopy(task) if isinstance(task, dict) else read_task_file(task)
    train = raw_task.pop("train", None) or {}
    lora = raw_task.pop("lora", None) or {}
    for key, value in (("train", train), ("lora", lora)):
        if not isinstance(value, dict):
            raise AdaptError(f"{source}: {key}: expected a mapping of settings, got {value!r}")
    unknown = sorted(set(lora) - set(LORA_KEYS))
    if unknown:
        raise AdaptError(f"{source}: lora.{unknown[0]}: unknown key (known: {', '.join(LORA_KEYS)})")
    raw = to_dict(run_cfg)
    raw.pop("compare", None)
    raw["tasks"] = [raw_task]
    raw["train"].update(train)
    for item in overrides or []:
        apply_override(raw, item)
    try:
        cfg = from_dict(raw, source=source)
    except ConfigError as exc:
        raise AdaptError(f"{source}: {exc}") from None
    return NewTask(cfg, dict(lora), source)


def check_source(run_dir: str | Path) -> tuple[RunFolder, Config]:
    """A finished run folder that adapt can start from (hard sharing, a text or image encoder)."""
    run = RunFolder(run_dir)
    if not run.path.is_dir():
        raise CheckpointError(f"{run.path} is not a run folder (no such directory)")
    run.require_complete()
    cfg = run.read_config()
    if not has_encoder(cfg.model):
        raise AdaptError(f"{run.path}: adapt needs a backbone with a task-independent encoder pass (model.kind: "
                         f"encoder or vision); this run has model.kind: {cfg.model.kind}")
    if cfg.architecture.name not in SUPPORTED_ARCHITECTURES:
        raise AdaptError(f"{run.path}: adapt supports runs with architecture 'hard' (one encoder shared by every "
                         f"task, which a new head can read); this run has '{cfg.architecture.name}', whose encoder "
                         f"pass depends on the task, so there is no single encoder to transfer")
    return run, cfg


def check_new_name(run_cfg: Config, new: NewTask) -> None:
    names = [t.name for t in run_cfg.tasks]
    if new.name in names:
        raise AdaptError(f"{new.source}: name: the run already has a task '{new.name}' (it has: {', '.join(names)}); "
                         f"give the new task another name")


def check_applies(tune: str, new: NewTask) -> None:
    """Refuse a tuning mode the backbone or the new task cannot take, before any data is read:
    ``lora`` builds the per-task adapter architecture, which says itself which backbones it
    cannot adapt (``Architecture.refuses``: a CNN has no attention projections); ``head`` trains
    on cached last states, which a task whose head reads the feature pyramid (``Task.reads_maps``:
    segmentation, detection) cannot use."""
    from polytask.architectures import architecture_class
    from polytask.backbones.io import io_of_kind
    from polytask.tasks import REGISTRY

    kind, tc = new.cfg.model.kind, new.cfg.tasks[0]
    why = architecture_class("adapters").refuses(io_of_kind(kind)) if tune == "lora" else None
    if why:
        raise AdaptError(f"--tune lora: the LoRA adapters cannot be used with model.kind={kind}: {why.split(';')[0]}; "
                         f"use --tune head or --tune full")
    if tune == "head" and getattr(REGISTRY.get(tc.type), "reads_maps", False):
        raise AdaptError(f"{new.source}: type: --tune head trains on the encoder's cached last states, but a "
                         f"{tc.type} head reads the whole feature pyramid; use --tune full")


def check_tune(tune: str) -> str:
    if tune not in TUNE_MODES:
        raise AdaptError(f"--tune: expected one of {', '.join(TUNE_MODES)}, got {tune!r}")
    return tune
