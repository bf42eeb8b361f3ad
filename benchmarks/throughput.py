"""Training throughput: a plain tutorial-style PyTorch loop vs polytask's trainer, same process.

Both train the same model (MiniLM + one head per task, the same initial weights) on the data of
the standard suite (benchmarks/glue_standard.yaml: SST-2, CoLA, STS-B, MRPC, TREC, CoNLL-2003),
with the same batch size, the same task for every step (drawn once by polytask's sampler) and
the same optimizer settings:

(a) **plain loop**, written the way the usual tutorials do it: every example tokenized and
    padded to the configured maximum length (``padding="max_length"``, 128), random batches
    (shuffled, no length grouping), one head per task, ``loss.backward(); opt.step()``;
(b) **polytask**: ``polytask.train.train`` itself -- dynamic padding (each batch padded to its
    own longest example) with length grouping, its sampler, weighting, logging and metrics.

It prints samples/s and real (unpadded) tokens/s of each and their ratio, measured after a few
warm-up steps, then a profile of polytask's own overhead: every non-model part of a training
step (task sampling, batch streams, collation/padding, loss weighting, logging, running
metrics, the progress bar, and the loop's unattributed remainder) timed with perf_counter
wrappers around the trainer's own functions, as a share of step time. Periodic work is left
out of the window like dev evaluation: the task-gradient cosine probe (``train.cosine_every``)
is timed apart and printed with its amortised share. Targets: polytask >= 3x
the plain loop's samples/s; its overhead < 5% of step time.

The profile's "waiting for data" is the time the training loop spent getting each micro-step's
batches: blocked on the prefetch queue (``train.prefetch`` > 0: the batches are collated ahead on
a background thread, whose own time is listed apart as overlapping the step), or collating them
itself (``--prefetch 0``).

    python benchmarks/throughput.py --data-dir ../shared/data               # ~3-4 min on 2 idle cores
    python benchmarks/throughput.py --data-dir ../shared/data --steps 40 --warmup 3 --batch-size 32
    python benchmarks/throughput.py --data-dir ../shared/data --prefetch 0   # collate in the step

Add ``--json out.json`` to save the numbers.
"""

from __future__ import annotations

import argparse
import copy
import functools
import json
import statistics
import sys
import tempfile
import threading
import time
from collections import defaultdict
from pathlib import Path

HERE = Path(__file__).resolve().parent
PAD_VALUES = {"input_ids": None, "attention_mask": 0, "token_type_ids": 0, "labels": -100, "word_pos": -1}


def load_suite(config: Path, data_dir: str, max_train: int | None):
    """The standard suite's config (compare section dropped) and its encoded training data."""
    from polytask.config import load_config, to_dict, from_dict

    cfg = load_config(config, [f"data_dir={data_dir}"])
    raw = to_dict(cfg)
    raw["compare"] = None
    for t in raw["tasks"]:
        t["data"]["max_eval"] = 32  # the trainer's final evaluation is not what is measured
        if max_train:
            t["data"]["max_train"] = min(max_train, t["data"]["max_train"] or max_train)
    return from_dict(raw)


BACKGROUND = " [background thread]"


class Timers:
    """perf_counter totals per component, counted only while the measured window is open; time
    spent on another thread than the main one is counted under ``name + BACKGROUND``."""

    def __init__(self, sync=None):
        self.total: dict[str, float] = defaultdict(float)
        self.calls: dict[str, int] = defaultdict(int)
        self.open = False
        self.sync = sync or (lambda: None)  # CUDA: torch.cuda.synchronize, so async kernels count where launched

    def wrap(self, name: str, fn):
        @functools.wraps(fn)  # keeps the signature visible (Accelerate inspects optimizer.zero_grad's)
        def timed(*args, **kwargs):
            if not self.open:
                return fn(*args, **kwargs)
            key = name if threading.current_thread() is threading.main_thread() else name + BACKGROUND
            self.sync()
            start = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                self.sync()
                self.total[key] += time.perf_counter() - start
                self.calls[key] += 1

        return timed


