"""Does the TAG affinity estimate predict real transfer? The six tasks of ../shared/data.

1. ``polytask affinity`` on all six tasks (one joint run of 6 * S steps, a lookahead every
   ``--every`` steps); that run is also the all-in-one model.
2. The real transfer at the same small budget: each task alone (S steps of ``--batch-size``)
   and each of the 15 pairs (2 * S steps, proportional sampling over equal-sized training sets:
   every task sees about S * batch examples in every run). The measured gain of an ordered pair
   (i -> j) is task j's test main metric trained with i minus trained alone (absolute
   difference, sign flipped for lower-is-better metrics; relative changes are undefined where a
   tiny-budget baseline is 0, e.g. CoLA's Matthews correlation).
3. Spearman rank correlation, over the 30 ordered pairs, between the measured gain and the
   predicted affinity (TAG Z[i -> j]; gradient cosine, symmetric). ``--tasks`` picks a subset.
4. The recommended groupings for 2 and 3 groups (TAG, and gradient cosine) are trained (a group
   of k tasks for k * S steps; singles and pairs are reused) and compared on Delta-m
   (:func:`polytask.compare.stats.delta_m_defined`, test main metrics, baseline: one model per
   task) with all-in-one (and one-per-task, Delta-m 0 by definition).

One seed: at this budget the differences are mostly noise; the numbers say what this
estimate does here, not in general. Torch is pinned to one thread.

    python benchmarks/affinity.py --data-dir ../shared/data --out /tmp/affinity-bench   # ~25 min, 2 cores
    python benchmarks/affinity.py --data-dir ../shared/data --quick --backbone TINY_DIR   # seconds (smoke)
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
import time
from pathlib import Path

TASKS = [
    {"name": "sst2", "type": "classification", "data": {"train": "sst2/train.jsonl", "dev": "sst2/dev.jsonl",
                                                         "test": "sst2/test.jsonl"}},
    {"name": "cola", "type": "classification", "main_metric": "matthews",
     "data": {"train": "cola/train.jsonl", "dev": "cola/dev.jsonl", "test": "cola/test.jsonl"}},
    {"name": "stsb", "type": "regression", "columns": {"text": "text_a", "text_pair": "text_b", "target": "score"},
     "data": {"train": "stsb/train.jsonl", "dev": "stsb/dev.jsonl", "test": "stsb/test.jsonl"}},
    {"name": "mrpc", "type": "classification", "main_metric": "f1",
     "columns": {"text": "text_a", "text_pair": "text_b"},
     "data": {"train": "mrpc/train.jsonl", "dev": "mrpc/dev.jsonl", "test": "mrpc/test.jsonl"}},
    {"name": "trec", "type": "classification",
     "data": {"train": "trec/train.jsonl", "dev": "trec/dev.jsonl", "test": "trec/test.jsonl"}},
    {"name": "conll", "type": "tagging", "data": {"train": "conll2003/train.conll", "dev": "conll2003/dev.conll",
                                                  "test": "conll2003/test.conll"}},
]


def base_config(args, names: list[str], steps: int, out: Path) -> dict:
    tasks = [dict(t, data=dict(t["data"], max_train=args.max_train, max_eval=args.max_eval))
             for t in TASKS if t["name"] in names]
    return {"name": "-".join(names), "output_dir": str(out), "data_dir": args.data_dir, "seed": args.seed,
            "model": {"backbone": args.backbone, "max_length": args.max_length}, "tasks": tasks,
            "sampling": {"name": "proportional"}, "weighting": {"name": "equal"},
            "train": {"max_steps": steps, "batch_size": args.batch_size, "eval_batch_size": 64, "lr": args.lr,
                      "head_lr": args.head_lr, "warmup_ratio": 0.1, "eval_every": steps, "log_every": 1,
                      "num_threads": 1, "cosine_every": 0}}


def train_group(args, names: list[str], root: Path) -> dict[str, float]:
    """Train one model on ``names`` (len * S steps; reused when finished); test main metric per task."""
    from polytask.config import from_dict
    from polytask.run_folder import RunFolder
    from polytask.train import train

    names = sorted(names, key=[t["name"] for t in TASKS].index)
    cfg = from_dict(base_config(args, names, len(names) * args.steps_per_task, root / "groups"))
    run = RunFolder(cfg.run_dir)
    if not run.is_finished():
        train(cfg, progress=False, overwrite=True)
    return main_metrics(cfg, run.read_summary())


def main_metrics(cfg, summary: dict) -> dict[str, float]:
    from polytask.tasks import build_task

    return {tc.name: summary["test"][tc.name][build_task(tc).main_metric] for tc in cfg.tasks}


def higher_is_better() -> dict[str, bool]:
    from polytask.config import from_dict
    from polytask.tasks import build_task

    cfg = from_dict({"tasks": TASKS})
    return {tc.name: build_task(tc).higher_is_better for tc in cfg.tasks}


def run_affinity(args, root: Path) -> tuple[dict, dict[str, float], float]:
    from polytask.affinity.run import estimate
    from polytask.config import from_dict
    from polytask.run_folder import RunFolder

    names = args.tasks
    cfg = from_dict(base_config(args, names, len(names) * args.steps_per_task, root / "affinity"))
    started = time.perf_counter()
    result = estimate(cfg, every=args.every, out=root / "affinity" / "all", progress=False, overwrite=True)
    seconds = time.perf_counter() - started
    return result, main_metrics(cfg, RunFolder(root / "affinity" / "all").read_summary()), seconds


def transfer(args, root: Path, names: list[str]) -> tuple[dict, dict, float]:
    """Singles and pairs: test metric alone, gain[i][j] of task j from training with i."""
    started = time.perf_counter()
    single = {n: train_group(args, [n], root)[n] for n in names}
    hib = higher_is_better()
    gain: dict[str, dict[str, float]] = {i: {} for i in names}
    for a, b in itertools.combinations(names, 2):
        both = train_group(args, [a, b], root)
        for i, j in ((a, b), (b, a)):
            gain[i][j] = (1 if hib[j] else -1) * (both[j] - single[j])
    return single, gain, time.perf_counter() - started


def correlations(result: dict, gain: dict) -> dict[str, dict]:
    from scipy.stats import spearmanr

    names = result["tasks"]
    pairs = [(i, j) for i in range(len(names)) for j in range(len(names)) if i != j]
    measured = [gain[names[i]][names[j]] for i, j in pairs]
    out = {}
    for kind in ("tag", "cosine"):
        predicted = [result[kind]["mean"][i][j] for i, j in pairs]
        rho, p = spearmanr(predicted, measured)
        out[kind] = {"spearman": float(rho), "p_value": float(p), "pairs": len(pairs)}
    return out


def grouping_rows(args, root: Path, result: dict, single: dict, all_in_one: dict) -> list[dict]:
    """Delta-m of all-in-one, one-per-task and the recommended 2- and 3-group splits."""
    from polytask.affinity.grouping import groupings
    from polytask.compare.stats import delta_m_defined

    hib = higher_is_better()
    rows = [{"grouping": "all-in-one", "groups": [result["tasks"]], "metrics": all_in_one},
            {"grouping": "one per task", "groups": [[n] for n in result["tasks"]], "metrics": dict(single)}]
    for kind in ("tag", "cosine"):
        recs = {g["groups"]: g["grouping"] for g in groupings(result[kind]["mean"], result["tasks"])}
        for k in [k for k in (2, 3) if k < len(result["tasks"])]:
            metrics = {}
            for group in recs[k]:
                metrics.update(train_group(args, group, root))
            rows.append({"grouping": f"{kind} best {k} groups", "groups": recs[k], "metrics": metrics})
    for row in rows:
        row["delta_m"], row["excluded"] = delta_m_defined(row["metrics"], single, hib)
    return rows


def report(result: dict, single: dict, gain: dict, corr: dict, rows: list[dict], seconds: dict) -> str:
    names = result["tasks"]
    lines = ["measured gain of task j (column) from training with task i (row), test main metric, "
             "pair minus alone:", "| i \\ j | " + " | ".join(names) + " |", "|---" * (len(names) + 1) + "|"]
    for i in names:
        lines.append(f"| {i} | " + " | ".join("" if i == j else f"{gain[i][j]:+.3f}" for j in names) + " |")
    lines.append("alone: " + ", ".join(f"{n} {v:.3f}" for n, v in single.items()))
    for kind, c in corr.items():
        lines.append(f"Spearman({kind} affinity, measured gain) over {c['pairs']} ordered pairs: "
                     f"{c['spearman']:+.3f} (p = {c['p_value']:.2f})")
    lines += ["", "| grouping | groups | Delta-m (%) vs one per task |", "|---|---|---|"]
    for r in rows:
        groups = " / ".join("+".join(g) for g in r["groups"])
        excluded = f" (without {', '.join(r['excluded'])}: zero baseline)" if r["excluded"] else ""
        lines.append(f"| {r['grouping']} | {groups} | {r['delta_m']:+.2f}{excluded} |")
    cost = result["cost"]
    lines.append(f"affinity run: {seconds['affinity']:.0f} s wall ({cost['lookahead_seconds']:.0f} s in "
                 f"{cost['lookaheads']} lookaheads, {cost['train_seconds']:.0f} s in training steps, ratio "
                 f"{cost['ratio']:.2f}); singles + pairs: {seconds['transfer']:.0f} s; groupings: "
                 f"{seconds['groupings']:.0f} s")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data-dir", default=str(Path(__file__).resolve().parents[2] / "shared" / "data"))
    p.add_argument("--out", default="runs/affinity-bench")
    p.add_argument("--backbone", default="minilm")
    p.add_argument("--steps-per-task", type=int, default=12)
    p.add_argument("--every", type=int, default=6)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--max-train", type=int, default=160)
    p.add_argument("--max-eval", type=int, default=100)
    p.add_argument("--max-length", type=int, default=64)
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--head-lr", type=float, default=1e-3)
    p.add_argument("--seed", type=int, default=13)
    p.add_argument("--tasks", nargs="+", default=[t["name"] for t in TASKS], choices=[t["name"] for t in TASKS])
    p.add_argument("--quick", action="store_true", help="tiny sizes for a smoke test (use a tiny --backbone)")
    p.add_argument("--json", default=None, help="write every number here")
    args = p.parse_args(argv)
    if args.quick:
        args.steps_per_task, args.every, args.batch_size, args.max_train, args.max_eval = 2, 4, 4, 64, 16
        args.max_length = 32
    import torch

    torch.set_num_threads(1)
    root = Path(args.out)
    seconds = {}
    t0 = time.perf_counter()
    result, all_in_one, seconds["affinity"] = run_affinity(args, root)
    single, gain, seconds["transfer"] = transfer(args, root, result["tasks"])
    corr = correlations(result, gain)
    tick = time.perf_counter()
    rows = grouping_rows(args, root, result, single, all_in_one)
    seconds["groupings"], seconds["total"] = time.perf_counter() - tick, time.perf_counter() - t0
    print(report(result, single, gain, corr, rows, seconds))
    print(f"total: {seconds['total']:.0f} s wall; budget: {args.steps_per_task} steps of {args.batch_size} per task "
          f"per run, max_train {args.max_train}, max_length {args.max_length}, seed {args.seed}")
    if args.json:
        Path(args.json).write_text(json.dumps({"args": vars(args), "affinity": result, "single": single, "gain": gain,
                                               "correlations": corr, "groupings": rows, "seconds": seconds},
                                              indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
