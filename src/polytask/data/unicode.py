"""Text that is not valid Unicode: a lone surrogate (``"\\ud800"``, half of a UTF-16 pair that
JSON escapes can spell) cannot be encoded, tokenized or written back. Readers and the server
reject it at the boundary, naming where it is, so it never reaches a traceback."""

from __future__ import annotations

import re
from typing import Any

_SURROGATE = re.compile("[\ud800-\udfff]")


def lone_surrogate(value: Any, where: str = "") -> str | None:
    """Where the first lone surrogate in ``value`` (a string, or lists and dicts of them, keys
    included) is, as ``'FIELD: a lone surrogate \\\\udXXX at character N'``; None when there is none."""
    if isinstance(value, str):
        found = _SURROGATE.search(value)
        if found is None:
            return None
        return (f"{where + ': ' if where else ''}a lone surrogate \\u{ord(found.group()):04x} at character "
                f"{found.start()} (not valid Unicode: half of a UTF-16 pair); fix or remove it")
    if isinstance(value, dict):
        for k, v in value.items():
            problem = lone_surrogate(k, f"{where}.<key>".lstrip(".")) or lone_surrogate(v, f"{where}.{k}".lstrip("."))
            if problem:
                return problem
    if isinstance(value, list):
        for i, v in enumerate(value):
            problem = lone_surrogate(v, f"{where}[{i}]")
            if problem:
                return problem
    return None


def printable(text: str, limit: int = 300) -> str:
    """``text`` safe to echo in a message: lone surrogates escaped (they cannot be encoded), at
    most ``limit`` characters (a huge value is cut, saying how long it was)."""
    if len(text) > limit:
        text = f"{text[:limit]}... ({len(text)} characters)"
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


__all__ = ["lone_surrogate", "printable"]
