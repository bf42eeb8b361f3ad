"""Is bf16 autocast faster than float32 on this CPU? MiniLM training steps and inference, timed.

``train.mixed_precision: auto`` and ``--precision auto`` take bf16 on CPUs with AMX, and on CPUs
with AVX512_BF16 alone where polytask's short probe measures it faster (polytask.precision.fast_bf16):
there it depends on the CPU (a Xeon ran MiniLM at 0.6x float32 in bf16, an AMD EPYC at 1.5-1.9x).
This script is the whole-model measurement behind that rule, to rerun on any machine:

    python benchmarks/bf16_speed.py                      # 1 and 2 threads, batch 32 x 48 tokens
    python benchmarks/bf16_speed.py --threads 1 --batch 16 --length 128

For each thread count and mode (a training step: forward, a mean-square loss, backward; and an
inference forward under ``torch.no_grad``) it times fp32 and bf16 alternately twice (warm-up steps
first, the faster of the two repetitions kept) and prints milliseconds per step and bf16's
speed-up. It prints the CPU's bf16 units as polytask reads them.
"""

from __future__ import annotations

import argparse
import time

import torch


def step(model, ids, mask, bf16: bool, train: bool) -> None:
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16), torch.set_grad_enabled(train):
        out = model(input_ids=ids, attention_mask=mask).last_hidden_state  # (B, L, H)
    if train:
        out.float().pow(2).mean().backward()


def timed(model, ids, mask, bf16: bool, train: bool, repeats: int) -> float:
    for _ in range(2):
        step(model, ids, mask, bf16, train)
    started = time.perf_counter()
    for _ in range(repeats):
        step(model, ids, mask, bf16, train)
    return (time.perf_counter() - started) / repeats


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--length", type=int, default=48)
    ap.add_argument("--backbone", default="minilm", help="minilm or a Hugging Face encoder path")
    args = ap.parse_args(argv)
    from transformers import AutoModel

    from polytask.backbones.encoder import resolve_backbone
    from polytask.precision import cpu_bf16_unit, fast_bf16

    print(f"CPU bf16 unit: {cpu_bf16_unit()}; auto takes bf16 here: {fast_bf16('cpu')}")
    model = AutoModel.from_pretrained(resolve_backbone(args.backbone))
    ids = torch.randint(1000, 2000, (args.batch, args.length))
    mask = torch.ones_like(ids)
    for threads in args.threads:
        torch.set_num_threads(threads)
        for train in (True, False):
            model.train(train)
            times = {False: [], True: []}
            for bf16 in (False, True, False, True):  # alternated: load drift hits both alike
                times[bf16].append(timed(model, ids, mask, bf16, train, 8 if train else 20))
            fp32, bf16 = min(times[False]), min(times[True])
            print(f"threads {threads} {'train' if train else 'infer'}: fp32 {fp32 * 1000:.0f} ms  "
                  f"bf16 {bf16 * 1000:.0f} ms  bf16 speed-up {fp32 / bf16:.2f}x", flush=True)


if __name__ == "__main__":
    main()
