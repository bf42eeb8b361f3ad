"""Training speed, side by side: polytask vs tasknet (multi-task on the Hugging Face Trainer).

Both trainers fine-tune MiniLM (all-MiniLM-L6-v2, one classification head per task) on the same
data (SST-2 and TREC from ``--data-dir``, the first ``--max-train`` training examples of each),
with the same batch size, seed, learning rate (linear decay, no warm-up), weight decay 0.01,
gradient clipping at 1.0, maximum length, one task per step drawn in proportion to its size,
and the same number of torch threads, in fp32 and in bf16 autocast. Each training runs in a
fresh process; the repetitions are interleaved (repetition r runs every trainer and precision
once, the trainers' order alternating), so that a machine's load drifts over all of them alike.

Measured: training examples per second over the steps after ``--warmup`` (polytask: between
its logs of those steps, from its own replay of what each step trained on; tasknet: between
the Trainer's ``on_step_end`` callbacks of those steps), then dev accuracy per task at the end.
Printed: the median examples/s over the repetitions, polytask / tasknet (target >= 2x in both
precisions), the dev metrics, and where polytask's step time went (the profile of
benchmarks/throughput.py: forward/backward, clipping, optimizer step, schedule, overhead).

tasknet needs its own environment: ``--tasknet-python`` names a Python that imports it, e.g. a
venv under /tmp made with ``python -m venv /tmp/tasknet-venv`` and ``pip install tasknet==1.60``
(or ``--no-deps`` plus its small dependencies, with a ``.pth`` file naming polytask's
site-packages for torch, transformers and datasets). tasknet loads the seqeval and BLEU metrics
from the Hugging Face Hub when it is imported (for tagging and generation tasks, not used here);
offline, the worker lets those two loads return None.

    python benchmarks/speed_tasknet.py --data-dir ../shared/data --tasknet-python /tmp/tasknet-venv/bin/python
    python benchmarks/speed_tasknet.py --data-dir ../shared/data --tasknet-python ... \\
        --steps 4 --warmup 1 --max-train 64 --max-dev 32 --repeats 1          # smoke size, a few minutes

Add ``--json out.json`` to save every worker's numbers.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
TASKS = ("sst2", "trec")
TRAINERS = ("polytask", "tasknet")
MARK = "SPEED_RESULT "


def read_split(data_dir: Path, task: str, split: str, n: int | None) -> tuple[list[str], list[str]]:
    rows = [json.loads(line) for line in (data_dir / task / f"{split}.jsonl").read_text().splitlines() if line]
    rows = rows[:n] if n else rows
    return [r["text"] for r in rows], [str(r["label"]) for r in rows]


def polytask_config(args) -> dict:
    return {
        "name": "speed", "output_dir": "unused", "data_dir": str(args.data_dir), "seed": args.seed,
        "model": {"backbone": "minilm", "max_length": args.max_length},
        "tasks": [{"name": t, "type": "classification", "data": {"train": f"{t}/train.jsonl", "dev": f"{t}/dev.jsonl",
                   "max_train": args.max_train, "max_eval": args.max_dev}} for t in TASKS],
        "sampling": {"name": "proportional"},
        "train": {"batch_size": args.batch_size, "lr": args.lr, "weight_decay": 0.01, "grad_clip": 1.0,
                  "schedule": "linear", "warmup_ratio": 0.0, "num_threads": args.threads,
                  "mixed_precision": "bf16" if args.precision == "bf16" else "no"},
    }


def polytask_worker(args) -> dict:
    import torch

    sys.path.insert(0, str(HERE))
    from throughput import run_polytask

    from polytask.config import from_dict

    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        r = run_polytask(from_dict(polytask_config(args)), args.steps, args.warmup, Path(tmp))
        summary = json.loads((Path(r["run_dir"]) / "summary.json").read_text())
    return {"examples_per_s": r["samples_per_s"], "seconds": r["seconds"], "examples": r["examples"],
            "dev": {t: summary["dev"][t]["accuracy"] for t in TASKS},
            "profile": {**r["model_parts"], **r["overhead"]}}


def tasknet_dataset(args, task: str):
    from datasets import ClassLabel, Dataset, DatasetDict, Features, Value

    train_x, train_y = read_split(args.data_dir, task, "train", args.max_train)
    dev_x, dev_y = read_split(args.data_dir, task, "dev", args.max_dev)
    names = sorted(set(train_y))
    features = Features({"sentence": Value("string"), "label": ClassLabel(names=names)})

    def part(x, y):
        return Dataset.from_dict({"sentence": x, "label": [names.index(v) for v in y]}, features=features)

    dev = part(dev_x, dev_y)
    return DatasetDict(train=part(train_x, train_y), validation=dev, test=dev)


def tasknet_worker(args) -> dict:
    import evaluate
    import torch
    import transformers

    real_load = evaluate.load

    def offline_load(name, *a, **k):  # seqeval and BLEU, loaded at import, are for other task types
        try:
            return real_load(name, *a, **k)
        except Exception:  # noqa: BLE001 - offline: no Hub
            return None

    evaluate.load = offline_load
    import tasknet as tn

    torch.set_num_threads(args.threads)
    window: dict[str, float] = {}

    class Window(transformers.TrainerCallback):
        def on_step_end(self, targs, state, control, **kw):
            if state.global_step in (args.warmup, args.warmup + args.steps):
                window["start" if state.global_step == args.warmup else "end"] = time.perf_counter()

    tasks = [tn.Classification(dataset=tasknet_dataset(args, t), s1="sentence", y="label", name=t) for t in TASKS]
    with tempfile.TemporaryDirectory() as tmp:
        hparams = dict(model_name=args.model_path, learning_rate=args.lr, weight_decay=0.01,
                       per_device_train_batch_size=args.batch_size, per_device_eval_batch_size=64,
                       max_steps=args.warmup + args.steps, warmup_steps=0, lr_scheduler_type="linear",
                       max_grad_norm=1.0, max_length=args.max_length, seed=args.seed, bf16=args.precision == "bf16",
                       use_cpu=True, eval_strategy="no", logging_strategy="no", save_strategy="no", report_to=[],
                       dataloader_num_workers=0, disable_tqdm=True, output_dir=tmp)
        trainer = tn.Trainer(tn.Model(tasks, hparams), tasks, hparams)
        trainer.add_callback(Window())
        trainer.train()
        outputs = trainer.evaluate(metric_key_prefix="test")  # one per task, on the dev set given as test
    secs = window["end"] - window["start"]
    examples = args.steps * args.batch_size
    return {"examples_per_s": examples / secs, "seconds": secs, "examples": examples,
            "dev": {t: float(o.get("test_accuracy", float("nan"))) for t, o in zip(TASKS, outputs)}}


def run_worker(args, trainer: str, precision: str) -> dict:
    python = sys.executable if trainer == "polytask" else args.tasknet_python
    cmd = [python, str(Path(__file__).resolve()), "--worker", trainer, "--precision", precision,
           *[f"--{k.replace('_', '-')}={v}" for k, v in shared_args(args).items()]]
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "MKL_NUM_THREADS": str(args.threads),
           "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=args.timeout)
    lines = [line for line in proc.stdout.splitlines() if line.startswith(MARK)]
    if proc.returncode or not lines:
        raise SystemExit(f"{trainer} {precision} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return json.loads(lines[-1][len(MARK):])


def shared_args(args) -> dict:
    from polytask.backbones.encoder import resolve_backbone

    keys = ("data_dir", "steps", "warmup", "batch_size", "threads", "seed", "lr", "max_length", "max_train", "max_dev")
    return {**{k: getattr(args, k) for k in keys if getattr(args, k) is not None},
            "model_path": resolve_backbone("minilm")}  # the same MiniLM files for both (tasknet's env lacks polytask)


def report(results: dict, args) -> None:
    print(f"\npolytask vs tasknet: {', '.join(TASKS)}, MiniLM, batch {args.batch_size}, max length {args.max_length}, "
          f"{args.threads} thread(s), seed {args.seed}, {args.warmup} warm-up + {args.steps} measured steps, "
          f"{args.repeats} interleaved repetition(s); load average {os.getloadavg()[0]:.1f}")
    print(f"{'precision':10} {'trainer':9} {'examples/s (median)':>20} {'all':>28}  dev accuracy (mean)")
    for precision in args.precisions:
        speeds = {}
        for trainer in TRAINERS:
            rs = results[(trainer, precision)]
            speeds[trainer] = statistics.median(r["examples_per_s"] for r in rs)
            dev = {t: statistics.mean(r["dev"][t] for r in rs) for t in TASKS}
            print(f"{precision:10} {trainer:9} {speeds[trainer]:20.1f} "
                  f"{' '.join('%.1f' % r['examples_per_s'] for r in rs):>28}  "
                  + "  ".join(f"{t}={v:.4f}" for t, v in dev.items()))
        ratio = speeds["polytask"] / speeds["tasknet"]
        print(f"{precision:10} {'ratio':9} {ratio:19.2f}x   polytask / tasknet (target >= 2x: "
              f"{'met' if ratio >= 2 else 'not met'})")
    for precision in args.precisions:
        profile = results[("polytask", precision)][-1]["profile"]
        total = sum(profile.values())
        print(f"\npolytask step time, {precision} (last repetition, {total:.2f}s over {args.steps} steps):")
        for part, secs in sorted(profile.items(), key=lambda kv: -kv[1]):
            print(f"  {part:45} {secs:8.3f}s {100 * secs / total if total else 0:6.2f}%")


def parse(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data-dir", type=Path, default=HERE.parent.parent / "shared" / "data")
    ap.add_argument("--tasknet-python", default="python", help="a Python whose environment imports tasknet")
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--warmup", type=int, default=10)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--seed", type=int, default=13)
    ap.add_argument("--lr", type=float, default=1e-4)
    ap.add_argument("--max-length", type=int, default=64)
    ap.add_argument("--max-train", type=int, default=4000)
    ap.add_argument("--max-dev", type=int, default=None)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--precisions", default="fp32,bf16")
    ap.add_argument("--timeout", type=float, default=3600)
    ap.add_argument("--json", type=Path)
    ap.add_argument("--worker", choices=TRAINERS, help=argparse.SUPPRESS)
    ap.add_argument("--precision", default="fp32", help=argparse.SUPPRESS)
    ap.add_argument("--model-path", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    args.precisions = args.precisions.split(",")
    return args


def main(argv=None) -> int:
    args = parse(argv)
    if args.worker:
        result = (polytask_worker if args.worker == "polytask" else tasknet_worker)(args)
        print(MARK + json.dumps(result), flush=True)
        return 0
    results: dict = {}
    for rep in range(args.repeats):
        for precision in args.precisions:
            order = TRAINERS if rep % 2 == 0 else TRAINERS[::-1]
            for trainer in order:
                r = run_worker(args, trainer, precision)
                results.setdefault((trainer, precision), []).append(r)
                print(f"repetition {rep + 1} {precision} {trainer}: {r['examples_per_s']:.1f} examples/s", flush=True)
    report(results, args)
    if args.json:
        args.json.write_text(json.dumps({f"{t} {p}": v for (t, p), v in results.items()}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
