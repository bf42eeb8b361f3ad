"""Property: whatever bytes a file holds, readers return records/problems and never raise."""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from polytask.data import read_records

# Characters that matter to the formats, plus arbitrary text (no lone surrogates: not encodable).
STRUCTURE = st.sampled_from(['{', '}', '[', ']', '"', ',', ':', '\t', ' ', '\n', '\r', '\n\n',
                             '-DOCSTART-', '{"a": 1}', 'x,y', 'B-PER', '\\', 'null', '\ufeff'])
TEXT = st.lists(st.one_of(STRUCTURE, st.text(st.characters(blacklist_categories=("Cs",)),
                                              max_size=8)), max_size=30).map("".join)
WHOLE_FILE = ("file not found", "header row is required")
CONTENT = st.one_of(TEXT.map(lambda s: s.encode("utf-8")), st.binary(max_size=200))


@settings(max_examples=150, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(content=CONTENT, ext=st.sampled_from(["jsonl", "csv", "tsv", "conll"]),
       max_examples=st.one_of(st.none(), st.integers(0, 3)))
def test_readers_never_raise(tmp_path, content, ext, max_examples):
    path = tmp_path / f"input.{ext}"
    path.write_bytes(content)
    records, problems = read_records(path, max_examples=max_examples)
    assert max_examples is None or len(records) <= max_examples
    last_line = len(content.splitlines()) + 1
    for problem in problems:
        assert problem.file == str(path) and problem.message
        if problem.line is None:  # only problems about the file as a whole have no line
            assert any(m in problem.message for m in WHOLE_FILE), problem
        else:
            assert isinstance(problem.line, int) and 1 <= problem.line <= last_line
    for record in records:
        assert record.file == str(path) and record.line >= 1
