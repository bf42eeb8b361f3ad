"""Sharded data parallel training (``train.shard: fsdp``) through torch's FSDP2 ``fully_shard``.

FSDP (Zhao et al. 2023, "PyTorch FSDP: Experiences on Scaling Fully Sharded Data Parallel";
FSDP2 is its per-parameter DTensor rewrite) keeps on each of N processes 1/N of every
parameter, gradient and optimizer state: a transformer block's parameters are all-gathered just
before its forward (and again before its backward) and freed after it, and its gradients are
reduce-scattered, so each process holds only its shard. :func:`shard_model` wraps each block of
the backbone (found through the Hugging Face class names in ``_no_split_modules``: encoder
layers of BERT-like models, decoder layers of Llama-like ones) and then the whole model, whose
own group holds the rest (embeddings, heads, adapters outside blocks). The same code runs on
the CPU (gloo) and on GPUs (NCCL); the device mesh is the processes of the run.

What the trainer relies on (checked by tests/test_fsdp.py against the data-parallel path):

- gradient normalisation: FSDP2's reduce-scatter averages over the processes (its default
  divide factor is the number of processes), like :func:`polytask.devices.average_gradients`;
  parameters outside the model (a weighting method's own) are still averaged by it;
- :func:`clip_grad_norm`: the total norm over every shard of every process;
- :class:`FullWeights`: full (unsharded) weights gathered on the main process (CPU offload) and
  loaded back into the shards, so a run folder is the same with or without sharding;
  :func:`full_optimizer_state` / :func:`load_optimizer_state` do the same for AdamW's state.

Limits: task gradients in parameter space (``train.grad_space`` other than ``representation``)
would need the unsharded gradients of every task, so they are refused (:func:`check_config`);
fp16 needs a sharded gradient scaler and is refused (bf16 works); one process has nothing to
shard and trains unsharded.
"""

from __future__ import annotations

import dataclasses
import math
import os
import sys
from typing import Iterable

import torch
from torch import Tensor, nn

from polytask.errors import ConfigError

SHARDS = ("none", "fsdp")


def check_config(t, source: str = "config") -> None:
    """``train.shard`` and what it cannot be combined with, as ConfigErrors naming the field."""
    if t.shard not in SHARDS:
        raise ConfigError(f"{source}: train.shard: {t.shard!r} is not one of {list(SHARDS)}")
    if t.shard != "fsdp":
        return
    if t.grad_space != "representation":
        raise ConfigError(f"{source}: train.grad_space: {t.grad_space!r} takes task gradients of sharded parameters, "
                          f"which train.shard: fsdp does not gather; use grad_space: representation")
    if t.mixed_precision == "fp16":
        raise ConfigError(f"{source}: train.mixed_precision: fp16 needs a sharded gradient scaler, which "
                          f"train.shard: fsdp does not provide; use bf16")


def wants_sharding(shard: str, accelerator) -> bool:
    """``train.shard: fsdp``, or an Accelerate launch configured for FSDP (``accelerate launch
    --config_file`` with ``distributed_type: FSDP``): polytask then shards the model itself."""
    from accelerate.utils import DistributedType

    if accelerator.distributed_type == DistributedType.DEEPSPEED or _env_flag("ACCELERATE_USE_DEEPSPEED"):
        raise ConfigError("accelerate launch with DeepSpeed: polytask does not hand its model to DeepSpeed's "
                          "engine and would train unsharded; use train.shard: fsdp (or an FSDP Accelerate "
                          "config, examples/accelerate_fsdp.yaml)")
    # Accelerate keeps an FSDP launch's wish in the environment even where it falls back to DDP (the CPU)
    return shard == "fsdp" or accelerator.distributed_type == DistributedType.FSDP or _env_flag("ACCELERATE_USE_FSDP")


def _env_flag(name: str) -> bool:
    return os.environ.get(name, "false").strip().lower() in ("1", "true", "yes")


def maybe_shard(model: nn.Module, backbone: nn.Module, t, accelerator) -> bool:
    """Shard ``model`` when :func:`wants_sharding` and several processes run; True if sharded.
    An Accelerate FSDP launch gets the same checks as ``train.shard: fsdp``."""
    if not wants_sharding(t.shard, accelerator):
        return False
    if accelerator.num_processes == 1:
        print("train.shard: fsdp with one process: nothing to shard, the model trains whole", file=sys.stderr)
        return False
    if t.shard != "fsdp":
        check_config(dataclasses.replace(t, shard="fsdp"), "accelerate launch with FSDP (use train.shard: fsdp)")
    shard_model(model, backbone, accelerator.device)
    return True


def weights_view(model: nn.Module, gather: bool = False):
    """What :class:`polytask.run_folder.RunFolder` saves or loads the weights of ``model``
    through: the model itself, or :class:`FullWeights` when it is sharded."""
    return FullWeights(model, gather) if is_sharded(model) else model


