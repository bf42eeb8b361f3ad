"""Few-shot transfer: the multi-task encoder vs the plain pretrained backbone (issue 18, item 4).

    .venv/bin/python benchmarks/transfer.py --data-dir ../shared/data      # the real one (~15 min)
    .venv/bin/python benchmarks/transfer.py --quick                        # tiny backbone, synthetic data

Trains the multi-task model of ``benchmarks/transfer.yaml`` (hard sharing, MiniLM, five tasks of
``../shared/data``: MRPC held out), then for each target task (MRPC; BBC topic) runs
:func:`polytask.adapt.learning_curves`: K-shot subsets (stratified by label, 3 seeds each) trained
from the multi-task encoder and from plain all-MiniLM-L6-v2 with the same budget and
hyper-parameters (the yaml's ``curves.train``), scored on dev (selection) and test. Prints each
task's table (test gain = multi-task minus pretrained, same K) and writes ``--out``/<task>/
(curves.json, curves.md, curves.png) and ``--out``/transfer.json. One torch thread.

``--quick``: a random 2-layer, 32-wide BERT (with MiniLM's tokenizer) and two synthetic demo tasks
as the multi-task model, a third adapted with shots 8 and 32 and 2 seeds: a smoke test of the
script (seconds), not a measurement.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch
import yaml

REPO = Path(__file__).resolve().parents[1]


def tiny_backbone(folder: Path) -> str:
    """A random 2-layer, 32-wide BERT with the MiniLM tokenizer (as tests/conftest.py builds it)."""
    from transformers import AutoTokenizer, BertConfig, BertModel

    from polytask.backbones.encoder import resolve_backbone

    tokenizer = AutoTokenizer.from_pretrained(resolve_backbone("minilm"))
    torch.manual_seed(0)
    BertModel(BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                         intermediate_size=64, max_position_embeddings=128)).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return str(folder)


def quick_plan(work: Path) -> dict:
    """The --quick plan: tiny backbone, synthetic tasks, small budgets."""
    data = {"format": "synthetic", "max_train": 120, "max_eval": 40}
    backbone = tiny_backbone(work / "tiny-bert")
    return {
        "multitask": {"name": "transfer-mt", "output_dir": str(work), "seed": 3,
                      "model": {"backbone": backbone, "max_length": 32},
                      "tasks": [{"name": "sentiment", "type": "classification", "data": dict(data), "pooling": "mean"},
                                {"name": "entities", "type": "tagging", "data": dict(data)}],
                      "train": {"max_steps": 20, "batch_size": 16, "lr": 1e-3, "eval_every": 10, "log_every": 5,
                                "num_threads": 1}},
        "targets": [{"name": "topic", "type": "classification", "data": dict(data), "pooling": "mean"}],
        "curves": {"tune": "head", "shots": [8, 32], "seeds": 2,
                   "train": {"max_steps": 20, "batch_size": 8, "lr": 1e-2, "eval_every": 10}},
    }


def run(plan: dict, out: Path, data_dir: str | None, progress: bool) -> dict:
    from polytask.adapt import learning_curves
    from polytask.adapt.curves import table
    from polytask.config import from_dict
    from polytask.train import train

    mt = dict(plan["multitask"])
    if data_dir:
        mt["data_dir"] = data_dir
    mt["output_dir"] = str(out)
    started = time.perf_counter()
    run_dir = train(from_dict(mt), progress=progress, overwrite=True)
    mt_seconds = time.perf_counter() - started
    print(f"multi-task model: {run_dir} ({mt_seconds:.0f}s)", flush=True)
    curves = plan["curves"]
    results = {"multitask_seconds": mt_seconds, "run": str(run_dir), "tasks": {}}
    for target in plan["targets"]:
        t0 = time.perf_counter()
        task = {**target, "train": curves["train"]}
        overrides = [f"data_dir={data_dir}"] if data_dir else []
        result = learning_curves(run_dir, task, curves["shots"], curves["seeds"], curves["tune"],
                                 out / target["name"], overrides, progress)
        result["seconds"] = time.perf_counter() - t0
        results["tasks"][target["name"]] = result
        print(f"\n## {target['name']} (--tune {curves['tune']}, {result['seconds']:.0f}s)\n\n{table(result)}\n", flush=True)
    results["total_seconds"] = time.perf_counter() - started
    return results


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default=str(REPO / "benchmarks" / "transfer.yaml"))
    ap.add_argument("--data-dir", default=None, help="../shared/data (default: the yaml's data_dir)")
    ap.add_argument("--out", default="runs/transfer", help="where the run and the curves go")
    ap.add_argument("--quick", action="store_true", help="tiny backbone, synthetic data: a smoke test")
    ap.add_argument("--no-progress", action="store_true")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    out = Path(args.out)
    with tempfile.TemporaryDirectory() as tmp:
        plan = quick_plan(Path(tmp)) if args.quick else yaml.safe_load(Path(args.config).read_text())
        results = run(plan, out, None if args.quick else args.data_dir, not args.no_progress)
    (out / "transfer.json").write_text(json.dumps(results, indent=2))
    print(f"total wall time: {results['total_seconds']:.0f}s (multi-task training {results['multitask_seconds']:.0f}s); "
          f"results in {out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
