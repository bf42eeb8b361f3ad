"""Does training in bf16 change what a model learns? fp32 vs bf16 autocast over several seeds (issue 30).

Trains one config (default: the standard suite's data with its base method, hard sharing +
proportional sampling + equal weights, for its equal-examples budget of 580 steps of 32) once per
seed in each precision, one run at a time, and prints every task's dev main metric as mean and
standard deviation over the seeds, bf16's mean minus fp32's, and whether that difference lies
within fp32's own seed-to-seed spread (|difference| <= fp32's standard deviation, or, where the
spread is smaller than the metric's rounding, <= 0.005). Seeds differ in initialisation, data
order and dropout: the spread is what a user sees from run to run.

    python benchmarks/bf16_parity.py --data-dir ../shared/data --out /tmp/bf16_parity          # 3 seeds
    python benchmarks/bf16_parity.py --config examples/demo.yaml --out /tmp/p --steps 240          # the demo's 4 tasks
    python benchmarks/bf16_parity.py --config examples/demo.yaml --out /tmp/p --steps 240 --override weighting.name=upgrad
    python benchmarks/bf16_parity.py --config examples/demo.yaml --out /tmp/p --seeds 2 --steps 4  # smoke

bf16 needs a CPU with AMX or AVX512_BF16, or a bf16 GPU (``train.mixed_precision: bf16``).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PRECISIONS = ("no", "bf16")  # train.mixed_precision: float32, bf16 autocast


def train_one(args, precision: str, seed: int) -> dict:
    """Dev metrics and training seconds of one run."""
    from polytask.config import load_config
    from polytask.train import train

    name = f"{'fp32' if precision == 'no' else precision}_seed{seed}"
    cfg = load_config(args.config, [f"data_dir={args.data_dir}", f"output_dir={args.out}", f"name={name}",
                                    f"seed={seed}", f"train.mixed_precision={precision}",
                                    f"train.max_steps={args.steps}", f"train.num_threads={args.threads}",
                                    f"train.eval_every={max(args.steps // 4, 1)}", *args.override])
    run = train(cfg, progress=False, overwrite=True)
    summary = json.loads((Path(run) / "summary.json").read_text())
    main = {t.name: t.main_metric for t in _tasks(cfg)}
    return {"dev": {t: summary["dev"][t][m] for t, m in main.items()}, "seconds": summary.get("train_seconds")}


def _tasks(cfg) -> list:
    from polytask.tasks import build_task

    return [build_task(tc) for tc in cfg.tasks]


def table(results: dict[str, list[dict]]) -> list[dict]:
    """Per task: each precision's mean and std over seeds, the difference and the verdict."""
    rows = []
    for task in results["no"][0]["dev"]:
        fp32 = [r["dev"][task] for r in results["no"]]
        bf16 = [r["dev"][task] for r in results["bf16"]]
        spread = statistics.stdev(fp32) if len(fp32) > 1 else 0.0
        diff = statistics.mean(bf16) - statistics.mean(fp32)
        rows.append({"task": task, "fp32_mean": statistics.mean(fp32), "fp32_std": spread,
                     "bf16_mean": statistics.mean(bf16), "bf16_std": statistics.stdev(bf16) if len(bf16) > 1 else 0.0,
                     "difference": diff, "within_spread": abs(diff) <= max(spread, 0.005)})
    return rows


def report(rows: list[dict], results: dict, args) -> None:
    print(f"\n{args.config.name} {' '.join(args.override)}: {args.steps} steps, seeds {args.first_seed}..{args.first_seed + args.seeds - 1}, "
          f"{args.threads} thread(s); load average {os.getloadavg()[0]:.1f}")
    print(f"{'task':8}{'fp32 mean ± std':>22}{'bf16 mean ± std':>22}{'bf16 - fp32':>13}  within fp32's spread")
    for r in rows:
        print(f"{r['task']:8}{r['fp32_mean']:>13.4f} ± {r['fp32_std']:.4f}{r['bf16_mean']:>13.4f} ± {r['bf16_std']:.4f}"
              f"{r['difference']:>+13.4f}  {'yes' if r['within_spread'] else 'NO'}")
    for precision in PRECISIONS:
        secs = [r["seconds"] for r in results[precision] if r["seconds"]]
        if secs:
            print(f"training seconds, {precision}: {statistics.mean(secs):.0f} (mean of {len(secs)})")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", type=Path, default=REPO / "benchmarks" / "glue_standard.yaml")
    ap.add_argument("--data-dir", type=Path, default=REPO.parent / "shared" / "data")
    ap.add_argument("--out", type=Path, required=True, help="run folders go here (outside the repository)")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--first-seed", type=int, default=13)
    ap.add_argument("--steps", type=int, default=580)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--override", nargs="*", default=[], help="more config overrides, e.g. weighting.name=upgrad")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args(argv)
    results: dict[str, list[dict]] = {p: [] for p in PRECISIONS}
    for seed in range(args.first_seed, args.first_seed + args.seeds):
        for precision in PRECISIONS:  # alternating, so a change in the machine's load hits both alike
            results[precision].append(train_one(args, precision, seed))
            print(f"seed {seed} {precision}: {results[precision][-1]}", flush=True)
    rows = table(results)
    report(rows, results, args)
    if args.json:
        args.json.write_text(json.dumps({"rows": rows, "runs": results}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
