"""Single-task extractive QA on SQuAD: polytask vs plain transformers (issue 27's benchmark).

Both train the same backbone (all-MiniLM-L6-v2 by default) on the same questions of
``squad/train.json`` with the same batch size, learning rate, warm-up, weight decay, number of
epochs and seed, then answer the same questions of ``squad/dev.json``; both are scored with the
same SQuAD exact match / F1 (:func:`polytask.tasks.spans.squad_scores`, the official
normalisation).

(a) **reference**: ``AutoModelForQuestionAnswering`` + ``Trainer`` with the preprocessing of the
    transformers QA examples (run_qa.py's ``prepare_train_features`` /
    ``prepare_validation_features``, written out below): question + context windows of
    ``--max-length`` tokens with ``--doc-stride`` overlap, **padded to max_length** as those
    examples do, one training example per window; the examples' post-processing (``n_best``
    starts and ends of each window, start + end logit over all windows, ``max_answer_length``).
(b) **polytask**: ``polytask.train`` on an ``extractive_qa`` task with the same settings
    (``data.format: squad``): one example per question with all of its windows, each batch
    padded to its own longest window, length grouping.

Budget: the same number of epochs over the same questions (the reference's epoch is every
window of every question once; polytask's is every question once, with all its windows: the
same windows). Examples per second count questions (the reference's windows per second are
printed too); training time excludes loading, tokenizing and evaluation (the reference's
``train_runtime``; polytask's loop time at its last logged step before the final evaluation).

Targets (issue 27): polytask's dev F1 >= the reference's - 1 point; polytask's training
questions/s >= 1.3x the reference's.

    python benchmarks/qa_squad.py --data-dir ../shared/data                    # the full benchmark
    python benchmarks/qa_squad.py --data-dir ../shared/data --max-train 64 --max-eval 32   # smoke test

Both sides train in fp32 by default; ``--precision bf16`` puts both under bf16 autocast (the
Trainer's ``bf16=True``; polytask's ``train.mixed_precision: bf16``). Add ``--json out.json`` to
save the numbers.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import tempfile
import time
from pathlib import Path


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data-dir", default="../shared/data")
    p.add_argument("--backbone", default="minilm")
    p.add_argument("--max-train", type=int, default=None, help="first N training questions (default: all)")
    p.add_argument("--max-eval", type=int, default=None, help="first N dev questions (default: all)")
    p.add_argument("--epochs", type=float, default=2.0)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--eval-batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--warmup-ratio", type=float, default=0.1)
    p.add_argument("--weight-decay", type=float, default=0.01)
    p.add_argument("--max-length", type=int, default=384)
    p.add_argument("--doc-stride", type=int, default=128)
    p.add_argument("--max-answer-length", type=int, default=30)
    p.add_argument("--n-best", type=int, default=20)
    p.add_argument("--seed", type=int, default=13)
    p.add_argument("--max-windows", type=int, default=None,
                   help="polytask's max_windows_per_batch (default: its own, 1.5 x batch size; a large value: no cap)")
    p.add_argument("--precision", choices=["fp32", "bf16"], default="fp32",
                   help="both sides: fp32, or bf16 autocast (Trainer bf16=True; polytask train.mixed_precision bf16)")
    p.add_argument("--only", choices=["reference", "polytask"], default=None, help="run one side only")
    p.add_argument("--json", default=None, help="save the numbers here")
    return p.parse_args(argv)


def load_questions(path: Path, limit: int | None) -> list[dict]:
    """The first ``limit`` questions of a SQuAD file, through polytask's reader (both sides
    read the same questions)."""
    from polytask.data.squad import read_squad

    records, problems = read_squad(path, max_examples=limit)
    if problems:
        raise SystemExit(f"{path}: {problems[0]}")
    return [{"id": r.fields["id"], "question": r.fields["question"], "context": r.fields["context"],
             "answers": r.fields["answers"]} for r in records]


# -- (a) the reference: transformers' QA example recipe -------------------------------------------
def tokenize(tok, rows: list[dict], args) -> dict:
    """run_qa.py's tokenization: windows padded to max_length, with offsets and owners."""
    return tok([r["question"].lstrip() for r in rows], [r["context"] for r in rows], truncation="only_second",
               max_length=args.max_length, stride=args.doc_stride, return_overflowing_tokens=True,
               return_offsets_mapping=True, padding="max_length")


