"""What answering one question costs, alone and inside ``predict_all`` beside the other tasks (issue 27).

A model of ``examples/squad_mtl.yaml`` (SQuAD + SST-2 + CoNLL-2003 on MiniLM, hard sharing) is
trained for ``--steps`` steps on a slice of the data (the cost of prediction depends on shapes,
not on how well the weights are trained), or taken from ``--run``. Then, on the first ``--n``
questions of ``squad/dev.json``, each paired with an SST-2 dev sentence (field ``text``) and a
CoNLL dev sentence (field ``tokens``):

(a) ``predict("squad", questions)``: questions per second of extractive QA alone;
(b) ``predict("sst2", sentences)`` and ``predict("conll", sentences)``: the other tasks alone;
(c) ``predict_all(inputs)``: one call for every task, each input holding the fields of all three.

Each measurement is repeated ``--repeats`` times, the three alternating so that a change in the
machine's load hits all of them alike, and the fastest repetition is kept. Printed: milliseconds
per input of each, and (c) against the sum of (a) and (b): ``predict_all`` does not share a QA
task's encoder pass with the other tasks (a question's windows are other token sequences), so
its cost is expected near that sum; what it saves is the calls, not the compute.

    python benchmarks/qa_predict_cost.py --data-dir ../shared/data --out /tmp/qa_cost
    python benchmarks/qa_predict_cost.py --data-dir ../shared/data --out /tmp/qa_cost --steps 2 --n 16 --repeats 1  # smoke
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def train_model(args) -> Path:
    """The example's model, trained briefly on a slice (cost depends on shapes, not on skill)."""
    from polytask.config import load_config
    from polytask.train import train

    cfg = load_config(REPO / "examples" / "squad_mtl.yaml", [
        f"data_dir={args.data_dir}", f"output_dir={args.out}", "name=qa_cost", f"train.max_steps={args.steps}",
        f"train.eval_every={args.steps}", f"train.num_threads={args.threads}",
        "tasks.squad.data.max_train=256", "tasks.squad.data.max_eval=64",
        "tasks.sst2.data.max_train=256", "tasks.sst2.data.max_eval=64",
        "tasks.conll.data.max_train=256", "tasks.conll.data.max_eval=64"])
    return train(cfg, progress=False, overwrite=True)


def inputs(data_dir: Path, n: int) -> tuple[list[dict], list[str], list[list[str]]]:
    """``n`` dev questions (with their contexts), SST-2 dev sentences and CoNLL dev sentences, read
    by polytask's own readers."""
    from polytask.data.conll import read_conll
    from polytask.data.jsonl import read_jsonl
    from polytask.data.squad import read_squad

    squad = read_squad(data_dir / "squad" / "dev.json", max_examples=n)[0]
    sst2 = read_jsonl(data_dir / "sst2" / "dev.jsonl", max_examples=n)[0]
    conll = read_conll(data_dir / "conll2003" / "dev.conll", max_examples=n)[0]
    if min(len(squad), len(sst2), len(conll)) < n:
        raise SystemExit(f"fewer than {n} dev inputs in {data_dir}")
    return ([{"question": r.fields["question"], "context": r.fields["context"]} for r in squad],
            [r.fields["text"] for r in sst2], [r.fields["tokens"] for r in conll])


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def measure(pred, questions, sst2, conll, batch_size: int, repeats: int) -> dict[str, float]:
    """The fastest of ``repeats`` alternating repetitions of every measurement, in seconds."""
    combined = [{**q, "text": s, "tokens": c} for q, s, c in zip(questions, sst2, conll)]
    runs = {
        "squad alone": lambda: pred.predict("squad", questions, batch_size),
        "sst2 alone": lambda: pred.predict("sst2", sst2, batch_size),
        "conll alone": lambda: pred.predict("conll", conll, batch_size),
        "predict_all (all three)": lambda: pred.predict_all(combined, batch_size),
    }
    for fn in runs.values():  # warm-up: first calls allocate and tokenizers warm their caches
        fn()
    best = {name: float("inf") for name in runs}
    for _ in range(repeats):
        for name, fn in runs.items():
            best[name] = min(best[name], timed(fn))
    answers = pred.predict_all(combined, batch_size)["squad"]
    assert answers == pred.predict("squad", questions, batch_size), "predict_all's answers differ from predict's"
    return best


def report(best: dict[str, float], n: int, args) -> dict:
    print(f"\n{n} inputs, batch {args.batch_size}, {args.threads} thread(s), fastest of {args.repeats} "
          f"alternating repetitions; load average {os.getloadavg()[0]:.2f}")
    print(f"{'':32}{'s':>8}{'ms per input':>14}{'inputs/s':>10}")
    for name, secs in best.items():
        print(f"{name:32}{secs:8.2f}{1000 * secs / n:14.1f}{n / secs:10.1f}")
    alone = best["squad alone"] + best["sst2 alone"] + best["conll alone"]
    together = best["predict_all (all three)"]
    print(f"{'sum of the three alone':32}{alone:8.2f}{1000 * alone / n:14.1f}")
    print(f"predict_all / sum alone: {together / alone:.2f}x; the QA answer's share of predict_all's time: "
          f"{best['squad alone'] / together:.0%}")
    return {"n": n, "seconds": best, "sum_alone": alone, "ratio": together / alone, "threads": args.threads,
            "batch_size": args.batch_size, "repeats": args.repeats}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data-dir", type=Path, default=REPO.parent / "shared" / "data")
    ap.add_argument("--out", type=Path, required=True, help="where the model is trained (outside the repository)")
    ap.add_argument("--run", type=Path, help="an existing run of examples/squad_mtl.yaml instead of training one")
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--n", type=int, default=200, help="dev inputs")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args(argv)

    import torch

    import polytask

    torch.set_num_threads(args.threads)
    run = args.run or train_model(args)
    pred = polytask.load(run)
    questions, sst2, conll = inputs(args.data_dir, args.n)
    numbers = report(measure(pred, questions, sst2, conll, args.batch_size, args.repeats), args.n, args)
    if args.json:
        args.json.write_text(json.dumps(numbers, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
