"""Sharing architectures, one file each; the registry is the catalogue."""

from __future__ import annotations

from torch import nn

from polytask.architectures.base import Architecture, Features
from polytask.architectures.hard import HardSharing
from polytask.registry import resolve

REGISTRY: dict[str, type[Architecture]] = {
    "hard": HardSharing,
}


def build_architecture(name: str, backbone: nn.Module, tasks: list[str], args: dict | None = None) -> Architecture:
    return resolve(REGISTRY, name, "architecture")(backbone, tasks, **(args or {}))


__all__ = ["REGISTRY", "Architecture", "Features", "build_architecture"]
