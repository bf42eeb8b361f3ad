"""The pieces of one optimizer step, below the training loop (:mod:`polytask.train`): a
micro-step's forward and backward pass (:func:`forward_backward`), each task's loss, the
gradient probes that log task cosines, the optimizer (AdamW with its parameter groups) and the
learning-rate schedule. Nothing here names a method, an architecture, a task type or a backbone
kind; the loop, its state and the run folder stay in :mod:`polytask.train`.
"""

from __future__ import annotations

import contextlib
import math
import os
import shutil
from dataclasses import dataclass

import torch
from transformers import get_scheduler

from polytask.config import Config
from polytask.errors import ConfigError
from polytask.devices import global_losses, process_mean, to_device
from polytask.gradients import task_gram
from polytask.model import MultiTaskModel
from polytask.prefetch import pin
from polytask.sharding import is_shard


def make_optimizer(cfg: Config, model: MultiTaskModel, weighting: torch.nn.Module) -> torch.optim.Optimizer:
    """AdamW over the model's trainable parameters (:func:`adamw`), plus the weighting method's own
    learnable parameters at ``train.weighting_lr``."""
    heads = model.head_parameter_names()
    params = [(p, name in heads) for name, p in model.named_parameters() if p.requires_grad]
    return adamw(cfg.train, params, [p for p in weighting.parameters() if p.requires_grad])


def adamw(t, params: list[tuple[torch.nn.Parameter, bool]], extra: list | None = None,
          kernel: str = "auto") -> torch.optim.AdamW:
    """AdamW over ``(parameter, is_head)`` pairs: weight decay on weight matrices only (not biases
    or LayerNorm); heads at ``train.head_lr`` when it is set; ``extra`` at ``train.weighting_lr``
    without decay. ``kernel``: ``auto`` (torch's fused AdamW, one kernel for every tensor, where
    the device has it: CPU, CUDA, MPS; else foreach; sharded parameters: foreach), ``foreach``,
    or ``loop`` (the per-tensor loop); all compute the same update, to float rounding."""
    groups: dict[tuple[float, float], list] = {}
    for p, is_head in params:
        lr = t.head_lr if (t.head_lr and is_head) else t.lr
        decay = t.weight_decay if p.ndim >= 2 else 0.0
        groups.setdefault((lr, decay), []).append(p)
    out = [{"params": ps, "lr": lr, "weight_decay": wd} for (lr, wd), ps in groups.items()]
    if extra:
        out.append({"params": extra, "lr": t.weighting_lr, "weight_decay": 0.0})
    return adamw_kernel(out, t.lr, kernel)


def adamw_kernel(groups: list[dict], lr: float, kernel: str) -> torch.optim.AdamW:
    """``torch.optim.AdamW(groups)`` through the ``kernel`` asked for (see :func:`adamw`)."""
    if kernel == "loop":
        return torch.optim.AdamW(groups, lr=lr, foreach=False, fused=False)
    params = [p for g in groups for p in g["params"]]
    if kernel == "auto" and params and not any(is_shard(p) for p in params):
        try:  # torch refuses fused where a device or dtype has no fused kernel
            return torch.optim.AdamW(groups, lr=lr, fused=True)
        except (RuntimeError, ValueError):
            pass
    return torch.optim.AdamW(groups, lr=lr, foreach=True)


def compile_backbone(model: MultiTaskModel, t, device: torch.device) -> None:
    """``train.compile: true``: the backbone through ``torch.compile`` (in place, ``dynamic=True``
    for the varying padded lengths: the weights, their names in the run folder and the
    optimizer's parameters stay the same). The first steps, and the first evaluation (eval mode
    is another graph), take longer while it compiles. Only encoder backbones, unsharded
    (:func:`polytask.config.validate` refuses the others). Inductor needs a C++ compiler on a CPU."""
    if not t.compile:
        return
    if device.type == "cpu" and not any(shutil.which(c) for c in (os.environ.get("CXX", "g++"), "g++", "clang++")):
        raise ConfigError("train.compile: torch.compile's CPU code generator needs a C++ compiler (g++ or clang++) "
                          "on PATH, and none was found; install one or set train.compile=false")
    model.arch.backbone.compile(dynamic=True)


def make_scheduler(t, optimizer: torch.optim.Optimizer):
    """``train.schedule`` with a linear warm-up over ``warmup_ratio`` of ``max_steps``."""
    return get_scheduler("constant_with_warmup" if t.schedule == "constant" else t.schedule, optimizer,
                         num_warmup_steps=int(t.warmup_ratio * t.max_steps), num_training_steps=t.max_steps)


