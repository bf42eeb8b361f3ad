"""The one shape every reader returns: a :class:`Record` that remembers where it was read."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass
class Record:
    """One example as read, before any task validates it.

    ``file`` and ``line`` travel with the example so that a task rejecting a field later can
    still say exactly where the bad value is.
    """

    fields: dict[str, Any]
    file: str
    line: int
