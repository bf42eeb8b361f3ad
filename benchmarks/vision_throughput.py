"""Image training throughput: a plain PyTorch loop vs polytask's trainer, same process (issue 28).

Both train the same model (the config's vision backbone + one head per task, the same initial
weights) on the same images with the same batch size, the same task for every step (drawn once
by polytask's sampler), the same preprocessing (polytask's ImageProcessor: decode, random
resized crop / flip / jitter as the config says, resize, normalise) and the same optimizer:

(a) **plain loop**, as a PyTorch tutorial writes it: one ``torch.utils.data.DataLoader`` per
    task (shuffled, ``num_workers=--plain-workers`` worker processes decoding and augmenting,
    ``collate_fn`` the task's own collation), ``loss.backward(); opt.step()``;
(b) **polytask**: ``polytask.train.train`` itself, with its default data path (batches collated
    ahead on the prefetch thread), sampler, weighting, logging and metrics.

It prints images/s of each and the ratio, and polytask's step-time profile, whose "waiting for
data" line is the time the loop was blocked on its batches (target: under 5% of step time).
The plain loop runs in two halves around polytask's run so that a change in the machine's load
affects both alike. Target (issue 28): polytask >= the plain loop's images/s.

    python scripts/make_multimnist.py ../shared/data/mnist/mnist.npz /tmp/multimnist --train 10000 --dev 2000 --test 2000
    python benchmarks/vision_throughput.py --data-dir /tmp/multimnist                   # examples/multimnist.yaml
    python benchmarks/vision_throughput.py --data-dir /tmp/multimnist --steps 6 --warmup 2   # smoke test
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from throughput import WAITING, _with_steps, run_polytask, task_order  # noqa: E402


class PlainImageLoop:
    """The tutorial loop: a DataLoader per task with worker processes, AdamW, one step per batch."""

    def __init__(self, cfg, workers: int, bf16: bool):
        import torch

        from polytask.backbones import load_backbone
        from polytask.dataset import encode_all, prepare
        from polytask.model import build_model
        from polytask.train import seed_everything

        data = prepare(cfg, splits=("train",))
        backbone, processor = load_backbone(cfg.model)
        encode_all(data, processor, cfg.model.max_length)
        self.tasks = {n: td.task for n, td in data.items()}
        for td in data.values():
            td.task.for_training(td.features["train"])  # augmented when collated, as polytask trains
        seed_everything(cfg.seed)
        self.model = build_model(cfg, backbone, self.tasks)  # the same model and initial weights as train()
        self.loaders = {n: torch.utils.data.DataLoader(
            td.features["train"], batch_size=cfg.train.batch_size, shuffle=True, num_workers=workers,
            collate_fn=functools.partial(td.task.collate, pad_id=0), persistent_workers=workers > 0, drop_last=True,
            generator=torch.Generator().manual_seed(cfg.seed + i)) for i, (n, td) in enumerate(data.items())}
        self.iters = {n: iter(loader) for n, loader in self.loaders.items()}
        t = cfg.train
        self.clip = t.grad_clip or float("inf")
        self.bf16 = bf16
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=t.lr, weight_decay=t.weight_decay)

    def next_batch(self, name: str) -> dict:
        try:
            return next(self.iters[name])
        except StopIteration:  # a new epoch
            self.iters[name] = iter(self.loaders[name])
            return next(self.iters[name])

    def run(self, order: list[str]) -> tuple[int, float, float]:
        """One step per entry of ``order``; returns (images, seconds, seconds waiting for batches)."""
        import torch

        self.model.train()
        images, waited = 0, 0.0
        start = time.perf_counter()
        for name in order:
            asked = time.perf_counter()
            batch = self.next_batch(name)
            waited += time.perf_counter() - asked
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=self.bf16):
                out, _ = self.model(batch, name)
                loss = self.tasks[name].loss(out, batch)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.clip)
            self.optimizer.step()
            self.optimizer.zero_grad()
            images += len(batch["pixel_values"])
        return images, time.perf_counter() - start, waited


def load_config(path: Path, data_dir: str, batch_size: int | None):
    from polytask.config import load_config as load

    overrides = [f"data_dir={data_dir}"] + ([f"train.batch_size={batch_size}"] if batch_size else [])
    return load(path, overrides)


def report(args, cfg, plain: dict, ours: dict) -> dict:
    ratio = ours["samples_per_s"] / plain["images_per_s"]
    step_time = ours["seconds"]
    wait = ours["overhead"].get(WAITING, 0.0)
    print(f"\n{'':<40}{'images/s':>10}{'waiting for data':>20}")
    print(f"{'(a) plain loop, ' + str(args.plain_workers) + ' DataLoader workers':<40}{plain['images_per_s']:>10.1f}"
          f"{100 * plain['waiting'] / plain['seconds']:>19.1f}%")
    print(f"{'(b) polytask (prefetch ' + str(ours['prefetch']) + ')':<40}{ours['samples_per_s']:>10.1f}"
          f"{100 * wait / step_time:>19.1f}%")
    print(f"{'ratio (b)/(a)':<40}{ratio:>9.2f}x   target >= 1: {'met' if ratio >= 1 else 'NOT met'}; "
          f"polytask waiting < 5%: {'met' if wait < 0.05 * step_time else 'NOT met'}")
    print(f"\npolytask step-time profile over {args.steps} steps ({step_time:.2f}s):")
    print(f"  {'model (forward, loss, backward, clip, optimizer)':<52}{ours['model_seconds']:>8.3f}s "
          f"{100 * ours['model_seconds'] / step_time:>6.2f}%")
    for name, secs in sorted(ours["overhead"].items(), key=lambda kv: -kv[1]):
        print(f"  {name:<52}{secs:>8.3f}s {100 * secs / step_time:>6.2f}%")
    for name, secs in sorted(ours["background"].items(), key=lambda kv: -kv[1]):
        print(f"  {name:<52}{secs:>8.3f}s {100 * secs / step_time:>6.2f}%   (overlaps the step)")
    print(f"load average at the end: {' / '.join(f'{x:.2f}' for x in os.getloadavg())} ({os.cpu_count()} CPUs)")
    return {"plain": plain, "polytask": {k: v for k, v in ours.items() if k != "run_dir"}, "ratio": ratio,
            "waiting_share": wait / step_time, "batch_size": cfg.train.batch_size, "steps": args.steps}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", type=Path, default=HERE.parent / "examples" / "multimnist.yaml")
    ap.add_argument("--data-dir", required=True, help="the folder the config's data paths are relative to")
    ap.add_argument("--steps", type=int, default=40, help="measured steps of each loop")
    ap.add_argument("--warmup", type=int, default=4)
    ap.add_argument("--batch-size", type=int, default=None, help="default: the config's")
    ap.add_argument("--plain-workers", type=int, default=2, help="DataLoader worker processes of the plain loop")
    ap.add_argument("--precision", choices=["fp32", "bf16"], default="fp32",
                    help="both loops: fp32, or bf16 autocast (polytask: train.mixed_precision)")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args(argv)

    import torch

    cfg = load_config(args.config, args.data_dir, args.batch_size)
    cfg.train.mixed_precision = "bf16" if args.precision == "bf16" else "no"
    if cfg.train.num_threads:
        torch.set_num_threads(cfg.train.num_threads)
    print(f"{args.config.name}: backbone {cfg.model.backbone}, batch {cfg.train.batch_size}, {args.precision}, "
          f"{args.warmup} warm-up "
          f"+ {args.steps} measured steps each; torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"load average {os.getloadavg()[0]:.2f}", flush=True)
    order = task_order(_with_steps(cfg, args.warmup + args.steps), args.warmup + args.steps)
    plain_loop = PlainImageLoop(cfg, args.plain_workers, args.precision == "bf16")
    plain_loop.run(order[: args.warmup])
    half = args.warmup + args.steps // 2
    first = plain_loop.run(order[args.warmup: half])
    with tempfile.TemporaryDirectory() as tmp:
        ours = run_polytask(cfg, args.steps, args.warmup, Path(tmp))
    second = plain_loop.run(order[half:])
    images, secs, waited = (a + b for a, b in zip(first, second))
    plain = {"images": images, "seconds": secs, "waiting": waited, "images_per_s": images / secs}
    numbers = report(args, cfg, plain, ours)
    if args.json:
        args.json.write_text(json.dumps(numbers, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
