"""CSV and TSV files with a header row (named ``delimited`` so it cannot shadow stdlib ``csv``).

Values stay strings: which column is a number is the task's business, not the reader's.
TSV is read without quote handling (``QUOTE_NONE``), as tab-separated corpora usually contain
bare ``"`` characters in text; with CSV quoting, one such quote would swallow the following
lines into a single field.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path

from polytask.data.base import Record
from polytask.data.textfile import read_text
from polytask.errors import DataProblem


def read_delimited(path: str | Path, fmt: str = "csv", *, max_examples: int | None = None,
                   delimiter: str | None = None,
                   encoding: str = "utf-8") -> tuple[list[Record], list[DataProblem]]:
    """Rows become dicts keyed by the header; ``Record.line`` is the row's first physical line."""
    name = str(path)
    text, problem = read_text(path, encoding)
    if problem:
        return [], [problem]
    tsv = fmt == "tsv"
    quoting = csv.QUOTE_NONE if tsv else csv.QUOTE_MINIMAL
    sep = delimiter or ("\t" if tsv else ",")
    try:
        reader = csv.reader(io.StringIO(text, newline=""), delimiter=sep, quoting=quoting)
    except (TypeError, csv.Error) as exc:
        return [], [DataProblem(name, None, None, f"bad delimiter {sep!r}: {exc}")]
    header: list[str] | None = None
    records: list[Record] = []
    problems: list[DataProblem] = []
    last_line = 0
    while max_examples is None or len(records) < max_examples:
        start = last_line + 1
        try:
            row = next(reader)
        except StopIteration:
            break
        except csv.Error as exc:
            problems.append(DataProblem(name, start, None, f"malformed {fmt.upper()} row: {exc}"))
            if reader.line_num == last_line:  # the reader made no progress: stop, don't spin
                break
            last_line = reader.line_num
            continue
        last_line = reader.line_num
        if not row or row == [""]:
            continue  # blank line
        if header is None:
            header = row
            problems += _header_problems(name, start, header)
            continue
        if len(row) != len(header):
            problems.append(DataProblem(
                name, start, None,
                f"expected {len(header)} fields (as in the header), got {len(row)}"))
            continue
        records.append(Record(dict(zip(header, row)), name, start))
    if header is None and not problems:
        problems.append(DataProblem(name, None, None, "empty file: a header row is required"))
    return records, problems


def _header_problems(name: str, line: int, header: list[str]) -> list[DataProblem]:
    """Empty or repeated column names would silently lose values when rows become dicts."""
    problems = []
    seen: set[str] = set()
    for column in header:
        if not column.strip():
            problems.append(DataProblem(name, line, None, "header has an empty column name"))
        elif column in seen:
            problems.append(DataProblem(name, line, column, "column name repeated in header"))
        seen.add(column)
    return problems
