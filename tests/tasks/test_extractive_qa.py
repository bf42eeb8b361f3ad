"""Extractive QA (issue 27): windowing, decoding, SQuAD scores, the SQuAD reader and ``check``."""

import json

import pytest
import torch
from transformers import AutoTokenizer

from polytask.backbones.encoder import resolve_backbone
from polytask.config import TaskConfig, from_dict
from polytask.data.records import Record, read_records
from polytask.dataset import label_summary, prepare
from polytask.errors import DataError
from polytask.tasks import build_task
from polytask.tasks import spans as S


@pytest.fixture(scope="module")
def tok():
    return AutoTokenizer.from_pretrained(resolve_backbone("minilm"))


def qa(**kw):
    return build_task(TaskConfig(name="qa", type="extractive_qa", **kw))


def example(task, question, context, text=None, start=None):
    answers = [] if text is None else [{"text": text, "answer_start": context.index(text) if start is None else start}]
    ex, problems = task.parse(Record({"question": question, "context": context, "answers": answers}, "f.jsonl", 1))
    assert not problems, problems
    return ex


def labelled_text(feat, w, context):
    """The context characters of window w's labelled span ("" for the no-answer position)."""
    s, e = feat["labels"][w]
    if s == feat["cls"][w]:
        return ""
    first = feat["first"][w]
    return context[feat["offsets"][w][s - first][0]: feat["offsets"][w][e - first][1]]


NUMBERS = " ".join(str(i) for i in range(100, 160))  # one word piece per number


def test_answer_at_the_last_context_token_of_a_window(tok):
    task = qa(doc_stride=8)
    windows = S.make_windows(["which?"], [NUMBERS], tok, 24, 8)[0]
    last = windows[0].offsets[-1]
    word = NUMBERS[last[0]: last[1]]
    feat = task.encode([example(task, "which?", NUMBERS, word, last[0])], tok, 24)[0]
    assert len(feat["sizes"]) > 2
    assert feat["labels"][0] == (windows[0].first + len(windows[0].offsets) - 1,) * 2
    assert labelled_text(feat, 0, NUMBERS) == word


def test_answer_across_a_window_edge_is_labelled_where_a_window_holds_it_whole(tok):
    task = qa(doc_stride=8)
    w0 = S.make_windows(["which?"], [NUMBERS], tok, 24, 8)[0][0]
    start, end = w0.offsets[-2][0], NUMBERS.index(" ", w0.offsets[-1][1] + 1)  # 2 tokens in, 1 beyond
    text = NUMBERS[start:end]
    feat = task.encode([example(task, "which?", NUMBERS, text, start)], tok, 24)[0]
    got = [labelled_text(feat, w, NUMBERS) for w in range(len(feat["sizes"]))]
    assert got[0] == "" and text in got  # the first window points at [CLS]; the overlap holds it
    no_overlap = qa(doc_stride=0)
    feat = no_overlap.encode([example(no_overlap, "which?", NUMBERS, text, start)], tok, 24)[0]
    assert all(labelled_text(feat, w, NUMBERS) == "" for w in range(len(feat["sizes"])))


def test_short_contexts_are_one_window_padded_to_the_batch_not_to_max_length(tok):
    task = qa()
    exs = [example(task, "Where?", "In Oslo.", "Oslo"), example(task, "Who is it?", "Ada.", "Ada")]
    feats = task.encode(exs, tok, 384)
    assert [f["sizes"] for f in feats] == [[len(f["input_ids"])] for f in feats]
    batch = task.collate(feats, tok.pad_token_id)
    assert batch["input_ids"].shape == (2, max(len(f["input_ids"]) for f in feats))  # not 384
    assert [labelled_text(f, 0, e.fields["context"]) for f, e in zip(feats, exs)] == ["Oslo", "Ada"]


def test_multibyte_characters_and_leading_spaces_map_back_exactly(tok):
    task = qa(doc_stride=16)
    context = "Zürich 🎓 naïve café in 東京 and the Eiffel   Tower stands."
    for text, start in [("東京", None), ("naïve café", None), (" Eiffel   Tower ", context.index(" Eiffel"))]:
        feat = task.encode([example(task, "What?", context, text, start)], tok, 48)[0]
        assert labelled_text(feat, 0, context) == text.strip()


def test_a_long_question_is_cut_so_that_windows_still_hold_context(tok):
    task = qa(doc_stride=8)
    feat = task.encode([example(task, "why " * 200, "It rained all day.", "rained")], tok, 32)[0]
    assert max(feat["sizes"]) <= 32 and labelled_text(feat, 0, "It rained all day.") == "rained"


def logits_for(n_tokens, start=None, end=None, cls=0.0):
    out = torch.zeros(n_tokens, 2)
    out[0] = cls
    for pos, s in (start or {}).items():
        out[pos, 0] = s
    for pos, e in (end or {}).items():
        out[pos, 1] = e
    return out


OFFS = [(i * 2, i * 2 + 1) for i in range(8)]  # 8 one-character context tokens at positions 2..9 of a window
CONTEXT = "a b c d e f g h"


