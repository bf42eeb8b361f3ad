"""The reader for a file: :func:`read_records` picks it from the format or the file extension.

Readers never raise on bad content: they return ``(records, problems)`` so that a caller can
check every file of every task first and report all problems together in one
:class:`~polytask.errors.DataError`, instead of failing on the first bad line.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from polytask.data.base import Record
from polytask.data.conll import read_conll
from polytask.data.delimited import read_delimited
from polytask.data.hf import read_hf
from polytask.data.jsonl import read_jsonl
from polytask.data.squad import read_squad
from polytask.errors import DataProblem

FORMATS = ("jsonl", "csv", "tsv", "conll", "hf", "squad", "npz", "imagefolder", "coco")
EXTENSIONS = {".jsonl": "jsonl", ".json": "jsonl", ".csv": "csv", ".tsv": "tsv",
              ".conll": "conll", ".txt": "conll", ".iob": "conll", ".npz": "npz"}


def infer_format(path: str | Path) -> str | None:
    """Format from the file extension (``.json`` is read as JSON Lines too; a folder is an image
    folder, root/<label>/<file>), or ``None``."""
    return "imagefolder" if Path(path).is_dir() else EXTENSIONS.get(Path(path).suffix.lower())


def read_records(path: str | Path, fmt: str | None = None, *, max_examples: int | None = None,
                 delimiter: str | None = None, tag_column: int = -1, encoding: str = "utf-8",
                 split: str = "train", config_name: str | None = None,
                 data_files: Any = None) -> tuple[list[Record], list[DataProblem]]:
    """Read one file (or, with ``fmt="hf"``, one Hugging Face dataset split named by ``path``).

    ``max_examples`` keeps the first N valid records and stops reading there.
    """
    fmt = fmt.lower() if fmt else infer_format(path)
    if fmt == "hf":
        return read_hf(str(path), split, config_name=config_name, data_files=data_files,
                       max_examples=max_examples)
    if fmt == "jsonl":
        return read_jsonl(path, max_examples=max_examples, encoding=encoding)
    if fmt in ("csv", "tsv"):
        return read_delimited(path, fmt, max_examples=max_examples, delimiter=delimiter,
                              encoding=encoding)
    if fmt == "squad":
        return read_squad(path, max_examples=max_examples, encoding=encoding)
    if fmt == "conll":
        return read_conll(path, max_examples=max_examples, tag_column=tag_column,
                          encoding=encoding)
    if fmt == "coco":
        from polytask.data.boxes import read_coco

        return read_coco(path, max_examples=max_examples)
    if fmt in ("npz", "imagefolder"):
        from polytask.data.images import read_image_folder, read_npz

        return (read_npz if fmt == "npz" else read_image_folder)(path, max_examples=max_examples)
    known = ", ".join(FORMATS)
    suffix = Path(path).suffix
    what = f"unknown format '{fmt}'" if fmt else f"cannot tell the format from '{suffix}'"
    return [], [DataProblem(str(path), None, None, f"{what}; use one of: {known}")]
