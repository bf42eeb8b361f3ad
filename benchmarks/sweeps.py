"""Sweeps on two executors: ``polytask compare`` with ``--jobs 2`` (local processes) vs ``--executor ray``
(a local Ray instance on this machine's cores), the same config, wall time side by side.

Each executor runs the real CLI in its own output folder (nothing reused between them); its
printed lines are time-stamped as they arrive. Per sub-run, the *overhead* is the time from its
start line (``training`` locally, ``running on node`` on Ray) to its done line, minus the
sub-run's own ``wall_seconds`` (``resources.json``: the training call inside the child process),
i.e. the child's start-up (Python, torch imports) and, on Ray, the task's scheduling and result.
Ray's *start-up* is the time from compare's first line to the first ``queued`` line (``ray.init``
and the shared-storage check); the *queue wait* of a sub-run is from ``queued`` to ``running``.
The last column of the summary is Ray's cost per sub-run: (Ray wall - local wall) / sub-runs.
Identical metrics on both are checked (the report tables must match).

    python benchmarks/sweeps.py --data-dir ../shared/data --out /tmp/sweeps        # the quick suite, 7 sub-runs
    python benchmarks/sweeps.py --data-dir ../shared/data --smoke --backbone TINY_DIR --out /tmp/sweeps-smoke
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]


def smoke(cfg: dict, backbone: str | None) -> dict:
    """Two tasks, a few examples and steps: checks that the script runs, measures nothing useful."""
    cfg["tasks"] = [t for t in cfg["tasks"] if t["name"] in ("sst2", "trec")]
    for t in cfg["tasks"]:
        t["data"].update(max_train=32, max_eval=16)
    cfg["train"].update(max_steps=6, eval_every=3, log_every=3, early_stopping=None)
    cfg["compare"].update(budget="steps", inference_examples=0)
    if backbone:
        cfg["model"]["backbone"] = backbone
    return cfg


def run(config: Path, out: Path, data_dir: str, executor: str) -> dict:
    """The real CLI on one executor; every output line with its arrival time (s since start)."""
    args = ["--jobs", "2"] if executor == "local" else ["--executor", "ray"]
    cmd = [sys.executable, "-m", "polytask.cli", "compare", str(config), f"data_dir={data_dir}",
           f"output_dir={out / executor}", "--no-progress", *args]
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    started = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, cwd=REPO)
    lines = [(time.perf_counter() - started, line.rstrip("\n")) for line in proc.stdout]
    if proc.wait() != 0:
        sys.exit(f"{executor}: compare failed:\n" + "\n".join(line for _, line in lines[-30:]))
    return {"wall": time.perf_counter() - started, "lines": lines}


def timings(result: dict, root: Path, executor: str) -> dict:
    """Per sub-run start/done times from the lines, and its own training wall from resources.json."""
    start_word = "training" if executor == "local" else "running on node"
    first, queued, starts, done = result["lines"][0][0], {}, {}, {}
    for t, line in result["lines"]:
        m = re.match(r"\[\d+/\d+\] (\S+): (.*)", line)
        if not m:
            continue
        key, rest = m.groups()
        if rest.startswith("queued"):
            queued[key] = t
        elif rest.startswith(start_word):
            starts[key] = t
        elif rest.startswith(("done on", "trained", "resumed")):
            done[key] = t
    walls = {}
    for res in root.rglob("resources.json"):
        run = res.parent.relative_to(root).as_posix()
        walls[run] = json.loads(res.read_text())["wall_seconds"]
    overhead = [done[k] - starts[k] - _wall(walls, k) for k in done if k in starts]
    return {"executor": executor, "wall_s": result["wall"], "sub_runs": len(done),
            "sum_sub_run_wall_s": sum(walls.values()),
            "mean_overhead_s": sum(overhead) / max(len(overhead), 1),
            "startup_s": (min(queued.values()) - first) if queued else None,
            "mean_queue_wait_s": (sum(starts[k] - queued[k] for k in queued if k in starts) / len(queued)
                                  if queued else None)}


def _wall(walls: dict, key: str) -> float:
    """The resources.json wall of sub-run ``key`` (``single/sst2/seed13`` -> ``single/sst2/seed13``,
    ``equal/seed13`` -> ``mtl/equal/seed13``)."""
    return walls.get(key, walls.get(f"mtl/{key}", 0.0))


def table(rows: list[dict]) -> str:
    local = next(r for r in rows if r["executor"] == "local")
    out = ["| executor | wall s | sub-runs | sub-runs' own training s (sum) | overhead per sub-run s | "
           "Ray start-up s | queue wait s | (wall - local wall) / sub-runs s |", "|---" * 8 + "|"]
    for r in rows:
        fmt = (lambda x: "" if x is None else f"{x:.1f}")
        extra = (r["wall_s"] - local["wall_s"]) / max(r["sub_runs"], 1) if r is not local else None
        out.append(f"| {r['executor']} | {r['wall_s']:.1f} | {r['sub_runs']} | {r['sum_sub_run_wall_s']:.1f} | "
                   f"{r['mean_overhead_s']:.2f} | {fmt(r['startup_s'])} | {fmt(r['mean_queue_wait_s'])} | {fmt(extra)} |")
    return "\n".join(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data-dir", default="../shared/data")
    ap.add_argument("--config", type=Path, default=REPO / "benchmarks" / "glue_quick.yaml")
    ap.add_argument("--out", type=Path, default=Path("/tmp/polytask-sweeps"))
    ap.add_argument("--smoke", action="store_true", help="2 tasks, 32 examples, 6 steps (a check that it runs)")
    ap.add_argument("--backbone", help="another backbone (e.g. a tiny random BERT folder, with --smoke)")
    args = ap.parse_args()
    cfg = yaml.safe_load(args.config.read_text())
    cfg = smoke(cfg, args.backbone) if args.smoke else cfg
    args.out.mkdir(parents=True, exist_ok=True)
    config = args.out / "sweep.yaml"
    config.write_text(yaml.safe_dump(cfg, sort_keys=False))
    data_dir = str(Path(args.data_dir).resolve())
    rows, tables = [], {}
    for executor in ("local", "ray"):
        result = run(config, args.out, data_dir, executor)
        root = args.out / executor / cfg["name"]
        rows.append(timings(result, root, executor))
        tables[executor] = json.loads((root / "results.json").read_text())["table"]
    same = tables["local"] == tables["ray"]
    (args.out / "sweeps.json").write_text(json.dumps({"rows": rows, "same_metrics": same}, indent=2))
    print(table(rows))
    print(f"same report table on both executors: {same}; load average now: {os.getloadavg()[0]:.1f} "
          f"on {os.cpu_count()} cores")
    if not same:
        sys.exit("the executors gave different metrics")


if __name__ == "__main__":
    main()