PROBE = "cosine probe"
WAITING = "waiting for data"
COLLATE = "collate (dynamic padding)"  # on the main thread: inside WAITING (or the probe), not counted twice
MODEL_PARTS = ("forward + loss + backward", "gradient clipping", "optimizer step", "lr schedule", "zero_grad")


def run_polytask(cfg, steps: int, warmup: int, out_dir: Path, prefetch: int | None = None, sync=None) -> dict:
    """Train with polytask's own trainer; time the window between the logs of steps warmup and steps+warmup.
    ``sync``: called around every timed part (``torch.cuda.synchronize`` on a GPU)."""
    import torch

    import polytask.draws as D
    import polytask.prefetch as P
    import polytask.steps as S
    import polytask.train as T
    from polytask.batching import BatchStream
    from polytask.config import from_dict, to_dict
    from polytask.evaluate import evaluate as real_evaluate
    from polytask.run_folder import RunFolder

    raw = to_dict(cfg)
    total_steps = warmup + steps
    raw["output_dir"] = str(out_dir)
    raw["name"] = "polytask"
    raw["train"].update(max_steps=total_steps, eval_every=total_steps, log_every=1, early_stopping=None,
                        warmup_ratio=0.0, checkpoint_every=10**9)  # no resumable checkpoint: not measured
    if prefetch is not None:
        raw["train"]["prefetch"] = prefetch
    run_cfg = from_dict(raw)
    timers = Timers(sync)
    window: dict[str, float] = {}
    saved = {}

    def patch(obj, attr, value):
        saved[(obj, attr)] = getattr(obj, attr)
        setattr(obj, attr, value)

    class TimedStream(BatchStream):
        def next(self):
            return timers.wrap("batch streams", super().next)()

    orig_write = RunFolder.append_event

    def write(self, event):
        if event.get("kind") == "train" and event["step"] == warmup:
            timers.sync()
            window["start"] = time.perf_counter()
            timers.open = True
            return orig_write(self, event)
        if event.get("kind") == "train" and event["step"] == total_steps:
            timers.sync()
            window["end"] = time.perf_counter()
            timers.open = False
        return timers.wrap("logging (metrics.jsonl)", orig_write)(self, event)

    def build_components(*a, **k):
        weighting, sampler = saved[(T, "build_components")](*a, **k)
        weighting.combine = timers.wrap("weighting", weighting.combine)
        if (type(sampler), "sample") not in saved:  # on the class: the prefetch thread's copy of the draws
            patch(type(sampler), "sample", timers.wrap("task sampling", type(sampler).sample))  # has its own
        return weighting, sampler

    def prepare(*a, **k):
        data = saved[(T, "prepare")](*a, **k)
        for td in data.values():
            td.task.collate = timers.wrap(COLLATE, td.task.collate)
        return data

    def forward_backward(*a, **k):
        return timers.wrap("forward + loss + backward", saved[(T, "forward_backward")])(*a, **k)

    def make_optimizer(*a, **k):
        opt = saved[(T, "make_optimizer")](*a, **k)
        opt.zero_grad = timers.wrap("zero_grad", opt.zero_grad)
        return opt

    def get_scheduler(*a, **k):
        sched = saved[(S, "get_scheduler")](*a, **k)
        if (type(sched), "step") not in saved:  # on the class: the instance's __dict__ is its checkpoint state
            patch(type(sched), "step", timers.wrap("lr schedule", type(sched).step))
        opt = sched.optimizer  # wrapped after the scheduler hooked its own counter onto step
        opt.step = timers.wrap("optimizer step", opt.step)
        return sched

    class TimedBar(T.tqdm):
        def update(self, *a, **k):
            return timers.wrap("progress bar", super().update)(*a, **k)

        def set_postfix(self, *a, **k):
            return timers.wrap("progress bar", super().set_postfix)(*a, **k)

    def evaluate(*a, **k):
        was, timers.open = timers.open, False
        try:
            return real_evaluate(*a, **k)
        finally:
            timers.open = was

    patch(D, "BatchStream", TimedStream)
    patch(RunFolder, "append_event", write)
    patch(T, "build_components", build_components)
    patch(T, "prepare", prepare)
    patch(T, "forward_backward", forward_backward)
    patch(T, "make_optimizer", make_optimizer)
    patch(S, "get_scheduler", get_scheduler)  # make_scheduler (polytask.steps) calls it
    patch(T, "tqdm", TimedBar)
    patch(T, "evaluate", evaluate)
    patch(T, "probe_gram", timers.wrap(PROBE, T.probe_gram))
    patch(P.Lookahead, "batches", timers.wrap(WAITING, P.Lookahead.batches))
    patch(T.LoopState, "update_loss", timers.wrap("running losses", T.LoopState.update_loss))
    patch(torch.nn.utils, "clip_grad_norm_", timers.wrap("gradient clipping", torch.nn.utils.clip_grad_norm_))
    try:
        run_dir = T.train(run_cfg, progress=False)
    finally:
        for (obj, attr), value in saved.items():
            setattr(obj, attr, value)

    from polytask.compare import replay, train_lengths

    rep = replay(run_cfg, train_lengths(run_cfg), total_steps)
    examples = sum(sum(row) for row in rep["examples"][warmup:])
    tokens = sum(sum(row) for row in rep["tokens"][warmup:])
    secs = window["end"] - window["start"]
    parts = dict(timers.total)
    model = sum(parts.get(p, 0.0) for p in MODEL_PARTS) - parts.get("weighting", 0.0)  # combine runs inside
    probe = parts.pop(PROBE, 0.0)  # periodic, like evaluation: reported apart, amortised
    background = {k: parts.pop(k) for k in list(parts) if k.endswith(BACKGROUND)}  # overlaps the step
    parts.pop(COLLATE, None)
    overhead = {k: v for k, v in parts.items() if k not in MODEL_PARTS}
    overhead["loop remainder (unattributed)"] = max(0.0, secs - model - probe - sum(overhead.values()))
    secs -= probe
    return {"seconds": secs, "examples": examples, "tokens": tokens, "samples_per_s": examples / secs,
            "tokens_per_s": tokens / secs, "model_seconds": model, "overhead": overhead,
            "probe_seconds": probe, "probes": timers.calls.get(PROBE, 0),
            "waiting_for_data_seconds": overhead.get(WAITING, 0.0), "background": background,
            "prefetch": run_cfg.train.prefetch, "run_dir": str(run_dir),
            "model_parts": {p: timers.total.get(p, 0.0) for p in MODEL_PARTS}}