@dataclass
class StepResult:
    losses: list[float]
    weights: list[float]
    gram: torch.Tensor | None = None  # (T, T) when task gradients were taken
    bad_task: str | None = None  # the first task whose loss was not finite (nothing was back-propagated)


def forward_backward(model: MultiTaskModel, tasks: dict, batches: dict[str, dict], weighting, t,
                     grad_params, want_gram: bool = False, accum: int = 1, accelerator=None,
                     factors: dict[str, float] | None = None) -> StepResult:
    """One micro-step: forward each task's batch, combine the losses, back-propagate.

    The weighting method decides the coefficients (from the Gram matrix of the task gradients
    if it needs them); the architecture's regulariser is added; gradients accumulate in
    ``.grad`` scaled by ``1/accum``. With an ``accelerator``, the forward passes run under its
    autocast (mixed precision) and backward goes through it (fp16 loss scaling); the
    weighting sees float32 losses and a float32 Gram matrix. Several processes: ``batches``
    are this process's slices and ``factors`` their shares (:func:`local_batches`); the losses
    and the Gram matrix are the global batch's, the same on every process.

    Reads from the device (a GPU synchronisation each), where a value must be read: the task
    losses, all at once (their values for the log and whether each is finite, which decides
    whether anything is back-propagated), and the weighting's coefficients (for the log); on log
    steps of multi-task draws, the Gram matrix's diagonal (:func:`polytask.train.train_step`).
    """
    names = list(batches)
    with accelerator.autocast() if accelerator is not None else contextlib.nullcontext():
        losses, feats = task_losses(model, tasks, batches)
    reduce = process_mean(accelerator)
    if reduce is not None:
        losses = global_losses(losses, [(factors or {}).get(n, 1.0) for n in names], accelerator)
    values = torch.stack([loss.detach().float() for loss in losses]).tolist()  # one read for every task
    for name, value in zip(names, values):
        if not math.isfinite(value):
            return StepResult([], [], bad_task=name)
    gram = None
    if weighting.needs_grads or want_gram:
        gram = task_gram(losses, t.grad_space, feats, grad_params, reduce)
    total, weights = weighting.combine(torch.stack(losses), names, gram if weighting.needs_grads else None)
    reg = model.arch.regularizer()
    if reg is not None:
        total = total + reg
    if accelerator is not None:
        accelerator.backward(total / accum)
    else:
        (total / accum).backward()
    return StepResult(values, weights.tolist(), gram)


def train_batch(task_data, indices: list[int], pad_id: int, device: torch.device | None = None,
                pinned: bool = False) -> dict:
    """The padded tensors of these training examples of one task (on ``device``; ``pinned``:
    through page-locked memory, so that a CUDA copy runs asynchronously)."""
    batch = task_data.task.collate([task_data.features["train"][i] for i in indices], pad_id)
    if device is None:
        return batch
    return to_device(pin(batch) if pinned else batch, device)


def task_losses(model: MultiTaskModel, tasks: dict, batches: dict[str, dict]) -> tuple[list, list]:
    """Each task's loss on its batch (scalars) and the features it was computed from."""
    losses, feats = [], []
    for name, batch in batches.items():
        out, f = model(batch, name)
        losses.append(tasks[name].loss(out, batch))
        feats.append(f)
    return losses, feats


def probe_gram(model: MultiTaskModel, tasks: dict, batches: dict[str, dict], t, grad_params,
               accelerator=None, factors: dict[str, float] | None = None) -> torch.Tensor:
    """(T, T) Gram matrix of the task gradients on one batch per task, without training.

    Eval mode (no dropout), so the torch RNG is not consumed and the run's trajectory is the
    same with or without probes; ``autograd.grad`` leaves ``.grad`` untouched. Several
    processes: as in :func:`forward_backward`, the global batch's Gram matrix.
    """
    was_training = model.training
    model.eval()
    try:
        losses, feats = task_losses(model, tasks, batches)
        reduce = process_mean(accelerator)
        if reduce is not None:
            losses = global_losses(losses, [(factors or {}).get(n, 1.0) for n in batches], accelerator)
        return task_gram(losses, t.grad_space, feats, grad_params, reduce)
    finally:
        model.train(was_training)


def probe_due(step: int, log_every: int, every: int) -> bool:
    """A log step at or after a multiple of ``every`` (the first one in (step - log_every, step])."""
    return every > 0 and step % log_every == 0 and step // every != (step - log_every) // every
