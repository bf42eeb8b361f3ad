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
    item: str | None = None  # what the line is when it is not a text line, e.g. "question 56be4db0"

    def __str__(self) -> str:
        where = self.file if self.line is None else f"{self.file}:{self.line}"
        where += f" ({self.item})" if self.item else ""
        what = f" field '{self.field}':" if self.field else ""
        return f"{where}:{what} {self.message}"


class DataError(PolytaskError):
    """One or more data problems, collected before training starts and reported together.

    The same problem on many rows of a file (a wrong column name, say) is one line with the
    number of rows and the first few line numbers, not thousands of lines.
    """

    def __init__(self, problems: list[DataProblem], limit: int = 50, hint: str | None = None):
        self.problems = list(dict.fromkeys(problems))  # one problem once (several tasks may read one field)
        self.hint = hint
        groups = group_problems(self.problems)
        shown = "\n".join(f"  - {g}" for g in groups[:limit])
        more = len(groups) - limit
        tail = f"\n  ... and {more} more" if more > 0 else ""
        tail += f"\n{hint}" if hint else ""
        n = len(self.problems)
        super().__init__(f"{n} data problem{'s' if n != 1 else ''}:\n{shown}{tail}")


def group_problems(problems: list[DataProblem], show_lines: int = 3) -> list[str]:
    """One line per distinct (file, field, message), in order of first appearance."""
    groups: dict[tuple, list[DataProblem]] = {}
    for p in problems:
        groups.setdefault((p.file, p.field, p.message), []).append(p)
    out = []
    for same in groups.values():
        if len(same) == 1:
            out.append(str(same[0]))
            continue
        first = same[0]
        lines = ", ".join(f"{p.line} ({p.item})" if p.item else str(p.line) for p in same[:show_lines]) + (", ..." if len(same) > show_lines else "")
        what = f" field '{first.field}':" if first.field else ""
        out.append(f"{first.file}:{what} {first.message} ({len(same)} rows: lines {lines})")
    return out


class CheckpointError(PolytaskError):
    """A run folder or checkpoint that cannot be loaded (missing, corrupted, newer format)."""