class PlainLoop:
    """The tutorial loop: pre-padded to max_length, random batches, one head per task, AdamW."""

    def __init__(self, cfg, max_length: int):
        import torch

        from polytask.backbones.encoder import load_encoder
        from polytask.batching import BatchStream
        from polytask.dataset import encode_all, prepare
        from polytask.model import build_model
        from polytask.train import seed_everything

        data = prepare(cfg, splits=("train",))
        backbone, tokenizer = load_encoder(cfg.model.backbone)
        encode_all(data, tokenizer, cfg.model.max_length)
        self.tasks = {n: td.task for n, td in data.items()}
        seed_everything(cfg.seed)
        self.model = build_model(cfg, backbone, self.tasks)  # the same model and initial weights as train()
        self.pad_id = tokenizer.pad_token_id or 0
        self.max_length = max_length
        self.cfg = cfg
        t = cfg.train
        # tutorial style: the whole dataset tokenized and padded to max_length up front (as with
        # ``dataset.map(tokenize, padding="max_length")``), then shuffled batches of those tensors
        self.padded = {n: self.pad_to_max(self.tasks[n].collate(td.features["train"], self.pad_id))
                       for n, td in data.items()}
        self.real_len = {n: [len(f["input_ids"]) for f in td.features["train"]] for n, td in data.items()}
        self.streams = {n: BatchStream([1] * len(data[n].features["train"]), t.batch_size, cfg.seed + i,
                                       grouped=False) for i, n in enumerate(self.tasks)}
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=t.lr, weight_decay=t.weight_decay)

    def pad_to_max(self, batch: dict) -> dict:
        import torch

        out = {}
        width = batch["input_ids"].shape[1]
        for key, x in batch.items():
            if x.dim() == 2 and x.shape[1] == width and width < self.max_length:
                value = self.pad_id if key == "input_ids" else PAD_VALUES.get(key, 0)
                pad = torch.full((x.shape[0], self.max_length - width), value, dtype=x.dtype)
                x = torch.cat([x, pad], dim=1)
            out[key] = x
        return out

    def run(self, task_order: list[str]) -> tuple[int, int, float]:
        """Train one step per entry of ``task_order``; returns (examples, real tokens, seconds)."""
        import torch

        model, tasks = self.model, self.tasks
        model.train()
        examples = tokens = 0
        start = time.perf_counter()
        for name in task_order:
            idx = self.streams[name].next()
            batch = {k: v[idx] for k, v in self.padded[name].items()}
            out, _ = model(batch, name)
            loss = tasks[name].loss(out, batch)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), self.cfg.train.grad_clip or float("inf"))
            self.optimizer.step()
            self.optimizer.zero_grad()
            examples += len(idx)
            tokens += sum(self.real_len[name][i] for i in idx)
        return examples, tokens, time.perf_counter() - start