def train_features(tok, rows: list[dict], args) -> list[dict]:
    """run_qa.py's ``prepare_train_features``: start/end token of the first answer, or [CLS]
    (index 0) when the window does not hold the whole answer."""
    enc = tokenize(tok, rows, args)
    feats = []
    for i, owner in enumerate(enc["overflow_to_sample_mapping"]):
        seq, offsets = enc.sequence_ids(i), enc["offset_mapping"][i]
        answer = rows[owner]["answers"][0]
        start_char = answer["answer_start"]
        end_char = start_char + len(answer["text"])
        first = seq.index(1)
        last = len(seq) - 1 - seq[::-1].index(1)
        if offsets[first][0] > start_char or offsets[last][1] < end_char:
            start = end = 0
        else:
            start = first
            while start <= last and offsets[start][0] <= start_char:
                start += 1
            start -= 1
            end = last
            while end >= first and offsets[end][1] >= end_char:
                end -= 1
            end += 1
        feat = {k: enc[k][i] for k in ("input_ids", "attention_mask", "token_type_ids") if k in enc}
        feats.append({**feat, "start_positions": start, "end_positions": end})
    return feats


def postprocess(enc, start_logits, end_logits, rows: list[dict], args) -> list[str]:
    """The examples' ``postprocess_qa_predictions``: n-best starts x ends per window, start +
    end logit, the best over all windows of a question (context tokens only)."""
    best: dict[int, tuple[float, str]] = {}
    for i, owner in enumerate(enc["overflow_to_sample_mapping"]):
        seq, offsets = enc.sequence_ids(i), enc["offset_mapping"][i]
        s_log, e_log = start_logits[i], end_logits[i]
        context = [j for j, s in enumerate(seq) if s == 1]
        starts = sorted(context, key=lambda j: -s_log[j])[: args.n_best]
        ends = sorted(context, key=lambda j: -e_log[j])[: args.n_best]
        for s in starts:
            for e in ends:
                if e < s or e - s + 1 > args.max_answer_length:
                    continue
                score = float(s_log[s] + e_log[e])
                if owner not in best or score > best[owner][0]:
                    best[owner] = (score, rows[owner]["context"][offsets[s][0]: offsets[e][1]])
    return [best.get(q, (0.0, ""))[1] for q in range(len(rows))]


def run_reference(train: list[dict], dev: list[dict], args, out_dir: Path) -> dict:
    import numpy as np
    from transformers import AutoModelForQuestionAnswering, AutoTokenizer, Trainer, TrainingArguments, set_seed

    from polytask.backbones.encoder import resolve_backbone
    from polytask.tasks.spans import squad_scores

    set_seed(args.seed)
    path = resolve_backbone(args.backbone)
    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModelForQuestionAnswering.from_pretrained(path)
    feats = train_features(tok, train, args)
    targs = TrainingArguments(output_dir=str(out_dir / "reference"), per_device_train_batch_size=args.batch_size,
                              per_device_eval_batch_size=args.eval_batch_size, learning_rate=args.lr,
                              num_train_epochs=args.epochs, warmup_steps=args.warmup_ratio,  # a float: a ratio
                              weight_decay=args.weight_decay, seed=args.seed, save_strategy="no", report_to=[],
                              logging_steps=50, disable_tqdm=True, use_cpu=not _cuda(),
                              bf16=args.precision == "bf16")
    trainer = Trainer(model=model, args=targs, train_dataset=feats)
    result = trainer.train()
    enc = tokenize(tok, dev, args)
    inputs = [{k: enc[k][i] for k in ("input_ids", "attention_mask", "token_type_ids") if k in enc}
              for i in range(len(enc["input_ids"]))]
    started = time.perf_counter()
    out = trainer.predict(inputs)
    predict_seconds = time.perf_counter() - started
    start_logits, end_logits = (np.asarray(x) for x in out.predictions[:2])
    answers = postprocess(enc, start_logits, end_logits, dev, args)
    scores = squad_scores(answers, [[a["text"] for a in r["answers"]] for r in dev])
    seconds = float(result.metrics["train_runtime"])
    return {"side": f"reference ({args.precision})", "train_seconds": seconds, "questions": len(train), "windows": len(feats),
            "questions_per_s": len(train) * args.epochs / seconds, "windows_per_s": len(feats) * args.epochs / seconds,
            "dev_questions_per_s": len(dev) / predict_seconds, **scores}


