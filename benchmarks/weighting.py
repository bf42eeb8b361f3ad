"""Cost of every weighting method relative to equal weighting, on the real MiniLM and 6 tasks.

Each (method, grad_space) runs in its own subprocess so that its peak memory is its own. Every
step draws one batch of each of the 6 tasks (the same batches for every method: same seeds),
runs ``polytask.train.forward_backward`` (the trainer's own step) and an optimizer step.
Prints seconds per step and the peak resident memory during the measured steps (the peak is
reset after warm-up through /proc/self/clear_refs, Linux), each as a ratio to equal weighting
measured in the same run. Equal weighting is measured first and last in each grad space; the
ratios are to the mean of the two (their difference is the machine's drift, i.e. the noise).

    python benchmarks/weighting.py --data-dir ../shared/data            # all methods, ~15 min on 2 cores
    python benchmarks/weighting.py --methods equal uw pcgrad --steps 3  # a subset
    python benchmarks/weighting.py --gram-only                          # only the T = 16, 32 table

It then times each gradient method's ``combine`` alone on synthetic Gram matrices of T = 16 and
T = 32 tasks (``--gram-sizes``), in a child process pinned to one thread: milliseconds per call,
mean and worst over ``--gram-calls`` different matrices (Gaussian gradients in 256 dimensions,
half of the tasks pushed against the others, norms spread over 1e-2..1e2).
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

TASKS = [
    {"name": "sst2", "type": "classification", "data": {"train": "sst2/train.jsonl"}},
    {"name": "cola", "type": "classification", "data": {"train": "cola/train.jsonl"}},
    {"name": "stsb", "type": "regression", "data": {"train": "stsb/train.jsonl"},
     "columns": {"text": "text_a", "text_pair": "text_b", "target": "score"}},
    {"name": "mrpc", "type": "classification", "data": {"train": "mrpc/train.jsonl"},
     "columns": {"text": "text_a", "text_pair": "text_b"}},
    {"name": "trec", "type": "classification", "data": {"train": "trec/train.jsonl"}},
    {"name": "conll", "type": "tagging", "data": {"train": "conll2003/train.conll"}},
]


def child(method: str, space: str, data_dir: str, steps: int, batch_size: int) -> dict:
    from polytask.backbones.encoder import load_encoder
    from polytask.batching import BatchStream
    from polytask.config import from_dict
    from polytask.dataset import encode_all, prepare
    from polytask.gradients import balance_params
    from polytask.model import build_model
    from polytask.train import build_components, forward_backward, make_optimizer, seed_everything

    tasks = [dict(t, data=dict(t["data"], max_train=64 * batch_size)) for t in TASKS]
    cfg = from_dict({"data_dir": data_dir, "tasks": tasks, "weighting": {"name": method},
                     "train": {"grad_space": space, "batch_size": batch_size}})
    data = prepare(cfg, splits=("train",))
    backbone, tokenizer = load_encoder("minilm")
    encode_all(data, tokenizer, cfg.model.max_length)
    seed_everything(0)
    task_objs = {n: td.task for n, td in data.items()}
    model = build_model(cfg, backbone, task_objs)
    weighting, _ = build_components(cfg, list(task_objs), [1] * len(task_objs))
    optimizer = make_optimizer(cfg, model, weighting)
    streams = {n: BatchStream([len(f["input_ids"]) for f in data[n].features["train"]], batch_size, i)
               for i, n in enumerate(task_objs)}
    grad_params = balance_params(model, space, cfg.train.grad_layers)
    model.train()

    def step():
        batches = {n: task_objs[n].collate([data[n].features["train"][i] for i in streams[n].next()], 0)
                   for n in task_objs}
        forward_backward(model, task_objs, batches, weighting, cfg.train, grad_params)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    step()  # warm-up (allocations, lazy init)
    reset_peak_rss()  # the peak of loading the model must not hide the peak of the steps
    started = time.perf_counter()
    for _ in range(steps):
        step()
    seconds = (time.perf_counter() - started) / steps
    return {"method": method, "space": space, "sec_per_step": seconds, "peak_rss_mb": peak_rss_mb()}


def gram_child(methods: list[str], sizes: list[int], calls: int) -> dict:
    """ms per ``combine`` call of each gradient method on synthetic Gram matrices (one thread)."""
    import torch

    from polytask.weighting import REGISTRY, build_weighting

    torch.set_num_threads(1)
    out = {}
    for method in methods:
        if not REGISTRY[method].needs_grads:
            continue
        out[method] = {}
        for T in sizes:
            tasks = [f"t{i}" for i in range(T)]
            weighting = build_weighting(method, tasks)
            losses = torch.ones(T, dtype=torch.float64)
            gen = torch.Generator().manual_seed(T)
            times = []
            for k in range(calls + 1):
                G = torch.randn(T, 256, generator=gen, dtype=torch.float64)
                G[: T // 2] -= 1.5 * G[T // 2 :].mean(0)  # conflicting halves
                G = G * torch.logspace(-2, 2, T, dtype=torch.float64)[torch.randperm(T, generator=gen)][:, None]
                K = G @ G.T
                started = time.perf_counter()
                weighting.combine(losses, tasks, K)
                if k > 0:  # the first call pays for lazy imports (scipy)
                    times.append(1000.0 * (time.perf_counter() - started))
            out[method][T] = {"mean_ms": sum(times) / len(times), "max_ms": max(times)}
    return out


def gram_table(result: dict, sizes: list[int]) -> str:
    head = "| method | " + " | ".join(f"T={T} ms/call (mean) | T={T} worst" for T in sizes) + " |"
    lines = [head, "|---|" + "---|---|" * len(sizes)]
    for method, by_size in result.items():
        cells = " | ".join(f"{by_size[str(T)]['mean_ms']:.1f} | {by_size[str(T)]['max_ms']:.1f}" for T in sizes)
        lines.append(f"| {method} | {cells} |")
    return "\n".join(lines)


def run_gram(methods: list[str], sizes: list[int], calls: int) -> dict:
    """The Gram-matrix timings in a child process with every thread pool pinned to 1 thread."""
    import os

    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1")
    cmd = [sys.executable, __file__, "--gram-child", "--methods", *methods, "--gram-sizes",
           *map(str, sizes), "--gram-calls", str(calls)]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        print(f"gram timings failed:\n{proc.stderr[-2000:]}", file=sys.stderr)
        return {}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def reset_peak_rss() -> None:
    """Linux: writing 5 to clear_refs resets the process's peak resident set size (VmHWM)."""
    Path("/proc/self/clear_refs").write_text("5")