def task_order(cfg, steps: int) -> list[str]:
    """The task of every step, as polytask's sampler draws it (replayed: a pure function of the seed)."""
    from polytask.compare import replay, train_lengths

    rep = replay(cfg, train_lengths(cfg), steps)
    return [rep["tasks"][row.index(max(row))] for row in rep["examples"]]


def _with_steps(cfg, steps: int):
    cfg = copy.deepcopy(cfg)
    cfg.train.max_steps = steps  # annealed samplers depend on the run length
    return cfg


def describe_lengths(cfg) -> dict[str, float]:
    from polytask.compare import train_lengths

    return {n: statistics.fmean(v) for n, v in train_lengths(cfg).items()}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", type=Path, default=HERE / "glue_standard.yaml")
    ap.add_argument("--data-dir", default=str(HERE.parent.parent / "shared" / "data"))
    ap.add_argument("--steps", type=int, default=30, help="measured steps of each loop")
    ap.add_argument("--warmup", type=int, default=3, help="steps run before the clock starts")
    ap.add_argument("--batch-size", type=int, default=None, help="default: the config's")
    ap.add_argument("--max-train", type=int, default=None, help="cap training examples per task (faster setup)")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    ap.add_argument("--prefetch", type=int, default=None, help="train.prefetch for polytask (default: the config's)")
    ap.add_argument("--json", type=Path, default=None, help="also write the numbers here")
    args = ap.parse_args(argv)

    import os

    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    cfg = load_suite(args.config, args.data_dir, args.max_train)
    if args.batch_size:
        cfg.train.batch_size = args.batch_size
    max_length = cfg.model.max_length
    lengths = describe_lengths(cfg)
    print(f"data: {args.config.name} ({', '.join(f'{n} {v:.1f}' for n, v in lengths.items())} tokens on average); "
          f"batch {cfg.train.batch_size}, max length {max_length}, {args.warmup} warm-up + {args.steps} measured "
          f"steps each; torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"load average {os.getloadavg()[0]:.2f}", flush=True)

    # the plain loop runs in two halves around polytask's run, so that a change in the machine's
    # load during the benchmark affects both alike
    import warnings

    warnings.filterwarnings("ignore", message=".*optimizer.step.*")  # our timing wrapper, not a bug
    order = task_order(_with_steps(cfg, args.warmup + args.steps), args.warmup + args.steps)
    plain_loop = PlainLoop(cfg, max_length)
    plain_loop.run(order[: args.warmup])  # warm-up
    half = args.warmup + args.steps // 2
    first = plain_loop.run(order[args.warmup: half])
    with tempfile.TemporaryDirectory() as tmp:
        started = time.perf_counter()
        ours = run_polytask(cfg, args.steps, args.warmup, Path(tmp), args.prefetch)
        print(f"(b) polytask trainer: {ours['samples_per_s']:.1f} samples/s, {ours['tokens_per_s']:.0f} tokens/s "
              f"({ours['examples']} examples in {ours['seconds']:.1f}s; run {time.perf_counter() - started:.0f}s "
              f"with setup)", flush=True)
    second = plain_loop.run(order[half:])
    ex, tok, secs = (a + b for a, b in zip(first, second))
    plain = {"seconds": secs, "examples": ex, "tokens": tok, "samples_per_s": ex / secs, "tokens_per_s": tok / secs,
             "padded_tokens_per_s": ex * max_length / secs}
    print(f"(a) plain loop, padded to {max_length}: {plain['samples_per_s']:.1f} samples/s, "
          f"{plain['tokens_per_s']:.0f} real tokens/s ({plain['padded_tokens_per_s']:.0f} padded tokens/s; "
          f"{plain['examples']} examples in {plain['seconds']:.1f}s)", flush=True)

    ratio = ours["samples_per_s"] / plain["samples_per_s"]
    step_time = ours["seconds"]
    overhead = sum(ours["overhead"].values())
    print()
    print(f"{'':<34}{'samples/s':>12}{'tokens/s':>12}")
    print(f"{'(a) plain loop (pad to ' + str(max_length) + ')':<34}{plain['samples_per_s']:>12.1f}"
          f"{plain['tokens_per_s']:>12.0f}")
    print(f"{'(b) polytask':<34}{ours['samples_per_s']:>12.1f}{ours['tokens_per_s']:>12.0f}")
    print(f"{'ratio (b)/(a)':<34}{ratio:>11.2f}x{ours['tokens_per_s'] / plain['tokens_per_s']:>11.2f}x"
          f"   target >= 3x: {'met' if ratio >= 3 else 'NOT met'}")
    print()
    print(f"polytask step-time profile over {args.steps} steps ({step_time:.2f}s; train.prefetch={ours['prefetch']}):")
    print(f"  {'model (forward, loss, backward, clip, optimizer)':<52}{ours['model_seconds']:>8.3f}s "
          f"{100 * ours['model_seconds'] / step_time:>6.2f}%")
    for name, secs in sorted(ours["overhead"].items(), key=lambda kv: -kv[1]):
        note = ""
        if name == WAITING:  # the loop blocked on the prefetch queue (or collating: prefetch 0)
            note = "   blocked on the prefetch queue" if ours["prefetch"] else "   collating (train.prefetch=0)"
        print(f"  {name:<52}{secs:>8.3f}s {100 * secs / step_time:>6.2f}%{note}")
    share = 100 * overhead / step_time
    print(f"  {'polytask overhead (all of the above but the model)':<52}{overhead:>8.3f}s {share:>6.2f}%"
          f"   target < 5%: {'met' if share < 5 else 'NOT met'}")
    for name, secs in sorted(ours["background"].items(), key=lambda kv: -kv[1]):
        print(f"  {name:<52}{secs:>8.3f}s {100 * secs / step_time:>6.2f}%   (overlaps the step: not step time)")
    if ours["probes"]:
        per_probe = ours["probe_seconds"] / ours["probes"]
        every = cfg.train.cosine_every or cfg.train.eval_every
        print(f"  not per step, left out above like dev evaluation: the task-gradient cosine probe took "
              f"{per_probe:.2f}s ({ours['probes']}x in the window); once every {every} steps (this config's "
              f"cosine_every) that is {100 * per_probe / (every * step_time / args.steps):.2f}% of step time")
    print(f"load average at the end: {' / '.join(f'{x:.2f}' for x in os.getloadavg())} (1/5/15 min; "
          f"{os.cpu_count()} CPUs): other work on the machine lowers both loops' numbers")
    if args.json:
        args.json.write_text(json.dumps({"plain": plain, "polytask": ours,
                                         "ratio": ratio, "overhead_share": share, "mean_lengths": lengths,
                                         "batch_size": cfg.train.batch_size, "steps": args.steps,
                                         "warmup": args.warmup, "threads": torch.get_num_threads()}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
