"""Compare the sharing architectures on three real GLUE-style tasks with MiniLM, on a small budget.

    nice -n 10 .venv/bin/python benchmarks/architectures.py              # every architecture
    .venv/bin/python benchmarks/architectures.py --only hard,mmoe --steps 50   # a quick look

Tasks (from ``../shared/data``): SST-2 (accuracy), CoLA (Matthews correlation), STS-B (Pearson),
``--train`` training examples each (default 1000), dev capped at ``--dev`` (default 300).
Every architecture trains the packaged all-MiniLM-L6-v2 for ``--steps`` steps (default 100) of
batch 16 with equal loss weights and proportional sampling, then is evaluated once on dev.

Reported per architecture: the dev main metric per task, their macro average, trainable
parameters (heads included), training throughput in samples/s (training steps only, the final
evaluation excluded; from the loop's own clock in metrics.jsonl), and peak memory: the peak
resident set size (RSS) of the training process, from ``resource.getrusage(RUSAGE_SELF).ru_maxrss``
(each architecture runs in its own subprocess, so the peak is that run's; it includes the
Python + torch + tokenizer baseline, about the same for every row).

Results are one small budget and one seed: differences of a point or two are noise. The full
table and the machine it ran on go in docs/architectures.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data"

# name -> (architecture, args, learning-rate overrides). Frozen-backbone adapters use a larger lr.
ARCHITECTURES = {
    "hard": ("hard", {}, {}),
    "soft": ("soft", {"layers": 2, "strength": 0.1}, {}),
    "cross_stitch": ("cross_stitch", {"layers": 2}, {}),
    "mtan": ("mtan", {"bottleneck": 64}, {}),
    "mmoe": ("mmoe", {"n_experts": 4}, {}),
    "ple": ("ple", {"n_shared_experts": 2, "n_task_experts": 1}, {}),
    "lora": ("adapters", {"kind": "lora", "r": 8, "alpha": 16}, {"lr": 1e-3}),
    "bottleneck": ("adapters", {"kind": "bottleneck", "bottleneck_size": 64}, {"lr": 1e-3}),
}

TASKS = [
    {"name": "sst2", "type": "classification",
     "data": {"train": "sst2/train.jsonl", "dev": "sst2/dev.jsonl"}},
    {"name": "cola", "type": "classification", "main_metric": "matthews",
     "data": {"train": "cola/train.jsonl", "dev": "cola/dev.jsonl"}},
    {"name": "stsb", "type": "regression", "columns": {"text": "text_a", "text_pair": "text_b", "target": "score"},
     "data": {"train": "stsb/train.jsonl", "dev": "stsb/dev.jsonl"}},
]


def config(name: str, args: argparse.Namespace) -> dict:
    arch, arch_args, lr = ARCHITECTURES[name]
    tasks = [{**t, "data": {**t["data"], "max_train": args.train, "max_eval": args.dev}} for t in TASKS]
    return {
        "name": name,
        "output_dir": str(args.out),
        "data_dir": str(args.data),
        "seed": args.seed,
        "model": {"backbone": args.backbone, "max_length": 128},
        "tasks": tasks,
        "architecture": {"name": arch, "args": arch_args},
        "weighting": {"name": "equal"},
        "sampling": {"name": "proportional"},
        "train": {"max_steps": args.steps, "batch_size": 16, "eval_batch_size": 64, "lr": 1e-4, "head_lr": 1e-3,
                  "warmup_ratio": 0.1, "eval_every": args.steps, "log_every": args.steps // 4 or 1,
                  "num_threads": args.threads, **lr},
    }


def run_one(name: str, args: argparse.Namespace) -> dict:
    """Train one architecture in this process; return its row (peak RSS is this process's)."""
    from polytask.config import from_dict
    from polytask.train import train

    run_dir = train(from_dict(config(name, args)), progress=False)
    summary = json.loads((run_dir / "summary.json").read_text())
    events = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    last = [e for e in events if e["kind"] == "train"][-1]
    mains = {"sst2": "accuracy", "cola": "matthews", "stsb": "pearson"}
    dev = {t: summary["dev"][t][m] for t, m in mains.items()}
    return {
        "name": name,
        "dev": dev,
        "macro": sum(dev.values()) / len(dev),
        "trainable": summary["params"]["trainable"],
        "total": summary["params"]["total"],
        "samples_per_s": last["step"] * 16 / last["elapsed"],
        "train_seconds": last["elapsed"],
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,  # Linux: KiB
    }


def table(rows: list[dict]) -> str:
    head = ("| architecture | SST-2 acc | CoLA MCC | STS-B Pearson | macro | trainable params | samples/s "
            "| peak RSS (MiB) |\n|---|---|---|---|---|---|---|---|")
    lines = [head]
    for r in rows:
        d = r["dev"]
        lines.append(f"| {r['name']} | {d['sst2']:.3f} | {d['cola']:.3f} | {d['stsb']:.3f} | {r['macro']:.3f} "
                     f"| {r['trainable'] / 1e6:.2f}M | {r['samples_per_s']:.1f} | {r['peak_rss_mib']:.0f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--only", default=",".join(ARCHITECTURES), help="comma-separated names")
    p.add_argument("--steps", type=int, default=100)
    p.add_argument("--train", type=int, default=1000, help="training examples per task")
    p.add_argument("--dev", type=int, default=300, help="dev examples per task (cap)")
    p.add_argument("--seed", type=int, default=13)
    p.add_argument("--backbone", default="minilm", help="encoder (default: the packaged MiniLM)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--data", type=Path, default=DATA)
    p.add_argument("--out", type=Path, default=REPO / "runs" / "bench-architectures")
    p.add_argument("--one", help=argparse.SUPPRESS)  # internal: run one architecture, print its row as JSON
    args = p.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

    if args.one:
        print("ROW " + json.dumps(run_one(args.one, args)), flush=True)
        return
    if not args.data.exists():
        sys.exit(f"data folder not found: {args.data}")
    names = [n.strip() for n in args.only.split(",") if n.strip()]
    unknown = [n for n in names if n not in ARCHITECTURES]
    if unknown:
        sys.exit(f"unknown architecture(s) {unknown}; known: {', '.join(ARCHITECTURES)}")
    rows = []
    started = time.time()
    for name in names:
        cmd = [sys.executable, __file__, "--one", name, "--steps", str(args.steps), "--train", str(args.train),
               "--dev", str(args.dev), "--seed", str(args.seed), "--threads", str(args.threads),
               "--backbone", args.backbone,
               "--data", str(args.data), "--out", str(args.out)]
        t0 = time.time()
        proc = subprocess.run(cmd, capture_output=True, text=True)
        row = next((json.loads(line[4:]) for line in proc.stdout.splitlines() if line.startswith("ROW ")), None)
        if proc.returncode or row is None:
            print(f"{name}: failed (exit {proc.returncode})\n{proc.stderr[-3000:]}", file=sys.stderr)
            continue
        rows.append(row)
        print(f"{name}: macro {row['macro']:.3f} in {time.time() - t0:.0f}s", file=sys.stderr, flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    info = {"date": time.strftime("%Y-%m-%d"), "machine": f"{platform.machine()}, {os.cpu_count()} CPU cores, no GPU",
            "steps": args.steps, "train": args.train, "dev": args.dev, "seed": args.seed,
            "wall_seconds": time.time() - started, "rows": rows}
    (args.out / "results.json").write_text(json.dumps(info, indent=2))
    print(f"{info['date']} | {info['machine']} | {args.steps} steps x 16, {args.train} train/task, "
          f"dev <= {args.dev}/task, seed {args.seed}")
    print(table(rows))


if __name__ == "__main__":
    main()
