"""Where training runs: the device and mixed precision, through Hugging Face Accelerate.

``train.device: auto`` (default) takes what Accelerate picks (a CUDA GPU, else Apple MPS, else
the CPU); ``cpu`` forces the CPU; ``cuda`` / ``mps`` require that device and fail clearly
without it. ``train.mixed_precision: bf16 | fp16`` runs forward passes under Accelerate's
autocast; fp16 adds Accelerate's gradient scaler (a step whose scaled gradients overflow is
skipped by the scaler, as in every fp16 recipe). Task-gradient Gram matrices are float32
whatever the autocast dtype (:mod:`polytask.gradients`).
"""

from __future__ import annotations

from typing import Any

import torch

from polytask.errors import ConfigError

DEVICES = ("auto", "cpu", "cuda", "mps")


def make_accelerator(device: str, mixed_precision: str):
    """An ``accelerate.Accelerator`` for one training run (``train.device``, ``train.mixed_precision``)."""
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState

    # Accelerate keeps its settings in a process-wide singleton; a second run in the same
    # process (a notebook, compare) may choose another precision. The distributed state stays.
    AcceleratorState._reset_state(reset_partial_state=False)
    try:
        accelerator = Accelerator(cpu=device == "cpu", mixed_precision=mixed_precision)
    except (ValueError, RuntimeError) as exc:
        raise ConfigError(f"train.mixed_precision: {mixed_precision} is not available here: {exc}") from None
    if accelerator.num_processes > 1:  # every process would train a full copy into the same folder
        raise ConfigError(f"{accelerator.num_processes} processes (torchrun / accelerate launch): multi-process "
                          f"training is not supported yet; run one process (docs/distributed.md)")
    if device not in ("auto", "cpu") and accelerator.device.type != device:
        raise ConfigError(f"train.device: {device} asked for, but Accelerate found only {accelerator.device.type} "
                          f"(use train.device=auto or cpu)")
    return accelerator


def to_device(batch: dict[str, Any], device: torch.device) -> dict[str, Any]:
    """Every tensor of a batch on ``device`` (no copy when it is already there)."""
    non_blocking = device.type == "cuda"
    return {k: v.to(device, non_blocking=non_blocking) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}


def module_device(module: torch.nn.Module) -> torch.device:
    """The device of a module's parameters (the CPU for a module without any)."""
    return next(iter(module.parameters()), torch.empty(0)).device


__all__ = ["DEVICES", "make_accelerator", "module_device", "to_device"]
