"""Dense vision benchmark (issue 29): one model for classification + segmentation + detection
against a single-task model per task, under ``polytask compare``'s rules.

    # Pets: breed + species + trimap + head box, joint (hard + IMTL, MTAN + UPGrad) vs 4 single-task models
    nice -n 10 .venv/bin/python benchmarks/dense_pets.py --data-dir ../shared/data --out /tmp/dense_pets \
        --seeds 3 --steps 600 --size 224
    # multi-digit detection alone vs with a digit-count classifier (scripts/make_multidigit.py's data)
    nice -n 10 .venv/bin/python benchmarks/dense_pets.py --set multidigit --data-dir ../shared/data \
        --out /tmp/dense_digits --seeds 3 --steps 1500 --size 64
    # smoke (seconds per sub-run; a tiny random backbone folder, or the real one at 64 px)
    .venv/bin/python benchmarks/dense_pets.py --data-dir ../shared/data --out /tmp/dense_smoke --smoke

Pets: the rows come from scripts/make_pets.py (trainval split 250 / 50 into train / dev, test the
298 test images; head boxes for trainval only), the config from examples/pets_dense.yaml.
Multi-digit: ``--digits`` training canvases (default 5000; dev and test 500) built with
polytask.data.multidigit, detection (main metric mAP@0.5) and ``count`` (1-4 digits). Both run
``budget: steps`` (every model trains ``--steps`` steps of batch ``--batch``), every seed of
``--seeds`` (default 1), and compare's serving-cost measurement. compare writes its report
(report.md, results.json: per-task dev/test metrics, mean and spread over seeds, training time,
peak memory, serving cost) under ``<out>/runs``; this script prints where.
"""

from __future__ import annotations

import argparse
import importlib.util
import subprocess
import sys
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]

METHODS = [{"name": "hard-imtl", "architecture": {"name": "hard"}, "weighting": {"name": "imtl"}},
           {"name": "mtan-upgrad", "architecture": {"name": "mtan"}, "weighting": {"name": "upgrad"}}]


def pets_config(args: argparse.Namespace, rows: Path) -> dict:
    """examples/pets_dense.yaml on rows written by scripts/make_pets.py."""
    spec = importlib.util.spec_from_file_location("make_pets", REPO / "scripts" / "make_pets.py")
    make_pets = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(make_pets)
    sys.argv = ["make_pets", str(Path(args.data_dir) / "pets"), str(rows)]
    make_pets.main()
    cfg = yaml.safe_load((REPO / "examples" / "pets_dense.yaml").read_text())
    cfg["data_dir"] = str(rows)
    return cfg


def digits_config(args: argparse.Namespace, rows: Path) -> dict:
    from polytask.data.multidigit import build

    n = args.digits
    build(Path(args.data_dir) / "mnist" / "mnist.npz", rows, n, max(n // 10, 8), max(n // 10, 8), seed=0)
    data = {"train": "train.jsonl", "dev": "dev.jsonl", "test": "test.jsonl"}
    return {"name": "multidigit", "data_dir": str(rows), "seed": 13,
            "model": {"kind": "vision", "backbone": "efficientnet-lite0", "image": {"flip": False, "crop_scale": [0.8, 1.0], "convert": True}},
            "architecture": {"name": "hard"}, "weighting": {"name": "imtl"},
            "tasks": [{"name": "digits", "type": "detection", "columns": {"image": "image"}, "max_detections": 10, "data": data},
                      {"name": "count", "type": "classification", "columns": {"image": "image", "label": "count"}, "data": data}],
            "train": {"lr": 1.0e-3, "warmup_ratio": 0.05, "num_threads": 2}}


def finish(cfg: dict, args: argparse.Namespace) -> dict:
    """The compare section and the budget; ``--smoke`` cuts everything to seconds."""
    cfg["output_dir"] = str(Path(args.out) / "runs")
    cfg["model"]["image"]["size"] = args.size
    if args.backbone:
        cfg["model"]["backbone"] = args.backbone
    cfg["train"].update(max_steps=args.steps, batch_size=args.batch, eval_every=max(args.steps // 4, 1))
    if args.threads:
        cfg["train"]["num_threads"] = args.threads
    cfg["compare"] = {"seeds": list(range(cfg.get("seed", 13), cfg.get("seed", 13) + args.seeds)), "budget": "steps",
                      "methods": METHODS if args.set == "pets" else METHODS[:1],
                      "inference_examples": 8 if args.smoke else 64}
    if args.smoke:
        for t in cfg["tasks"]:
            t["data"].update(max_train=24, max_eval=8)
            t["head_channels"] = 16
    return cfg


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--set", choices=["pets", "multidigit"], default="pets")
    p.add_argument("--data-dir", default=str(REPO.parent / "shared" / "data"))
    p.add_argument("--out", required=True, help="rows, configs and runs go here (outside the repository)")
    p.add_argument("--seeds", type=int, default=1)
    p.add_argument("--steps", type=int, default=600)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--digits", type=int, default=5000, help="multidigit: training canvases")
    p.add_argument("--backbone", help="another backbone (e.g. a tiny random CNN folder, with --smoke)")
    p.add_argument("--threads", type=int, default=None, help="train.num_threads of every sub-run (default: the config's)")
    p.add_argument("--smoke", action="store_true", help="4 steps, 64 px, 24 training / 8 eval examples per task")
    args = p.parse_args(argv)
    if args.smoke:
        args.steps, args.size, args.batch, args.digits = 4, 64, 4, 40
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rows = out / "data"
    cfg = finish(pets_config(args, rows) if args.set == "pets" else digits_config(args, rows), args)
    path = out / f"{cfg['name']}_compare.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    print(f"config: {path}", flush=True)
    proc = subprocess.run([sys.executable, "-m", "polytask.cli", "compare", str(path), "--no-progress"])
    print(f"report: {Path(cfg['output_dir'])} (compare's report.md and results.json)")
    return proc.returncode


if __name__ == "__main__":
    sys.exit(main())
