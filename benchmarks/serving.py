"""Serving benchmark: `polytask serve` on loopback with the real MiniLM 6-task model of the standard suite.

1. Trains a short run of benchmarks/glue_standard.yaml (SST-2, CoLA, STS-B, MRPC, TREC, CoNLL-2003
   on MiniLM, hard sharing; ``--steps`` steps, default 60: serving speed does not depend on how
   well it was trained), or reuses ``--run-dir``.
2. In process: the cost of predicting all 6 tasks with ``Predictor.predict_all`` (one encoder
   pass per distinct encoded input) vs one task (``predict``), vs the old way (one pass per
   task), on real inputs: a sentence (SST-2 dev) with its words (the CoNLL task reads words; a
   sentence's words encode to the same ids, so they share the sentence's pass) and a sentence
   pair (STS-B dev, for STS-B and MRPC: a different input, so a second pass).
3. Starts ``polytask serve`` in a subprocess on 127.0.0.1 (a free port) with micro-batching on,
   then off (``--no-batching``: one request at a time), sends a fixed number of requests
   (``--requests``, default 256, one input each, every task) at a fixed concurrency
   (``--concurrency``, default 32) with httpx, and prints requests/s and p50/p95/p99 latency.
   It stops by itself; nothing leaves the machine.

Targets (issue 15): all-task prediction on a hard-sharing model <= 1.3x one task's cost;
micro-batching >= 3x the requests/s of one-request-at-a-time at concurrency 32.

    python benchmarks/serving.py --data-dir ../shared/data            # ~3-5 min on 2 idle cores
    python benchmarks/serving.py --run-dir runs/serving-bench         # reuse a trained run
    python benchmarks/serving.py --run-dir runs/serving-bench --serve-only --precisions fp32,bf16,int8

``--precisions`` (default ``auto``): the server's ``--precision`` values to measure, each with
micro-batching on and off (docs/serving.md: bf16 needs a CPU with AMX or AVX512_BF16).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent


def train_run(data_dir: str, steps: int, out_dir: Path) -> Path:
    import polytask
    from polytask.config import from_dict, load_config, to_dict

    cfg = load_config(HERE / "glue_standard.yaml", [f"data_dir={data_dir}"])
    raw = to_dict(cfg)
    raw.update(compare=None, name="serving-bench", output_dir=str(out_dir))  # out_dir/serving-bench
    for t in raw["tasks"]:
        t["data"]["max_eval"] = 64
    raw["train"].update(max_steps=steps, eval_every=steps, log_every=max(1, steps // 4), warmup_ratio=0.0)
    return polytask.train(from_dict(raw), progress=False)


def real_inputs(data_dir: str, n: int) -> list[dict]:
    """``n`` inputs with every task's fields: an SST-2 dev sentence (and its words), an STS-B dev pair."""
    root = Path(data_dir)
    sst = [json.loads(line)["text"] for line in (root / "sst2" / "dev.jsonl").open()][:n]
    sts = [json.loads(line) for line in (root / "stsb" / "dev.jsonl").open()][:n]
    return [{"text": s, "tokens": s.split(), "text_a": p["text_a"], "text_b": p["text_b"]} for s, p in zip(sst, sts)]


def timed(fn, repeat: int = 3) -> float:
    fn()  # warm-up
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def all_vs_one(run_dir: Path, inputs: list[dict]) -> dict:
    import polytask

    pred = polytask.load(run_dir)
    texts = [x["text"] for x in inputs]
    one = timed(lambda: pred.predict("sst2", texts))
    single_text = [n for n in pred.tasks if n not in ("stsb", "mrpc")]
    out = {
        "one task (sst2), sentence": one,
        f"all tasks of a sentence ({len(single_text)}: {', '.join(single_text)})":
            timed(lambda: pred.predict_all(texts, tasks=single_text)),
        "all 6 tasks, sentence + pair input (2 distinct encodings)": timed(lambda: pred.predict_all(inputs)),
        "all 6 tasks, one pass per task (before)": timed(
            lambda: [pred.predict(n, [x for x in inputs]) for n in pred.tasks], repeat=1),
    }
    return {"n_inputs": len(inputs), "seconds": out, "ratio_to_one": {k: v / one for k, v in out.items()}}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(run_dir: Path, args: list[str]) -> tuple[subprocess.Popen, str]:
    from polytask.serve import wait_until_ready

    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "polytask.cli", "serve", str(run_dir), "--port", str(port),
                             "--log-level", "warning", *args], cwd=REPO, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    url = f"http://127.0.0.1:{port}"
    wait_until_ready(url, proc, timeout=120)
    return proc, url


