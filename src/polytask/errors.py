"""The project's own error types. Every user-facing failure is one of these, with a location."""

from __future__ import annotations

from dataclasses import dataclass


class PolytaskError(Exception):
    """Base class: an error the user can act on (bad config, bad data, bad run folder)."""


class ConfigError(PolytaskError):
    """A configuration problem; the message names the key's dotted path."""


@dataclass(frozen=True)
class DataProblem:
    """One problem in one input file: where it is and what is wrong."""

    file: str
    line: int | None
    field: str | None
    message: str

    def __str__(self) -> str:
        where = self.file if self.line is None else f"{self.file}:{self.line}"
        what = f" field '{self.field}':" if self.field else ""
        return f"{where}:{what} {self.message}"


class DataError(PolytaskError):
    """One or more data problems, collected before training starts and reported together."""

    def __init__(self, problems: list[DataProblem], limit: int = 50):
        self.problems = list(problems)
        shown = "\n".join(f"  - {p}" for p in self.problems[:limit])
        more = len(self.problems) - limit
        tail = f"\n  ... and {more} more" if more > 0 else ""
        n = len(self.problems)
        super().__init__(f"{n} data problem{'s' if n != 1 else ''}:\n{shown}{tail}")


class CheckpointError(PolytaskError):
    """A run folder or checkpoint that cannot be loaded (missing, corrupted, newer format)."""