def test_decoding_refuses_end_before_start_and_keeps_max_length():
    lg = logits_for(12, start={6: 9.0, 2: 1.0}, end={3: 9.0, 8: 2.0})  # best end (3) before best start (6)
    spans, _ = S.best_spans(lg[None], [0], [2], [OFFS], [0], max_answer_length=30)
    best = spans[0]
    assert (best.start, best.end) == (OFFS[4][0], OFFS[6][1])  # start 6, end 8: "e f g"
    assert all(s.end > s.start for s in spans)
    short, _ = S.best_spans(lg[None], [0], [2], [OFFS], [0], max_answer_length=1)
    assert all(s.end - s.start == 1 for s in short)  # one token each


def test_best_span_across_windows():
    weak = logits_for(12, start={3: 2.0}, end={4: 2.0})
    strong = logits_for(12, start={5: 4.0}, end={5: 4.0})
    offs2 = [(o[0] + 4, o[1] + 4) for o in OFFS]  # window 2 starts two tokens later in the context
    spans, _ = S.best_spans(torch.stack([weak, strong]), [0, 1], [2, 2], [OFFS, offs2], [0, 0], 30)
    assert spans[0].window == 1 and CONTEXT[spans[0].start: spans[0].end] == "f"
    got = S.answer(CONTEXT, spans, 0.0, False, 0.0)
    assert got["answer"] == "f" and (got["start"], got["end"]) == (10, 11) and 0 < got["score"] <= 1


def test_no_answer_against_the_threshold():
    lg = logits_for(12, start={4: 3.0}, end={4: 3.0}, cls=5.0)  # null 10 > best span 6
    spans, null = S.best_spans(lg[None], [0], [2], [OFFS], [0], 30)
    assert null == 10.0
    assert S.answer(CONTEXT, spans, null, True, 0.0)["answer"] == ""
    assert S.answer(CONTEXT, spans, null, True, 5.0)["answer"] == "c"  # margin 4 <= threshold 5
    assert S.answer(CONTEXT, spans, null, False, 0.0)["answer"] == "c"  # SQuAD 1.1: always a span


def test_task_decode_reads_every_window_of_a_question(tok):
    task = qa(doc_stride=8, max_answer_length=5)
    feat = task.encode([example(task, "which?", NUMBERS, "150")], tok, 24)[0]
    batch = task.collate([feat], tok.pad_token_id)
    out = torch.zeros(batch["input_ids"].shape + (2,))
    w = next(w for w in range(len(feat["sizes"])) if labelled_text(feat, w, NUMBERS) == "150")
    s, e = feat["labels"][w]
    out[w, s, 0] = out[w, e, 1] = 10.0
    pred = task.decode(out, batch)[0]
    assert pred["answer"] == "150" and NUMBERS[pred["start"]: pred["end"]] == "150"
    assert task.loss(out, batch).item() > 0 and task.loss_units(feat) == len(feat["sizes"])


# Values of the official evaluate-v2.0.py (normalize_answer, compute_exact, compute_f1), by hand.
OFFICIAL = [
    ("The Cat sat.", ["a cat sat"], 1.0, 1.0),
    ("Denver Broncos", ["Broncos"], 0.0, 2 / 3),
    ("in 1855, by", ["1855"], 0.0, 0.5),
    ("Broncos", ["Denver Broncos", "Broncos"], 1.0, 1.0),
    ("the the", ["an"], 1.0, 1.0),  # both normalise to "": the 2.0 script's rule
    ("Saint-Étienne’s", ["SaintÉtienne’s"], 1.0, 1.0),  # ASCII punctuation only
    ("", [], 1.0, 1.0),  # unanswerable, no answer given
    ("Paris", [], 0.0, 0.0),
]


@pytest.mark.parametrize("pred,refs,em,f1", OFFICIAL)
def test_scores_match_the_official_script(pred, refs, em, f1):
    assert S.question_scores(pred, refs) == (pytest.approx(em), pytest.approx(f1))


def test_scores_agree_with_torchmetrics_squad():
    from torchmetrics.functional.text import squad

    pairs = [(p, r) for p, r, _, _ in OFFICIAL if r] + [("Northern Ireland", ["Ireland", "northern parts"])]
    ours = S.squad_scores([p for p, _ in pairs], [r for _, r in pairs])
    theirs = squad([{"prediction_text": p, "id": str(i)} for i, (p, _) in enumerate(pairs)],
                   [{"answers": {"text": r, "answer_start": [0] * len(r)}, "id": str(i)} for i, (_, r) in enumerate(pairs)])
    assert ours["f1"] == pytest.approx(float(theirs["f1"]) / 100, abs=1e-6)
    assert ours["exact_match"] == pytest.approx(float(theirs["exact_match"]) / 100, abs=1e-6)