def peak_rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main() -> None:
    from polytask.weighting import REGISTRY

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data-dir", default=str(Path(__file__).resolve().parents[2] / "shared" / "data"))
    ap.add_argument("--methods", nargs="*", default=list(REGISTRY))
    ap.add_argument("--spaces", nargs="*", default=["representation", "last_layers"])
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--out", default=None, help="also write the rows as JSON here")
    ap.add_argument("--gram-sizes", nargs="*", type=int, default=[16, 32],
                    help="task counts of the synthetic Gram-matrix timings (none: skip them)")
    ap.add_argument("--gram-calls", type=int, default=20, help="matrices per method and size")
    ap.add_argument("--gram-only", action="store_true", help="only the synthetic Gram-matrix timings")
    ap.add_argument("--gram-out", default=None, help="also write the Gram-matrix timings as JSON here")
    ap.add_argument("--child", nargs=2, metavar=("METHOD", "SPACE"), help=argparse.SUPPRESS)
    ap.add_argument("--gram-child", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(child(*args.child, args.data_dir, args.steps, args.batch_size)))
        return
    if args.gram_child:
        print(json.dumps(gram_child(args.methods, args.gram_sizes, args.gram_calls)))
        return
    if args.gram_only:
        report_gram(args)
        return
    # equal weighting runs first and last in each space: the baseline is their mean, and their
    # difference shows how much the machine drifted during the measurements
    methods = ["equal"] + [m for m in args.methods if m != "equal"] + ["equal"]
    rows = []
    for space in args.spaces:
        for method in methods:
            cmd = [sys.executable, __file__, "--child", method, space, "--data-dir", args.data_dir,
                   "--steps", str(args.steps), "--batch-size", str(args.batch_size)]
            proc = subprocess.run(cmd, capture_output=True, text=True)
            if proc.returncode != 0:
                print(f"{method}/{space} failed:\n{proc.stderr[-2000:]}", file=sys.stderr)
                continue
            rows.append(json.loads(proc.stdout.strip().splitlines()[-1]))
            r = rows[-1]
            print(f"  measured {method:<11} {space:<14} {r['sec_per_step']:.2f} s/step  {r['peak_rss_mb']:.0f} MB",
                  file=sys.stderr, flush=True)
    print(table(rows))
    if args.out:
        Path(args.out).write_text(json.dumps(rows, indent=2))
    report_gram(args)


def report_gram(args) -> None:
    if not args.gram_sizes:
        return
    result = run_gram(args.methods, args.gram_sizes, args.gram_calls)
    if not result:
        return
    print()
    print(f"combine() alone on synthetic Gram matrices, one thread, {args.gram_calls} matrices each:")
    print(gram_table(result, args.gram_sizes))
    if args.gram_out:
        Path(args.gram_out).write_text(json.dumps(result, indent=2))


def table(rows: list[dict]) -> str:
    """Markdown rows; ratios are to the mean of the equal-weighting runs of the same grad space."""
    lines = ["| method | grad space | s/step | x equal | peak RSS (MB) | x equal |", "|---|---|---|---|---|---|"]
    for space in dict.fromkeys(r["space"] for r in rows):
        same = [r for r in rows if r["space"] == space]
        bases = [r for r in same if r["method"] == "equal"]
        sec = sum(r["sec_per_step"] for r in bases) / len(bases) if bases else float("nan")
        mem = sum(r["peak_rss_mb"] for r in bases) / len(bases) if bases else float("nan")
        for k, r in enumerate(same):
            name = r["method"] if r["method"] != "equal" or len(bases) == 1 else ("equal (first)" if k == 0 else "equal (last)")
            lines.append(f"| {name} | {space} | {r['sec_per_step']:.2f} | {r['sec_per_step'] / sec:.2f} | "
                         f"{r['peak_rss_mb']:.0f} | {r['peak_rss_mb'] / mem:.2f} |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
