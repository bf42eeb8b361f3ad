"""Hugging Face ``datasets``: a hub name (needs internet) or a local builder such as
``"json"``/``"csv"`` with ``data_files`` (works offline).

``datasets`` raises many exception types (connection, missing config, missing split, bad
files); all of them become one :class:`DataProblem` naming the dataset, so a config that
points at a wrong dataset is reported like any other bad input. Values are kept as
``datasets`` gives them (a ``ClassLabel`` stays an int).
"""

from __future__ import annotations

from typing import Any

from polytask.data.base import Record
from polytask.errors import DataProblem


def hf_source(name: str, split: str, config_name: str | None = None) -> str:
    """The ``Record.file`` of an HF row: ``hf:<name>[/<config>]:<split>``."""
    config = f"/{config_name}" if config_name else ""
    return f"hf:{name}{config}:{split}"


def read_hf(name: str, split: str, config_name: str | None = None, data_files: Any = None,
            max_examples: int | None = None,
            cache_dir: str | None = None) -> tuple[list[Record], list[DataProblem]]:
    """``Record.line`` is the row index + 1, so messages read like those for files."""
    source = hf_source(name, split, config_name)
    try:
        import datasets

        dataset = datasets.load_dataset(name, config_name, split=split, data_files=data_files,
                                        cache_dir=cache_dir)
    except ImportError:
        return [], [DataProblem(source, None, None, "needs the 'datasets' package")]
    except Exception as exc:  # noqa: BLE001 - any datasets failure is a data problem
        message = f"cannot load dataset '{name}': {type(exc).__name__}: {exc}"
        return [], [DataProblem(source, None, None, message)]
    records: list[Record] = []
    for index, row in enumerate(dataset):
        if max_examples is not None and index >= max_examples:
            break
        records.append(Record(dict(row), source, index + 1))
    return records, []