# -- (b) polytask ---------------------------------------------------------------------------------
def polytask_config(args, out_dir: Path, n_train: int) -> dict:
    steps = max(1, math.ceil(args.epochs * n_train / args.batch_size))
    task = {"name": "squad", "type": "extractive_qa", "doc_stride": args.doc_stride,
            "max_answer_length": args.max_answer_length, "n_best": args.n_best,
            **({"max_windows_per_batch": args.max_windows} if args.max_windows else {}),
            "data": {"format": "squad", "train": "squad/train.json", "dev": "squad/dev.json",
                     "max_train": args.max_train, "max_eval": args.max_eval}}
    return {"name": "qa_squad", "output_dir": str(out_dir), "data_dir": str(Path(args.data_dir).resolve()),
            "seed": args.seed, "model": {"backbone": args.backbone, "max_length": args.max_length}, "tasks": [task],
            "train": {"max_steps": steps, "batch_size": args.batch_size, "eval_batch_size": args.eval_batch_size,
                      "lr": args.lr, "warmup_ratio": args.warmup_ratio, "weight_decay": args.weight_decay,
                      "eval_every": steps, "log_every": max(1, min(50, steps)), "schedule": "linear",
                      "mixed_precision": "bf16" if args.precision == "bf16" else "no"}}


def run_polytask(train: list[dict], dev: list[dict], args, out_dir: Path) -> dict:
    import polytask
    from polytask.config import from_dict
    from polytask.run_folder import RunFolder

    raw = polytask_config(args, out_dir, len(train))
    steps = raw["train"]["max_steps"]
    raw["train"]["log_every"] = steps  # one train event, logged before the final evaluation
    run_dir = polytask.train(from_dict(raw), progress=False)
    events = RunFolder(run_dir).events("train")
    seconds = float(events[-1]["elapsed"])
    summary = json.loads((Path(run_dir) / "summary.json").read_text())
    pred = polytask.load(run_dir)
    started = time.perf_counter()
    answers = [p["answer"] for p in pred.predict("squad", [{"question": r["question"], "context": r["context"]}
                                                           for r in dev], batch_size=args.eval_batch_size)]
    predict_seconds = time.perf_counter() - started
    from polytask.tasks.spans import squad_scores

    scores = squad_scores(answers, [[a["text"] for a in r["answers"]] for r in dev])
    seen = events[-1]["examples"]["squad"]
    windows = sum(len(f["sizes"]) for f in _features(pred, train, args))
    return {"side": f"polytask ({args.precision})", "train_seconds": seconds, "questions": len(train), "windows": windows,
            "questions_per_s": seen / seconds, "windows_per_s": windows * seen / len(train) / seconds,
            "dev_questions_per_s": len(dev) / predict_seconds, "logged_dev": summary["dev"]["squad"], **scores}


def _features(pred, rows: list[dict], args) -> list[dict]:
    from polytask.data.records import Record

    task = pred.tasks["squad"]
    exs = [task.parse(Record(dict(r), "train", i + 1))[0] for i, r in enumerate(rows)]
    return task.encode(exs, pred.tokenizer, args.max_length)


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def table(rows: list[dict]) -> str:
    lines = ["| side | dev EM | dev F1 | train questions/s | train windows/s | train s | dev questions/s |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['side']} | {100 * r['exact_match']:.2f} | {100 * r['f1']:.2f} | "
                     f"{r['questions_per_s']:.2f} | {r['windows_per_s']:.2f} | {r['train_seconds']:.1f} | "
                     f"{r['dev_questions_per_s']:.1f} |")
    sides = {r["side"].split(" ")[0]: r for r in rows}
    if len(sides) == 2:
        ref, ours = sides["reference"], sides["polytask"]
        speed = ours["questions_per_s"] / ref["questions_per_s"]
        gap = 100 * (ours["f1"] - ref["f1"])
        lines.append(f"\npolytask vs reference: F1 {gap:+.2f} points (target >= -1: "
                     f"{'met' if gap >= -1 else 'NOT met'}), training questions/s x{speed:.2f} "
                     f"(target >= 1.3: {'met' if speed >= 1.3 else 'NOT met'})")
    return "\n".join(lines)


def main(argv=None) -> None:
    args = parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    squad = Path(args.data_dir) / "squad"
    train = load_questions(squad / "train.json", args.max_train)
    dev = load_questions(squad / "dev.json", args.max_eval)
    print(f"{len(train)} training questions, {len(dev)} dev questions, {args.epochs:g} epochs, batch "
          f"{args.batch_size}, max_length {args.max_length}, doc_stride {args.doc_stride}, {args.precision}",
          file=sys.stderr)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        if args.only in (None, "reference"):
            rows.append(run_reference(train, dev, args, Path(tmp)))
        if args.only in (None, "polytask"):
            rows.append(run_polytask(train, dev, args, Path(tmp)))
    print(table(rows))
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
