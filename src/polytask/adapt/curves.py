"""Few-shot learning curves: the multi-task encoder vs the plain pretrained backbone.

For each K in ``shots`` and each of ``seeds`` draws (:func:`polytask.adapt.shots.k_shot`; seed
``cfg.seed + s``), the new task is trained from both start points with the same budget and
hyper-parameters (the adaptation config's ``train`` section: ``max_steps`` steps of
``min(batch_size, K)`` examples, the same lr, warm-up and evaluation schedule, the best dev
step kept) and scored on dev (selection) and test. The method is the few-shot transfer
protocol of Phang, Fevry & Bowman, "Sentence Encoders on STILTs", 2018 and Aghajanyan et al.,
"Muppet: Massive Multi-task Representations with Pre-Finetuning", EMNLP 2021: intermediate
(multi-task) training vs none, at several training-set sizes, mean and spread over seeds.

Writes into ``out_dir``: ``curves.json`` (every run, and mean/std per K and start),
``curves.md`` (the table) and ``curves.png`` (test metric vs K, log x, mean +- std bands).
"""

from __future__ import annotations

import statistics
from pathlib import Path

from tqdm.auto import tqdm

from polytask.adapt.core import STARTS, refs_of
from polytask.adapt.curve_runs import curve_setup, start_runs
from polytask.adapt.spec import AdaptError
from polytask.files import write_json


def learning_curves(run_dir: str | Path, task: dict | str | Path, shots: list[int], seeds: int = 3,
                    tune: str = "head", out_dir: str | Path = "adapt-curves", overrides: list[str] | None = None,
                    progress: bool = True, executor: str = "local", ray_address: str | None = None,
                    echo=print) -> dict:
    """Run every (start, K, seed); write the table, the JSON and the plot; returns the JSON.

    ``executor="ray"``: each start point's runs are one Ray task (:mod:`polytask.adapt.remote`,
    on ``ray_address`` or a local Ray instance); the records are the same as here."""
    run, new, source, td, draws = curve_setup(run_dir, task, shots, seeds, tune, overrides)
    if executor == "ray":
        from polytask.adapt.remote import curves_on_ray

        spec = {"run_dir": str(run.path.resolve()), "task": task if isinstance(task, dict) else str(Path(task).resolve()),
                "shots": list(shots), "seeds": seeds, "tune": tune, "overrides": list(overrides or [])}
        records = curves_on_ray(spec, ray_address, echo)
    elif executor == "local":
        records = []
        bar = tqdm(total=len(STARTS) * len(draws), desc=f"curves {new.name}", disable=not progress, dynamic_ncols=True)
        for start in STARTS:
            records += start_runs(start, source, new, td, draws, tune, progress, bar)
        bar.close()
    else:
        raise AdaptError(f"--executor {executor!r}: the executors are: local, ray")
    from polytask.compare.chance import chance_level

    chance = {split: chance_level(td.task, refs) for split, refs in refs_of(td).items() if refs}
    result = {"task": new.name, "metric": td.task.main_metric, "tune": tune, "source": str(run.path),
              "pretrained": new.cfg.model.backbone, "train": vars(new.cfg.train), "runs": records,
              "summary": summarise(records), "chance": chance}
    write_outputs(Path(out_dir), result)
    return result


def summarise(records: list[dict]) -> list[dict]:
    """Mean and (sample) standard deviation of the main metric per start point and K."""
    rows = []
    for start in STARTS:
        for k in sorted({r["k"] for r in records}):
            runs = [r for r in records if r["start"] == start and r["k"] == k]
            row = {"start": start, "k": k, "n": len(runs)}
            for split in ("dev", "test"):
                values = [r[split] for r in runs if r[split] is not None]
                row[f"{split}_mean"] = statistics.fmean(values) if values else None
                row[f"{split}_std"] = statistics.stdev(values) if len(values) > 1 else 0.0 if values else None
            rows.append(row)
    return rows


def table(result: dict) -> str:
    """The markdown table: K rows, per split the mean +- std of each start point and their gap."""
    m = result["metric"]
    head = (f"| K | dev {m}: multitask | dev {m}: pretrained | test {m}: multitask | test {m}: pretrained "
            f"| test gain |\n|---|---|---|---|---|---|")
    by = {(r["start"], r["k"]): r for r in result["summary"]}
    lines = [head]
    for k in sorted({r["k"] for r in result["summary"]}):
        cells = []
        for split in ("dev", "test"):
            for start in STARTS:
                r = by[(start, k)]
                mean, std = r[f"{split}_mean"], r[f"{split}_std"]
                cells.append("-" if mean is None else f"{mean:.4f} ± {std:.4f}")
        a, b = by[("multitask", k)]["test_mean"], by[("pretrained", k)]["test_mean"]
        gain = "-" if a is None or b is None else f"{a - b:+.4f}"
        lines.append(f"| {k} | " + " | ".join(cells) + f" | {gain} |")
    chance = result.get("chance") or {}
    if chance:  # what a model that ignores its input scores: every K must beat it to mean anything
        cells = ["-" if chance.get(split) is None else f"{chance[split]:.4f}" for split in ("dev", "test")
                 for _ in STARTS]
        lines.append("| chance (input-blind best) | " + " | ".join(cells) + " | - |")
    return "\n".join(lines)


def plot(result: dict, path: Path) -> None:
    """Test (else dev) metric vs K (:func:`figure`), saved as a PNG."""
    import matplotlib.pyplot as plt

    fig = figure(result)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def figure(result: dict):
    """Test (else dev) metric vs K, log x with the K values as ticks, mean +- std bands for both
    start points, and the split's chance level (the best input-blind score) as a dotted line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    split = "test" if any(r["test_mean"] is not None for r in result["summary"]) else "dev"
    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    for start in STARTS:
        rows = [r for r in result["summary"] if r["start"] == start and r[f"{split}_mean"] is not None]
        ks = [r["k"] for r in rows]
        mean = [r[f"{split}_mean"] for r in rows]
        std = [r[f"{split}_std"] for r in rows]
        ax.plot(ks, mean, marker="o", label=f"{start} encoder")
        ax.fill_between(ks, [a - b for a, b in zip(mean, std)], [a + b for a, b in zip(mean, std)], alpha=0.2)
    chance = (result.get("chance") or {}).get(split)
    if chance is not None:
        ax.axhline(chance, color="gray", ls=":", lw=1.2, label="chance (input-blind best)")
    ax.set_xscale("log")
    ks = sorted({r["k"] for r in result["summary"]})
    ax.set_xticks(ks)
    ax.set_xticklabels([str(k) for k in ks])
    ax.minorticks_off()
    ax.set_xlabel("training examples K (log scale)")
    ax.set_ylabel(f"{split} {result['metric']}")
    ax.set_title(f"{result['task']}: few-shot transfer (--tune {result['tune']})")
    ax.legend()
    fig.tight_layout()
    return fig


def write_outputs(out: Path, result: dict) -> None:
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "curves.json", result)
    text = table(result)
    (out / "curves.md").write_text(f"# {result['task']}: multi-task vs pretrained encoder ({result['tune']})\n\n"
                                   f"{text}\n\nmean ± std over seeds; source run: {result['source']}\n")
    plot(result, out / "curves.png")