def block_classes(backbone: nn.Module) -> set[str]:
    """The class names of a Hugging Face model's transformer blocks (``_no_split_modules``)."""
    names = set()
    for module in backbone.modules():
        names.update(getattr(module, "_no_split_modules", None) or [])
    return names


def shard_model(model: nn.Module, backbone: nn.Module, device: torch.device) -> nn.Module:
    """Apply ``fully_shard`` to each transformer block of ``backbone`` (a part of ``model``),
    then to ``model`` itself, over all the run's processes; returns ``model`` (now sharded)."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    names = block_classes(backbone)
    blocks = [m for m in model.modules() if type(m).__name__ in names]
    if not blocks:
        raise ConfigError(f"train.shard: fsdp: the backbone {type(backbone).__name__} declares no transformer "
                          f"block classes (_no_split_modules) to shard; use train.shard: none")
    mesh = init_device_mesh(device.type, (torch.distributed.get_world_size(),))
    for block in reversed(blocks):  # inner units first, should a model declare nested block classes
        fully_shard(block, mesh=mesh)
    fully_shard(model, mesh=mesh)
    return model


def is_sharded(module: nn.Module) -> bool:
    from torch.distributed.fsdp import FSDPModule

    return isinstance(module, FSDPModule)


def is_shard(p: Tensor) -> bool:
    """A parameter (or gradient) split over the processes (a DTensor)."""
    from torch.distributed.tensor import DTensor

    return isinstance(p, DTensor)


def clip_grad_norm(params: Iterable[nn.Parameter], max_norm: float) -> Tensor:
    """``clip_grad_norm_`` over sharded gradients: the total norm of every shard of every process
    (a plain tensor, the same everywhere); gradients scaled by ``max_norm / norm`` when above."""
    params = [p for p in params if p.grad is not None]
    grads = [p.grad for p in params]
    if not grads:
        return torch.zeros(())
    norm = torch.nn.utils.get_total_norm(grads)
    if is_shard(norm):
        norm = norm.full_tensor()
    if math.isfinite(max_norm):
        torch.nn.utils.clip_grads_with_norm_(params, max_norm, norm)
    return norm


class FullWeights:
    """A sharded model's full weights for :class:`polytask.run_folder.RunFolder`, which saves and
    loads modules through ``state_dict`` / ``load_state_dict`` (safetensors' ``save_model``).

    ``FullWeights(model, gather=True)`` gathers them (every process must call it) on the main
    process's CPU; ``FullWeights(model)`` loads full weights into the shards (every process).
    """

    def __init__(self, model: nn.Module, gather: bool = False):
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        self.model = model
        self.full = None
        if gather:
            full = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
            self.full = {k: v.clone() for k, v in full.items()}  # own storage each (safetensors refuses views)

    def state_dict(self) -> dict[str, Tensor]:
        if self.full is not None:
            return self.full
        return {k: torch.empty(0) for k in self.model.state_dict()}  # names only (what loading compares)

    def load_state_dict(self, state: dict[str, Tensor], strict: bool = False):
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

        return set_model_state_dict(self.model, state, options=StateDictOptions(full_state_dict=True, strict=strict))


def _owner(model: nn.Module, extra: nn.Module | None) -> nn.Module:
    """One module that holds every parameter the optimizer updates (the model and the
    weighting method's own), which torch's optimizer state helpers look parameters up in."""
    return nn.ModuleDict({"model": model, **({"extra": extra} if extra is not None else {})})


def full_optimizer_state(model: nn.Module, extra: nn.Module | None, optimizer) -> dict:
    """The optimizer's full (unsharded) state on the main process's CPU, keyed by parameter name
    (every process must call it)."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

    return get_optimizer_state_dict(_owner(model, extra), optimizer,
                                    options=StateDictOptions(full_state_dict=True, cpu_offload=True))


def load_optimizer_state(model: nn.Module, extra: nn.Module | None, optimizer, state: dict) -> None:
    """Load :func:`full_optimizer_state` into the optimizer of the sharded model (every process)."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

    # not strict: parameters that never had a gradient (an unused pooler) have no state, as unsharded
    set_optimizer_state_dict(_owner(model, extra), optimizer, state,
                             options=StateDictOptions(full_state_dict=True, strict=False))


class unsharded:
    """``with unsharded(model):`` the model's own (root) parameters gathered, for calls that
    do not go through its ``forward`` (generation); blocks still gather themselves."""

    def __init__(self, model: nn.Module):
        self.model = model if is_sharded(model) else None

    def __enter__(self):
        if self.model is not None:
            self.model.unshard()
        return self

    def __exit__(self, *exc):
        if self.model is not None:
            self.model.reshard()


__all__ = ["SHARDS", "FullWeights", "block_classes", "check_config", "clip_grad_norm", "full_optimizer_state",
           "is_shard", "is_sharded", "load_optimizer_state", "maybe_shard", "shard_model", "unsharded",
           "wants_sharding", "weights_view"]
