"""Name -> class lookup shared by every family (weighting, samplers, tasks, architectures).

A name is either a key of the family's registry or a dotted path ``package.module:Class`` to a
user's own class, so extending polytask needs no fork.
"""

from __future__ import annotations

import importlib

from polytask.errors import ConfigError


def resolve(registry: dict[str, type], name: str, family: str) -> type:
    if name in registry:
        return registry[name]
    if ":" in name:
        module, _, attr = name.partition(":")
        try:
            return getattr(importlib.import_module(module), attr)
        except (ImportError, AttributeError) as exc:
            raise ConfigError(f"cannot import {family} '{name}': {exc}") from exc
    known = ", ".join(sorted(registry))
    raise ConfigError(f"unknown {family} '{name}'; known: {known} (or 'module:Class')")