def test_squad2_metrics_and_the_tuned_threshold():
    task = qa(allow_unanswerable=True)
    preds = [{"answer": "Oslo", "null_margin": -2.0, "best_span": "Oslo"},
             {"answer": "Paris", "null_margin": -1.0, "best_span": "Paris"},
             {"answer": "", "null_margin": 1.0, "best_span": "Rome"}]
    m = task.metrics(preds, [["Oslo"], [], ["Rome"]])
    assert (m["f1"], m["has_ans_f1"], m["no_ans_f1"]) == (pytest.approx(1 / 3), 0.5, 0.0)
    assert m["best_f1"] == pytest.approx(2 / 3)  # threshold between -2 and -1: two of three right


SQUAD2 = {"version": "v2.0", "data": [{"title": "Oslo", "paragraphs": [{"context": "Oslo is the capital of Norway.", "qas": [
    {"id": "q1", "question": "What is the capital of Norway?", "answers": [{"text": "Oslo", "answer_start": 0}],
     "is_impossible": False},
    {"id": "q2", "question": "What is the capital of Sweden?", "answers": [], "is_impossible": True,
     "plausible_answers": [{"text": "Oslo", "answer_start": 0}]},
    {"id": "q3", "question": "Which country?", "answers": [{"text": "Norway", "answer_start": 3}]},
    {"id": "q4", "question": " ", "answers": [{"text": "Norway", "answer_start": 23}]},
]}]}]}


def write_squad(tmp_path, name="dev.json", doc=SQUAD2):
    path = tmp_path / name
    path.write_text(json.dumps(doc))
    return path


def test_squad2_reader_understands_is_impossible_and_plausible_answers(tmp_path):
    records, problems = read_records(write_squad(tmp_path), "squad")
    assert not problems and [r.fields["id"] for r in records] == ["q1", "q2", "q3", "q4"]
    assert records[1].fields["is_impossible"] and records[1].fields["plausible_answers"][0]["text"] == "Oslo"
    assert [r.fields["answer"] for r in records[:2]] == ["Oslo", ""]  # a generation target
    task = qa(allow_unanswerable=True)
    ex, bad = task.parse(records[1])
    assert not bad and task.reference(ex) == []  # plausible answers are not answers
    _, bad = qa().parse(records[1])  # SQuAD 1.1 task: unanswerable is a problem
    assert "does not allow them" in bad[0].message and "question q2" in str(bad[0])


def squad_config(tmp_path, **data):
    path = write_squad(tmp_path)
    clean = json.loads(json.dumps(SQUAD2))
    clean["data"][0]["paragraphs"][0]["qas"] = clean["data"][0]["paragraphs"][0]["qas"][:1]
    dev = write_squad(tmp_path, "clean.json", clean)
    task = {"name": "qa", "type": "extractive_qa", "data": {"format": "squad", "train": str(path), "dev": str(dev),
                                                            **data}}
    return from_dict({"name": "t", "output_dir": str(tmp_path / "runs"), "tasks": [task]})


def test_check_lists_every_problem_with_file_and_question_id_then_skip_drops_them(tmp_path):
    with pytest.raises(DataError) as err:
        prepare(squad_config(tmp_path))
    text = str(err.value)
    assert "dev.json:2 (question q2)" in text and "does not allow them" in text
    assert "dev.json:3 (question q3)" in text  # answer_start 3 is not "Norway"
    assert "does not index the answer text 'Norway'" in text and "empty question" in text
    data = prepare(squad_config(tmp_path, on_invalid="skip", max_invalid=0.9))
    assert [e.fields["id"] for e in data["qa"].examples["train"]] == ["q1"]
    assert "1 questions, 1 contexts, 0 unanswerable" in label_summary(data["qa"])


def test_flat_files_with_a_column_mapping(tmp_path):
    path = tmp_path / "qa.csv"
    path.write_text('q,c,a,s\nWho?,It was Ada.,Ada,7\nWhen?,In May.,,\n')
    task = qa(allow_unanswerable=True, columns={"question": "q", "context": "c", "answer_text": "a",
                                                "answer_start": "s"})
    records, problems = read_records(path)
    exs = [task.parse(r) for r in records]
    assert not problems and [e.fields["answers"] for e, _ in exs] == [[("Ada", 7)], []]
    hf = task.parse(Record({"q": "Who?", "c": "Ada.", "answers": {"text": ["Ada"], "answer_start": [0]}}, "f", 1))
    assert hf[0].fields["answers"] == [("Ada", 0)]


def test_the_same_squad_reader_feeds_a_generation_task(tmp_path):
    """One reader for both: the SQuAD records' ``answer`` is a generation task's target."""
    records, _ = read_records(write_squad(tmp_path), "squad")
    gen = build_task(TaskConfig(name="gen", type="generation", target="answer",
                                prompt="Context: {context}\nQuestion: {question}\nAnswer:"))
    ex, problems = gen.parse(records[0])
    assert not problems and ex.fields["target"] == "Oslo" and ex.fields["question"].startswith("What is the capital")


def test_squad_json_without_format_squad_is_named(tmp_path):
    records, _ = read_records(write_squad(tmp_path))  # .json: read as JSON Lines
    _, problems = qa().parse(records[0])
    assert "set tasks[qa].data.format: squad" in problems[0].message
