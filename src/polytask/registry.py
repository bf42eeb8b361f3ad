"""Name -> class lookup shared by every family (weighting, samplers, tasks, architectures).

A name is either a key of the family's registry or a dotted path ``package.module:Class`` to a
user's own class, so extending polytask needs no fork.

A dotted path imports (runs) code. A config that the user gives is theirs to run; a run folder
may come from anywhere, so loading one resolves registered names only, inside
:func:`registered_only`, unless the user allows its code explicitly (``allow_code=True``,
``--allow-code`` on the command line).

Hugging Face folders can name code too (``auto_map`` in a tokenizer's or model's JSON).
Every ``from_pretrained`` / ``from_config`` in polytask passes :func:`trust_remote_code`:
``False`` (never transformers' interactive prompt) unless the user allowed code explicitly, inside
:func:`allowing_code`.
"""

from __future__ import annotations

import contextlib
import contextvars
import importlib
from typing import Iterator

from polytask.errors import ConfigError

_CODE_REFUSED_FOR: contextvars.ContextVar[str | None] = contextvars.ContextVar("polytask_code_refused_for",
                                                                               default=None)


@contextlib.contextmanager
def registered_only(source: str) -> Iterator[None]:
    """Within this block, a dotted path (user code) named by ``source`` is refused, not imported."""
    token = _CODE_REFUSED_FOR.set(source)
    try:
        yield
    finally:
        _CODE_REFUSED_FOR.reset(token)

_CODE_ALLOWED: contextvars.ContextVar[bool] = contextvars.ContextVar("polytask_code_allowed", default=False)


@contextlib.contextmanager
def allowing_code() -> Iterator[None]:
    """Within this block the user has allowed code (``allow_code=True`` / ``--allow-code``): Hugging
    Face folders may run their own code (``trust_remote_code=True``)."""
    token = _CODE_ALLOWED.set(True)
    try:
        yield
    finally:
        _CODE_ALLOWED.reset(token)


def trust_remote_code() -> bool:
    """What every ``from_pretrained`` passes as ``trust_remote_code``: an explicit bool, so transformers
    never asks on a terminal; True only inside :func:`allowing_code`."""
    return _CODE_ALLOWED.get()


def refuse_remote_code(exc: Exception, what: str) -> None:
    """Raise a ConfigError for transformers' "needs trust_remote_code" refusal of ``what``; return
    for any other error (the caller reports it)."""
    if "trust_remote_code" in str(exc):
        raise ConfigError(f"{what} names its own Python code (auto_map); polytask does not run code from a "
                          f"model or run folder unless you allow it (allow_code=True, or --allow-code on the "
                          f"command line) because you trust where it came from") from None


def resolve(registry: dict[str, type], name: str, family: str) -> type:
    if name in registry:
        return registry[name]
    if ":" in name:
        refused_for = _CODE_REFUSED_FOR.get()
        if refused_for is not None:
            raise ConfigError(f"{refused_for} names the {family} '{name}', which is code outside polytask; it is "
                              f"not imported from a run folder unless you allow it (allow_code=True, or "
                              f"--allow-code on the command line) because you trust where the folder came from")
        module, _, attr = name.partition(":")
        try:
            return getattr(importlib.import_module(module), attr)
        except (ImportError, AttributeError) as exc:
            raise ConfigError(f"cannot import {family} '{name}': {exc}") from exc
    known = ", ".join(sorted(registry))
    raise ConfigError(f"unknown {family} '{name}'; known: {known} (or 'module:Class')")
