"""SQuAD JSON, v1.1 and v2.0 as published (Rajpurkar et al. 2016, 2018): one record per question.

``{"data": [{"title", "paragraphs": [{"context", "qas": [{"id", "question", "answers":
[{"text", "answer_start"}], "is_impossible", "plausible_answers"}]}]}], "version"}``.

Each record has the fields ``id``, ``title``, ``question``, ``context``, ``answers`` (a list of
``{text, answer_start}``; empty for an unanswerable question), ``is_impossible`` (SQuAD 2.0; false
when absent), ``plausible_answers`` (SQuAD 2.0's answers of an unanswerable question: kept for
reference, never trained on) and ``answer`` (the first answer's text, "" when unanswerable: the
target of a ``generation`` task on the same file). A record's ``line`` is the question's number
in the file (1 = the first question), so every problem names the file, that number and the
question id.
"""

from __future__ import annotations

import json
from pathlib import Path

from polytask.data.base import Record
from polytask.data.textfile import read_text
from polytask.errors import DataProblem


def read_squad(path: str | Path, *, max_examples: int | None = None,
               encoding: str = "utf-8") -> tuple[list[Record], list[DataProblem]]:
    """Every question of a SQuAD JSON file; a malformed part is a problem, the rest is read."""
    name = str(path)
    text, problem = read_text(path, encoding)
    if problem:
        return [], [problem]
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as exc:
        return [], [DataProblem(name, None, None, f"invalid JSON: {exc.msg} (line {exc.lineno}, column {exc.colno})")]
    if not isinstance(doc, dict) or not isinstance(doc.get("data"), list):
        return [], [DataProblem(name, None, None, "not SQuAD JSON: expected an object with a 'data' list of "
                                "articles ({title, paragraphs: [{context, qas}]})")]
    records: list[Record] = []
    problems: list[DataProblem] = []
    for a, article in enumerate(doc["data"]):
        paragraphs = article.get("paragraphs") if isinstance(article, dict) else None
        if not isinstance(paragraphs, list):
            problems.append(DataProblem(name, None, f"data[{a}]", "article without a 'paragraphs' list"))
            continue
        for p, para in enumerate(paragraphs):
            where = f"data[{a}].paragraphs[{p}]"
            qas = para.get("qas") if isinstance(para, dict) else None
            if not isinstance(qas, list):
                problems.append(DataProblem(name, None, where, "paragraph without a 'qas' list"))
                continue
            for q in qas:
                if max_examples is not None and len(records) >= max_examples:
                    return records, problems
                records.append(question_record(q, para, article, name, len(records) + 1))
    return records, problems


def question_record(q: object, para: dict, article: dict, file: str, number: int) -> Record:
    """One question as a record (checked later by the task, which knows what it allows)."""
    q = q if isinstance(q, dict) else {"question": q}
    answers = q.get("answers", [])
    impossible = bool(q.get("is_impossible", False))
    first = answers[0].get("text", "") if isinstance(answers, list) and answers and isinstance(answers[0], dict) else ""
    fields = {"id": str(q.get("id", number)), "title": article.get("title", ""), "question": q.get("question"),
              "context": para.get("context"), "answers": answers, "is_impossible": impossible,
              "plausible_answers": q.get("plausible_answers", []), "answer": first}
    return Record(fields, file, number)
