"""Readers that turn files into :class:`Record` lists, reporting problems with file, line, field."""

from polytask.data.records import FORMATS, Record, infer_format, read_records
from polytask.data.synthetic import SYNTHETIC_TASKS, synthetic_records

__all__ = ["FORMATS", "Record", "SYNTHETIC_TASKS", "infer_format", "read_records",
           "synthetic_records"]
