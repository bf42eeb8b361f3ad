"""Where training runs: the device and mixed precision, through Hugging Face Accelerate.

``train.device: auto`` (default) takes what Accelerate picks (a CUDA GPU, else Apple MPS, else
the CPU); ``cpu`` forces the CPU; ``cuda`` / ``mps`` require that device and fail clearly
without it. ``train.mixed_precision: auto`` (default) is bf16 where that device computes bf16
fast (CUDA with bf16, CPUs with AMX: :mod:`polytask.precision`) and float32
elsewhere; ``no`` forces float32. ``bf16 | fp16`` runs forward passes under Accelerate's
autocast; fp16 adds Accelerate's gradient scaler (a step whose scaled gradients overflow is
skipped by the scaler, as in every fp16 recipe). Task-gradient Gram matrices are float32
whatever the autocast dtype (:mod:`polytask.gradients`).

Several processes (``torchrun --nproc_per_node N`` or ``accelerate launch``) train one model
data-parallel: every process draws the same task(s) and global batch of ``N x batch_size``
examples each step and takes its own contiguous slice (:func:`shard`); the task losses the
weighting sees are the global batch's (:func:`global_losses`), and the gradients are averaged
over the processes before clipping (:func:`average_gradients`). The collectives are
``torch.distributed`` calls through Accelerate (gloo on CPU, NCCL on GPUs); one process that
stops answering makes the others fail after ``POLYTASK_PROCESS_TIMEOUT`` seconds (600).
With ``train.shard: fsdp`` the model is sharded instead (:mod:`polytask.sharding`): FSDP
averages the sharded parameters' gradients itself and :func:`average_gradients` is given the
others only. See docs/distributed.md.
"""

from __future__ import annotations

import datetime
import os
from typing import Any, Callable

import torch
from torch import Tensor

from polytask.errors import ConfigError, PolytaskError
from polytask.precision import resolve_mixed_precision

DEVICES = ("auto", "cpu", "cuda", "mps")


def make_accelerator(device: str, mixed_precision: str):
    """An ``accelerate.Accelerator`` for one training run (``train.device``, ``train.mixed_precision``;
    ``auto`` resolved for the device Accelerate picks: ``accelerator.mixed_precision`` says which,
    ``accelerator.precision_reason`` why)."""
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState

    mixed_precision, why = resolve_mixed_precision(mixed_precision, process_state(device).device.type)
    # Accelerate keeps its settings in a process-wide singleton; a second run in the same
    # process (a notebook, compare) may choose another precision. The distributed state stays.
    AcceleratorState._reset_state(reset_partial_state=False)
    try:
        accelerator = Accelerator(cpu=device == "cpu", mixed_precision=mixed_precision)
    except (ValueError, RuntimeError) as exc:
        raise ConfigError(f"train.mixed_precision: {mixed_precision} is not available here: {exc}") from None
    if device not in ("auto", "cpu") and accelerator.device.type != device:
        raise ConfigError(f"train.device: {device} asked for, but Accelerate found only {accelerator.device.type} "
                          f"(use train.device=auto or cpu)")
    accelerator.precision_reason = why
    return accelerator


def process_state(device: str = "auto"):
    """Accelerate's process state (rank, number of processes), initialised once per process.

    Under ``torchrun`` / ``accelerate launch`` this joins the process group: NCCL on CUDA, gloo
    on CPU. Accelerate treats a CPU-only machine as multi-process only when asked for the CPU,
    so the CPU is asked for whenever several processes run without a GPU (else each process
    would silently train its own copy).
    """
    from accelerate import PartialState

    several = int(os.environ.get("WORLD_SIZE", "1")) > 1
    cpu = device == "cpu" or (several and not torch.cuda.is_available())
    timeout = datetime.timedelta(seconds=float(os.environ.get("POLYTASK_PROCESS_TIMEOUT", "600")))
    return PartialState(cpu=cpu, timeout=timeout) if several else PartialState(cpu=cpu)


