"""Inference precision parity: fp32 vs bf16 vs int8 on a trained run's dev or test sets.

    python benchmarks/precision.py RUN_DIR [--split test] [--threads 1] [--repeats 3] [--json out.json]

For each precision the run supports here (bf16 needs a CPU with AMX or AVX512_BF16, or a GPU;
int8 is CPU-only), every task's split is predicted with the same batches; printed per task: the
share of labels (or tags, or rounded scores) identical to fp32's, the main metric and its
change from fp32; and the seconds per pass (the fastest of ``--repeats``, interleaved between
precisions, so that a machine's load drifts over all of them alike). This is how
``--precision auto``'s default was chosen (docs/serving.md).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from polytask.dataset import encode_all, prepare
from polytask.devices import module_device
from polytask.errors import PolytaskError
from polytask.evaluate import macro_score, predict_features
from polytask.precision import autocast
from polytask.predict import Predictor


def load(run_dir: Path, split: str) -> tuple[dict[str, Predictor], dict]:
    """Every precision's predictor that this machine supports, and the encoded split."""
    preds = {}
    for precision in ("fp32", "bf16", "int8"):
        try:
            preds[precision] = Predictor.load(run_dir, precision=precision)
        except PolytaskError as exc:
            print(f"{precision}: skipped ({exc})")
    first = preds["fp32"]
    data = prepare(first.cfg, splits=("train", split))
    for name, td in data.items():
        td.task = first.tasks[name]
    encode_all(data, first.tokenizer, first.cfg.model.max_length)
    return preds, data


def one_pass(pred: Predictor, data: dict, split: str) -> tuple[dict[str, list], float]:
    """Every task's predictions at ``pred``'s precision, and the seconds they took."""
    started = time.perf_counter()
    out = {}
    with torch.inference_mode(), autocast(pred.precision, module_device(pred.model).type):
        for name, td in data.items():
            if td.features.get(split):
                out[name] = predict_features(pred.model, pred.tasks[name], td.features[split], pred.pad_id, 64)
    return out, time.perf_counter() - started


def same(a, b) -> list[bool]:
    """Per compared unit: a label, each tag of a sequence, or a score to 2 decimals."""
    if isinstance(a, list):
        return [x == y for x, y in zip(a, b)] or [True]
    if isinstance(a, float):
        return [round(a, 2) == round(b, 2)]
    return [a == b]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run_dir", type=Path)
    ap.add_argument("--split", default="dev")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    preds, data = load(args.run_dir, args.split)
    seconds = {p: [] for p in preds}
    got = {}
    for _ in range(args.repeats):  # interleaved: each repetition runs every precision once
        for precision, pred in preds.items():
            got[precision], secs = one_pass(pred, data, args.split)
            seconds[precision].append(secs)
    tasks = preds["fp32"].tasks
    rows = {}
    for precision in preds:
        metrics = {n: tasks[n].metrics(p, [tasks[n].reference(e) for e in data[n].examples[args.split]])
                   for n, p in got[precision].items()}
        rows[precision] = {"seconds": min(seconds[precision]), "macro": macro_score(metrics, tasks), "tasks": {
            n: {"identical": sum(u := [s for a, b in zip(p, got["fp32"][n]) for s in same(a, b)]) / len(u),
                "metric": metrics[n][tasks[n].main_metric]} for n, p in got[precision].items()}}
    report(rows, tasks, args)


def report(rows: dict, tasks: dict, args) -> None:
    base = rows["fp32"]
    print(f"{args.run_dir} {args.split}; torch {torch.__version__}, {args.threads} thread(s), fastest of {args.repeats}")
    print(f"{'precision':10} {'task':10} {'identical':>10} {'metric':>9} {'delta':>8}")
    for precision, row in rows.items():
        for name, r in row["tasks"].items():
            delta = r["metric"] - base["tasks"][name]["metric"]
            print(f"{precision:10} {name:10} {r['identical']:10.4f} {r['metric']:9.4f} {delta:+8.4f}")
        print(f"{precision:10} {'(all)':10} {'':>10} macro {row['macro']:.4f}  {row['seconds']:.2f}s "
              f"({base['seconds'] / row['seconds']:.2f}x fp32)")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
