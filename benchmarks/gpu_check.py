#!/usr/bin/env python3
"""GPU check: the standard 6-task suite on MiniLM and the SmolLM2 per-task LoRA example, timed.

On a machine with a CUDA GPU (at most ~10 minutes)::

    python benchmarks/gpu_check.py --data-dir ../shared/data            # cuda, bf16

prints, per run: device, precision, steps, samples/s and tokens/s of training (from the run's
own event log: the examples and tokens that StepDraws counted, over the logged wall time,
evaluation excluded) and peak GPU memory. ``--device cpu --steps 3`` runs the same code on the
CPU (tests/test_benchmark_scripts.py does, so the script cannot rot where no GPU is lent).
Not measured yet: the share of step time spent in polytask's own code (see
benchmarks/throughput.py for the CPU profile).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
RUNS = {  # name -> (config, overrides that keep it short)
    "glue-minilm": (HERE / "glue_standard.yaml", ["train.eval_every=100000"]),
    "smollm2-lora": (HERE.parent / "examples" / "llm_quick.yaml", ["train.eval_every=100000"]),
}


def measure(name: str, config: Path, overrides: list[str], args, out_dir: str) -> dict:
    import torch

    from polytask.config import load_config
    from polytask.run_folder import RunFolder
    from polytask.train import train

    cfg = load_config(config, overrides + [f"data_dir={args.data_dir}", f"output_dir={out_dir}", f"name={name}",
                                           f"train.max_steps={args.steps}", f"train.device={args.device}",
                                           f"train.mixed_precision={args.precision}", "compare=null",
                                           f"train.log_every={max(1, min(10, args.steps // 2))}"])
    for t in cfg.tasks:  # the final evaluation is not what is measured
        t.data.max_eval = min(t.data.max_eval or 64, 64)
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    started = time.perf_counter()
    run = RunFolder(train(cfg, progress=False))
    wall = time.perf_counter() - started
    events = run.events("train")
    last = events[-1]
    first = events[0] if len(events) > 1 else {"elapsed": 0.0, "examples": {}, "tokens": {}}
    secs = last["elapsed"] - first["elapsed"] or last["elapsed"]
    examples = sum(last["examples"].values()) - sum(first["examples"].values())
    tokens = sum(last["tokens"].values()) - sum(first["tokens"].values())
    return {"run": name, "device": run.events("start")[0]["device"], "precision": args.precision,
            "steps": last["step"], "samples_per_s": examples / secs, "tokens_per_s": tokens / secs,
            "peak_gpu_mib": torch.cuda.max_memory_allocated() / 2**20 if torch.cuda.is_available() else None,
            "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None, "wall_s": wall}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data-dir", default=str(HERE.parent.parent / "shared" / "data"))
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--precision", default="bf16")
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--runs", nargs="*", default=list(RUNS))
    ap.add_argument("--out", help="also write the results as JSON here")
    args = ap.parse_args(argv)
    results = []
    with tempfile.TemporaryDirectory() as out_dir:
        for name in args.runs:
            config, overrides = RUNS[name]
            results.append(measure(name, config, overrides, args, out_dir))
            r = results[-1]
            peak = "-" if r["peak_gpu_mib"] is None else f"{r['peak_gpu_mib']:.0f} MiB"
            print(f"{r['run']:<14} {r['device']:<8} {r['precision']:<5} {r['steps']:>5} steps  "
                  f"{r['samples_per_s']:8.1f} samples/s  {r['tokens_per_s']:10.0f} tokens/s  peak {peak}  "
                  f"({r['wall_s']:.0f} s)", flush=True)
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