def on_main(state, fn: Callable[[], Any]) -> None:
    """Run ``fn`` on the main process only; if it fails there, every process fails with its message.

    ``state``: :func:`process_state`. The other processes wait for it (one broadcast).
    """
    error = None
    if state.is_main_process:
        try:
            fn()
        except Exception as exc:  # re-raised below, after the others have been told
            error = exc
    if state.num_processes > 1:
        from accelerate.utils import broadcast_object_list

        message = broadcast_object_list([None if error is None else str(error)])[0]
        if error is None and message is not None:
            raise PolytaskError(f"the main process failed: {message}")
    if error is not None:
        raise error


def shard(indices: list[int], rank: int, processes: int, units: list[int] | None = None) -> tuple[list[int], float]:
    """Process ``rank``'s contiguous slice of a global batch, and its loss factor.

    ``units`` (one per index): how many terms each example adds to its task's mean loss, 1 for
    a per-example mean (the default), its scored tokens for a token mean (tagging, generation:
    :meth:`polytask.tasks.base.Task.loss_units`). The factor ``processes * units(slice) /
    units(batch)`` turns the slice's mean loss into its share of the global batch's mean (the
    mean over processes of the scaled slice losses is the global mean, over examples or over
    tokens). A slice with nothing to score (fewer examples than processes at the end of an
    epoch, or examples with no scored token) takes an example that has some, with factor 0, so
    every process runs the same computation, its loss stays finite, and it contributes nothing.
    """
    n = len(indices)
    units = [1] * n if units is None else units
    lo, hi = rank * n // processes, (rank + 1) * n // processes
    mine, total = indices[lo:hi], sum(units)
    if not mine or sum(units[lo:hi]) == 0 or total == 0:
        scored = [i for i, u in zip(indices, units) if u > 0] or indices
        return scored[:1], 0.0
    return mine, processes * sum(units[lo:hi]) / total


def process_mean(accelerator) -> Callable[[Tensor], Tensor] | None:
    """``tensor -> its mean over the processes`` (one all-reduce), or None for one process."""
    if accelerator is None or accelerator.num_processes == 1:
        return None
    return lambda tensor: accelerator.reduce(tensor, reduction="mean")


def global_losses(losses: list[Tensor], factors: list[float], accelerator) -> list[Tensor]:
    """The task losses of the global batch: their values are the means over the processes of
    the scaled slice losses (one all-reduce of a (T,) vector); their gradients are this
    process's share, so averaging the gradients over the processes gives the global ones."""
    mine = torch.stack([loss.float() * f for loss, f in zip(losses, factors)])  # (T,)
    total = accelerator.reduce(mine.detach(), reduction="mean")  # (T,)
    return list((mine + (total - mine.detach())).unbind())


def average_gradients(params: list[torch.nn.Parameter], accelerator) -> None:
    """Replace each ``.grad`` by its mean over the processes (one all-reduce of them all).

    Every process ran the same tasks through the same modules, so the same parameters hold a
    gradient everywhere; those without one stay without one (AdamW skips them, as in one process).
    """
    grads = [p.grad for p in params if p.grad is not None]
    if accelerator.num_processes == 1 or not grads:
        return
    flat = accelerator.reduce(torch.cat([g.reshape(-1) for g in grads]), reduction="mean")  # (sum of sizes,)
    for g, part in zip(grads, flat.split([g.numel() for g in grads])):
        g.copy_(part.view_as(g))


def any_process(flag: bool, accelerator) -> bool:
    """True on every process when ``flag`` is true on any (e.g. a signal that reached one)."""
    if accelerator.num_processes == 1:
        return flag
    value = torch.tensor([float(flag)], device=accelerator.device)
    return bool(accelerator.reduce(value, reduction="max").item() > 0)


def to_device(batch: dict[str, Any], device: torch.device) -> dict[str, Any]:
    """Every tensor of a batch on ``device`` (no copy when it is already there)."""
    non_blocking = device.type == "cuda"
    return {k: v.to(device, non_blocking=non_blocking) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}


def module_device(module: torch.nn.Module) -> torch.device:
    """The device of a module's parameters (the CPU for a module without any)."""
    return next(iter(module.parameters()), torch.empty(0)).device


__all__ = ["DEVICES", "any_process", "average_gradients", "global_losses", "make_accelerator", "module_device",
           "on_main", "process_mean", "process_state", "shard", "to_device"]
