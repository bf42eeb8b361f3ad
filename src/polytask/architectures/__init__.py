"""Sharing architectures, one file each; the registry is the catalogue.

Select one in YAML with ``architecture: {name: mmoe, args: {n_experts: 4}}``; docs/architectures.md
explains when to choose which.
"""

from __future__ import annotations

import inspect

from torch import nn

from polytask.architectures.adapters import Adapters
from polytask.architectures.base import Architecture, Features
from polytask.architectures.causal_lm import CausalLM
from polytask.architectures.cross_stitch import CrossStitch
from polytask.architectures.hard import HardSharing
from polytask.architectures.mmoe import MMoE
from polytask.architectures.mtan import MTAN
from polytask.architectures.ple import PLE
from polytask.architectures.soft import SoftSharing
from polytask.backbones.io import io_of_backbone
from polytask.errors import ConfigError
from polytask.registry import resolve

REGISTRY: dict[str, type[Architecture]] = {
    "hard": HardSharing,
    "soft": SoftSharing,
    "cross_stitch": CrossStitch,
    "mtan": MTAN,
    "mmoe": MMoE,
    "ple": PLE,
    "adapters": Adapters,
    "causal_lm": CausalLM,  # decoder LLM for generation tasks (docs/llm.md)
}


def architecture_class(name: str) -> type[Architecture]:
    return resolve(REGISTRY, name, "architecture")


def build_architecture(name: str, backbone: nn.Module, tasks: list[str], args: dict | None = None) -> Architecture:
    cls = architecture_class(name).variant_for(io_of_backbone(backbone))
    args = dict(args or {})
    try:
        inspect.signature(cls).bind(backbone, tasks, **args)
    except TypeError as exc:
        accepted = [p for p in inspect.signature(cls).parameters if p not in ("backbone", "tasks")]
        raise ConfigError(f"architecture.args: {exc} ({name} accepts: {', '.join(accepted) or 'no arguments'})") from None
    return cls(backbone, tasks, **args)


__all__ = ["REGISTRY", "Architecture", "Features", "architecture_class", "build_architecture"]