async def load(url: str, inputs: list[dict], n: int, concurrency: int) -> dict:
    import httpx

    latencies: list[float] = []
    sem = asyncio.Semaphore(concurrency)
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=url, timeout=120, limits=limits) as client:
        async def one(i: int) -> None:
            async with sem:
                start = time.perf_counter()
                r = await client.post("/v1/predict", json={"inputs": [inputs[i % len(inputs)]]})
                latencies.append(time.perf_counter() - start)
                r.raise_for_status()

        await asyncio.gather(*[one(i) for i in range(min(n, 2 * concurrency))])  # warm-up
        latencies.clear()
        start = time.perf_counter()
        calls_before = model_calls((await client.get("/metrics")).text)
        start = time.perf_counter()
        await asyncio.gather(*[one(i) for i in range(n)])
        wall = time.perf_counter() - start
        calls = model_calls((await client.get("/metrics")).text) - calls_before
    q = statistics.quantiles(latencies, n=100)
    return {"requests": n, "concurrency": concurrency, "rps": n / wall, "model_calls": calls,
            "p50_ms": 1000 * q[49], "p95_ms": 1000 * q[94], "p99_ms": 1000 * q[98]}


def model_calls(metrics: str) -> int:
    """How many model calls the server made (the count of its batch-size histogram)."""
    return int(float(next(line.split()[-1] for line in metrics.splitlines()
                          if line.startswith("polytask_batch_inputs_count"))))


def serve_and_load(run_dir: Path, inputs: list[dict], args: list[str], n: int, concurrency: int) -> dict:
    proc, url = start_server(run_dir, args)
    try:
        return asyncio.run(load(url, inputs, n, concurrency))
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data-dir", default=str(REPO.parent / "shared" / "data"))
    p.add_argument("--run-dir", type=Path, help="a trained run of the standard suite (trained there if absent; "
                   "default: a temporary one)")
    p.add_argument("--steps", type=int, default=60)
    p.add_argument("--requests", type=int, default=256)
    p.add_argument("--concurrency", type=int, default=32)
    p.add_argument("--max-batch-size", type=int, default=32)
    p.add_argument("--max-wait-ms", type=float, default=5.0)
    p.add_argument("--serve-only", action="store_true", help="skip the in-process all-tasks vs one-task part")
    p.add_argument("--precisions", default="auto", help="the server's --precision values, comma-separated")
    p.add_argument("--json", type=Path, help="also write the numbers here")
    a = p.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        run_dir = a.run_dir if a.run_dir and (a.run_dir / "summary.json").exists() else \
            train_run(a.data_dir, a.steps, a.run_dir.parent if a.run_dir else Path(tmp))
        inputs = real_inputs(a.data_dir, 256)
        cost = all_vs_one(run_dir, inputs) if not a.serve_only else {}
        if cost:
            print(f"\nprediction cost, {cost['n_inputs']} inputs, in process:")
        for k, v in cost.get("seconds", {}).items():
            print(f"  {k:<62} {v:7.3f} s  {cost['ratio_to_one'][k]:5.2f}x one task")
        batching = ["--max-batch-size", str(a.max_batch_size), "--max-wait-ms", str(a.max_wait_ms)]
        modes = {f"{precision}, batching {on}": args + ["--precision", precision]
                 for precision in a.precisions.split(",")
                 for on, args in (("on", batching), ("off", ["--no-batching"]))}
        served = {name: serve_and_load(run_dir, inputs, args, a.requests, a.concurrency) for name, args in modes.items()}
    print(f"\nserving /v1/predict (all 6 tasks, 1 input per request), {a.requests} requests, "
          f"concurrency {a.concurrency}:")
    print(f"  {'precision, mode':<24} {'req/s':>8} {'p50 ms':>8} {'p95 ms':>8} {'p99 ms':>8} {'inputs/model call':>18}")
    for name, r in served.items():
        print(f"  {name:<24} {r['rps']:8.1f} {r['p50_ms']:8.0f} {r['p95_ms']:8.0f} {r['p99_ms']:8.0f} "
              f"{r['requests'] / max(1, r['model_calls']):18.1f}")
    speedup = {p: served[f"{p}, batching on"]["rps"] / served[f"{p}, batching off"]["rps"]
               for p in a.precisions.split(",")}
    for precision, value in speedup.items():
        print(f"  micro-batching speed-up, {precision}: {value:.2f}x (target >= 3x)")
    if a.json:
        a.json.write_text(json.dumps({"cost": cost, "served": served, "speedup": speedup}, indent=2))


if __name__ == "__main__":
    main()
