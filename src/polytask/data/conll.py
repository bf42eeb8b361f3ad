"""CoNLL-style column files: one token per line, blank lines between sentences.

Column 0 is the token and column ``tag_column`` the tag; the other columns (POS, chunk, ...)
are kept in ``fields["columns"]`` for tasks that want them. A file with a single column
(tokens only, e.g. text to tag) gives records without ``"tags"``.
"""

from __future__ import annotations

from pathlib import Path

from polytask.data.base import Record
from polytask.data.textfile import read_text, split_lines
from polytask.errors import DataProblem


def read_conll(path: str | Path, *, max_examples: int | None = None, tag_column: int = -1,
               encoding: str = "utf-8") -> tuple[list[Record], list[DataProblem]]:
    """A sentence with any bad line is reported and skipped whole: its tags would be misaligned."""
    name = str(path)
    text, problem = read_text(path, encoding)
    if problem:
        return [], [problem]
    records: list[Record] = []
    problems: list[DataProblem] = []
    width: int | None = None  # columns on the file's first token line
    rows: list[list[str]] = []
    start = 0
    bad = False

    def finish() -> None:
        nonlocal rows, bad
        if rows and not bad and (max_examples is None or len(records) < max_examples):
            records.append(_record(rows, tag_column, name, start))
        rows, bad = [], False

    for number, line in enumerate(split_lines(text), start=1):
        if max_examples is not None and len(records) >= max_examples:
            break
        parts = line.split()
        if not parts or parts[0] == "-DOCSTART-":
            finish()
            continue
        if width is None:
            width = len(parts)
            if width > 1 and not -width <= tag_column < width:
                message = f"tag_column {tag_column} is out of range for {width} columns"
                return [], [DataProblem(name, number, None, message)]
        if not rows:
            start = number
        if len(parts) != width:
            problems.append(DataProblem(name, number, None,
                                        f"expected {width} columns, got {len(parts)}"))
            bad = True
        rows.append(parts)
    finish()
    return records, problems


def _record(rows: list[list[str]], tag_column: int, name: str, line: int) -> Record:
    columns = [list(column) for column in zip(*rows)]
    fields = {"tokens": columns[0], "columns": columns}
    if len(columns) > 1:
        fields["tags"] = columns[tag_column]
    return Record(fields, name, line)
