#!/usr/bin/env python3
"""GPU check: the standard 6-task suite on MiniLM and the SmolLM2 per-task LoRA example, timed.

On a machine with a CUDA GPU (at most ~10 minutes)::

    python benchmarks/gpu_check.py --data-dir ../shared/data            # cuda; bf16 and fp32; compile off and on

runs every configuration in bf16 and in fp32 (``--precision bf16,no``), and the MiniLM suite also
with ``train.compile: true`` (``--compile off,on``; the LLM run is refused by compile and stays
eager), and prints, per run: device, precision, compile, steps, samples/s and tokens/s of training (the examples and
tokens the run's seeded draws trained on, replayed exactly, over the steps after a warm-up,
evaluation excluded), peak GPU memory, and the share of step time spent in polytask's own code
(everything but forward, loss, backward, clipping and the optimizer: the profile of
benchmarks/throughput.py, with ``torch.cuda.synchronize`` around every timed part on a GPU so
that asynchronous kernels count where they are launched) and waiting for data (the prefetch
queue); then bf16 / fp32 and compiled / eager ratios of samples/s per run. The compiled run's
first steps compile the graph: with the default 200 steps, the warm-up (20 steps) absorbs it.
``--device cpu --steps 3 --precision no --compile off`` runs the same code on the CPU
(tests/test_benchmark_scripts.py does, so the script cannot rot where no GPU is lent).
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


def measure(name: str, config: Path, overrides: list[str], args, out_dir: str, precision: str = "bf16",
            compiled: bool = False) -> dict:
    import torch

    sys.path.insert(0, str(HERE))
    from throughput import run_polytask

    from polytask.config import load_config
    from polytask.run_folder import RunFolder

    cfg = load_config(config, overrides + [f"data_dir={args.data_dir}", f"train.device={args.device}",
                                           f"train.mixed_precision={precision}", f"train.compile={compiled}",
                                           "compare=null"])
    for t in cfg.tasks:  # the final evaluation is not what is measured
        t.data.max_eval = min(t.data.max_eval or 64, 64)
    warmup = max(1, min(20, args.steps // 10))
    cuda = torch.cuda.is_available() and args.device != "cpu"
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    started = time.perf_counter()
    prof = run_polytask(cfg, args.steps - warmup, warmup, Path(out_dir) / f"{name}-{precision}-{compiled}",
                        sync=torch.cuda.synchronize if cuda else None)
    wall = time.perf_counter() - started
    own = sum(prof["overhead"].values())
    return {"run": name, "device": RunFolder(prof["run_dir"]).events("start")[0]["device"],
            "precision": precision, "compile": compiled, "steps": args.steps, "measured_steps": args.steps - warmup,
            "samples_per_s": prof["samples_per_s"], "tokens_per_s": prof["tokens_per_s"],
            "own_code_share": 100 * own / prof["seconds"],
            "waiting_for_data_share": 100 * prof["waiting_for_data_seconds"] / prof["seconds"],
            "peak_gpu_mib": torch.cuda.max_memory_allocated() / 2**20 if cuda else None,
            "gpu": torch.cuda.get_device_name() if cuda else None, "wall_s": wall}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data-dir", default=str(HERE.parent.parent / "shared" / "data"))
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--precision", default="bf16,no", help="train.mixed_precision values, comma-separated")
    ap.add_argument("--compile", default="off,on", help="train.compile off and/or on (encoder runs only)")
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--runs", nargs="*", default=list(RUNS))
    ap.add_argument("--out", help="also write the results as JSON here")
    args = ap.parse_args(argv)
    results = []
    with tempfile.TemporaryDirectory() as out_dir:
        for name in args.runs:
            config, overrides = RUNS[name]
            for precision in args.precision.split(","):
                for compiled in [c == "on" for c in args.compile.split(",") if c == "off" or name in COMPILES]:
                    results.append(measure(name, config, overrides, args, out_dir, precision, compiled))
                    print_result(results[-1])
    print_ratios(results)
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=2))
    return 0


COMPILES = ("glue-minilm",)  # train.compile is for encoder backbones


def print_result(r: dict) -> None:
    peak = "-" if r["peak_gpu_mib"] is None else f"{r['peak_gpu_mib']:.0f} MiB"
    print(f"{r['run']:<14} {r['device']:<8} {r['precision']:<5} {'compiled' if r['compile'] else 'eager':<8} "
          f"{r['steps']:>5} steps  {r['samples_per_s']:8.1f} samples/s  {r['tokens_per_s']:10.0f} tokens/s  "
          f"peak {peak}  polytask's own code {r['own_code_share']:.1f}% of step time (waiting for data "
          f"{r['waiting_for_data_share']:.2f}%)  ({r['wall_s']:.0f} s)", flush=True)


def print_ratios(results: list[dict]) -> None:
    """bf16 / fp32 (eager) and compiled / eager (per precision) samples/s, per run."""
    speed = {(r["run"], r["precision"], r["compile"]): r["samples_per_s"] for r in results}
    for (run, precision, compiled), value in speed.items():
        if precision == "bf16" and not compiled and (run, "no", False) in speed:
            print(f"{run:<14} bf16 / fp32: {value / speed[(run, 'no', False)]:.2f}x samples/s")
        if compiled and (run, precision, False) in speed:
            print(f"{run:<14} {precision} compiled / eager: {value / speed[(run, precision, False)]:.2f}x samples/s")


if __name__ == "__main__":
    sys.exit(main())
