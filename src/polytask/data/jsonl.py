"""JSON Lines: one JSON object per line; blank lines are ignored."""

from __future__ import annotations

import json
from pathlib import Path

from polytask.data.base import Record
from polytask.data.textfile import read_text, split_lines
from polytask.data.unicode import lone_surrogate
from polytask.errors import DataProblem


def read_jsonl(path: str | Path, *, max_examples: int | None = None,
               encoding: str = "utf-8") -> tuple[list[Record], list[DataProblem]]:
    """Every bad line becomes a problem and is skipped, so one run lists all bad lines."""
    name = str(path)
    text, problem = read_text(path, encoding)
    if problem:
        return [], [problem]
    records: list[Record] = []
    problems: list[DataProblem] = []
    for number, line in enumerate(split_lines(text), start=1):
        if max_examples is not None and len(records) >= max_examples:
            break
        if not line.strip():
            continue
        try:
            value = json.loads(line)
        except json.JSONDecodeError as exc:
            problems.append(DataProblem(name, number, None,
                                        f"invalid JSON: {exc.msg} (column {exc.colno})"))
            continue
        except RecursionError:
            problems.append(DataProblem(name, number, None, "invalid JSON: nested too deeply"))
            continue
        if not isinstance(value, dict):
            kind = type(value).__name__
            problems.append(DataProblem(name, number, None,
                                        f"expected a JSON object per line, got {kind}"))
            continue
        surrogate = lone_surrogate(value)
        if surrogate:
            problems.append(DataProblem(name, number, None, surrogate))
            continue
        records.append(Record(value, name, number))
    return records, problems
