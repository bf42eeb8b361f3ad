"""Building blocks shared by ``adapt`` (one run, saved) and the few-shot curves (many runs).

Start points: ``multitask`` is the source run's trained encoder; ``pretrained`` is the plain
backbone its config names (``model.backbone``), loaded afresh. Tuning modes:

- ``head``: the encoder is frozen (eval mode, no dropout) and only a new head trains, on cached
  encoder states (:class:`~polytask.adapt.learners.CachedHead`);
- ``lora``: a new LoRA adapter (Hu et al., ICLR 2022; through PEFT, the per-task adapter
  architecture :class:`polytask.architectures.adapters.Adapters`) and the head train, the encoder's
  own weights frozen;
- ``full``: the whole encoder and the head train.
"""

from __future__ import annotations

import copy

import torch

from polytask.adapt.learners import CachedHead, ModelLearner, encode_cached
from polytask.architectures import build_architecture
from polytask.backbones import check_max_length, load_backbone
from polytask.dataset import TaskData, encode_all, prepare
from polytask.model import MultiTaskModel

STARTS = ("multitask", "pretrained")


def prepare_new(cfg, tokenizer) -> TaskData:
    """The new task's examples and features (tokenized with the source run's tokenizer)."""
    data = prepare(cfg)
    encode_all(data, tokenizer, cfg.model.max_length)
    return data[cfg.tasks[0].name]


def refs_of(td: TaskData) -> dict[str, list]:
    return {split: [td.task.reference(e) for e in exs] for split, exs in td.examples.items() if split != "train"}


def start_backbone(start: str, source_model, cfg):
    """The encoder a run starts from: the multi-task one (shared, not copied) or the plain one."""
    if start == "multitask":
        return source_model.arch.backbone
    backbone, _ = load_backbone(cfg.model)
    check_max_length(cfg.model.max_length, backbone.config)
    return backbone.eval()


def lora_args(lora: dict) -> dict:
    """The LoRA arguments of the adapter architecture (rank 8, alpha 16 unless NEW.yaml's ``lora:``)."""
    return {"kind": "lora", "freeze_backbone": True, "r": 8, "alpha": 16, **lora}


def head_cache(backbone, td: TaskData, train_idx, pad_id: int, batch_size: int, progress: bool) -> dict:
    """Cached token states of the frozen ``backbone``: ``train_idx`` of train, all of dev and test."""
    arch = build_architecture("hard", backbone, [td.task.name])
    feats = td.features
    wanted = {"train": train_idx, **{s: range(len(feats[s])) for s in ("dev", "test") if feats.get(s)}}
    return {s: encode_cached(arch, td.task, feats[s], idx, pad_id, batch_size, f"encode {s}", progress)
            for s, idx in wanted.items()}


def head_learner(td: TaskData, hidden: int, cache: dict, pad_id: int, seed: int) -> CachedHead:
    torch.manual_seed(seed)
    return CachedHead(td.task, td.task.make_head(hidden), td.features, cache, pad_id)


def tuned_model(mode: str, backbone, td: TaskData, old_tasks: dict, lora: dict, seed: int):
    """A model with the new task (and, for ``lora``, the old tasks on identity adapters) and its
    trainable parameters. ``backbone`` is copied: the start point is never changed."""
    backbone = copy.deepcopy(backbone)
    name = td.task.name
    tasks = {**old_tasks, name: td.task} if mode == "lora" else {name: td.task}
    torch.manual_seed(seed)
    if mode == "lora":
        arch = build_architecture("adapters", backbone, list(tasks), lora_args(lora))
        trainable = arch.task_parameters(name)  # its LoRA A and B matrices
    else:
        arch = build_architecture("hard", backbone, [name])
        trainable = list(backbone.parameters())
    model = MultiTaskModel(arch, tasks)
    for p in model.parameters():
        p.requires_grad_(False)
    trainable = trainable + list(model.heads[name].parameters())
    for p in trainable:
        p.requires_grad_(True)
    return model, trainable


def model_learner(mode: str, backbone, td: TaskData, old_tasks: dict, lora: dict, pad_id: int, seed: int):
    model, trainable = tuned_model(mode, backbone, td, old_tasks, lora, seed)
    return ModelLearner(model, td.task, td.features, pad_id, trainable)
