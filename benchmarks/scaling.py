"""CPU data-parallel scaling: 1 process x 1 thread vs N processes x 1 thread on the same work.

Both runs train the same model (MiniLM by default, or any backbone given) on the four
synthetic demo tasks with the same global batch (``--global-batch`` examples per step: one
process with that batch, N processes with ``global / N`` each, launched through ``torchrun``
with the gloo backend), the same seed and therefore the same tasks and examples at every step.
Samples/s are measured from the runs' own ``train`` events (global examples drawn and elapsed
training time), after ``--warmup`` steps; evaluation happens only after the window. Prints
samples/s of each, the ratio, and the load average before and after (other jobs on the machine
take cores from the N processes, which run in lockstep).

    python benchmarks/scaling.py                      # MiniLM, 2 processes, global batch 32, 30 steps
    python benchmarks/scaling.py --backbone PATH --steps 20 --processes 2
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml


def config(backbone: str, out: Path, name: str, batch: int, steps: int) -> dict:
    data = {"format": "synthetic", "max_train": 2000, "max_eval": 16}
    tasks = [{"name": n, "type": "classification", "data": dict(data), "pooling": "mean"} for n in ("sentiment", "topic")]
    tasks.append({"name": "entities", "type": "tagging", "data": dict(data)})
    return {"name": name, "output_dir": str(out), "seed": 1, "model": {"backbone": backbone, "max_length": 64},
            "tasks": tasks, "train": {"max_steps": steps, "batch_size": batch, "eval_every": steps, "log_every": 1,
                                      "checkpoint_every": steps, "num_threads": 1, "device": "cpu"}}


def samples_per_second(run: Path, warmup: int) -> float:
    events = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    train = [e for e in events if e["kind"] == "train"]
    first, last = train[warmup - 1], train[-1]
    examples = sum(last["examples"].values()) - sum(first["examples"].values())
    return examples / (last["elapsed"] - first["elapsed"])


def launch(processes: int, yaml_path: Path) -> float:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    cli = ["-m", "polytask.cli", "train", str(yaml_path), "--no-progress"]
    if processes > 1:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        cli = ["-m", "torch.distributed.run", "--nproc_per_node", str(processes), "--master_addr", "127.0.0.1",
               "--master_port", str(port), *cli]
    started = time.perf_counter()
    subprocess.run([sys.executable, *cli], env=env, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - started


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--backbone", default="minilm")
    ap.add_argument("--processes", type=int, default=2)
    ap.add_argument("--global-batch", type=int, default=32)
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--warmup", type=int, default=5)
    args = ap.parse_args()
    print(f"load average before: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        for processes in (1, args.processes):
            batch = args.global_batch // processes
            name = f"p{processes}"
            path = out / f"{name}.yaml"
            path.write_text(yaml.safe_dump(config(args.backbone, out, name, batch, args.steps)))
            wall = launch(processes, path)
            results[processes] = samples_per_second(out / name, args.warmup)
            print(f"{processes} process(es) x 1 thread, {batch} per process: {results[processes]:.1f} samples/s "
                  f"(wall {wall:.0f} s with start-up and evaluation)", flush=True)
    ratio = results[args.processes] / results[1]
    print(f"ratio {args.processes} processes / 1: {ratio:.2f}x (ideal {args.processes:.0f}x)")
    print(f"load average after: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()
