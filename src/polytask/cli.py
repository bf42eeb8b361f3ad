"""Command line: ``polytask train | evaluate | predict | check | compare | export-adapter | merge-lora``.

Each verb is a thin wrapper over a library function; errors become one red line and exit code 2."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Optional

import typer

from polytask.errors import PolytaskError

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="Multi-task learning with pretrained language models.")

OVERRIDES = typer.Argument(None, help="Config overrides like train.max_steps=100 tasks.sst2.data.max_train=500")


def _fail(exc: Exception) -> None:
    typer.secho(f"error: {exc}", fg=typer.colors.RED, err=True)
    raise typer.Exit(2)


def _call(fn, *args):
    """``fn(*args)``, with a PolytaskError reported as one line and exit code 2."""
    try:
        return fn(*args)
    except PolytaskError as exc:
        _fail(exc)


@app.command()
def train(
    config: Optional[str] = typer.Argument(None, help="YAML config file (omit with --resume)"),
    overrides: Optional[list[str]] = OVERRIDES,
    resume: Optional[Path] = typer.Option(None, help="Continue this run folder from its last good checkpoint"),
    progress: bool = typer.Option(True, help="Show a progress bar"),
) -> None:
    """Train one multi-task model on every task in CONFIG; writes a run folder.

    Ctrl-C or SIGTERM writes a checkpoint first; `polytask train --resume RUN_DIR` continues
    it exactly (extra overrides such as train.max_steps=2000 may extend it).
    """
    from polytask.train import Interrupted, train as run_train

    overrides = list(overrides or [])
    if config and "=" in config:  # with --resume, the first positional is an override
        overrides.insert(0, config)
        config = None
    try:
        run_dir = run_train(config, overrides, progress=progress, resume=resume)
    except Interrupted as exc:
        typer.secho(str(exc), fg=typer.colors.YELLOW, err=True)
        raise typer.Exit(130)
    except PolytaskError as exc:
        _fail(exc)
    from polytask.run_folder import RunFolder

    typer.echo(format_summary(RunFolder(run_dir).read_summary()))
    typer.echo(f"run folder: {run_dir}")


@app.command()
def evaluate(
    run_dir: Path = typer.Argument(..., help="A run folder written by 'polytask train'"),
    split: str = typer.Option("dev", help="dev or test"),
    overrides: Optional[list[str]] = OVERRIDES,
) -> None:
    """Evaluate a trained run on its configured dev or test data (e.g. data_dir=... to move it)."""
    from polytask.predict import evaluate_run

    result = _call(evaluate_run, run_dir, split, overrides or [])
    typer.echo(json.dumps(result, indent=2))


@app.command()
def predict(
    run_dir: Path = typer.Argument(..., help="A run folder written by 'polytask train'"),
    task: Optional[str] = typer.Option(None, help="Task to predict (default: every task)"),
    text: Optional[list[str]] = typer.Option(None, help="Input text (repeatable)"),
    input: Optional[Path] = typer.Option(None, "--input", help="JSONL or CSV/TSV file of inputs"),
    output: Optional[Path] = typer.Option(None, help="Write JSONL here instead of stdout"),
) -> None:
    """Predict with a trained run, for one task or all tasks, from --text or an --input file."""
    from polytask.predict import Predictor

    try:
        inputs = read_inputs(text, input)
        pred = Predictor.load(run_dir)
        names = [task] if task else list(pred.tasks)
        results = {name: pred.predict(name, inputs) for name in names}
    except PolytaskError as exc:
        _fail(exc)
    out = open(output, "w") if output else sys.stdout
    for i, item in enumerate(inputs):
        row = {"input": item, **{name: results[name][i] for name in names}}
        out.write(json.dumps(row) + "\n")
    if output:
        out.close()
        typer.echo(f"wrote {len(inputs)} predictions to {output}")


@app.command()
def check(
    config: Path = typer.Argument(..., help="YAML config file"),
    overrides: Optional[list[str]] = OVERRIDES,
) -> None:
    """Validate CONFIG and all of its data without training; report every problem at once."""
    from polytask.config import load_config
    from polytask.dataset import prepare
    from polytask.backbones.encoder import resolve_backbone
    from polytask.train import build_components

    try:
        cfg = load_config(config, overrides or [])
        resolve_backbone(cfg.model.backbone)
        data = prepare(cfg)
        build_components(cfg, list(data), [len(td.examples["train"]) for td in data.values()])
    except PolytaskError as exc:
        _fail(exc)
    for name, td in data.items():
        counts = ", ".join(f"{s}={len(v)}" for s, v in td.examples.items())
        vocab = td.task.vocab_state()
        extra = f", {len(vocab['labels'])} labels" if "labels" in vocab else ""
        typer.echo(f"{name} ({td.task.type_name}): {counts}{extra}, main metric {td.task.main_metric}")
    typer.echo("config and data OK")


def read_inputs(text: list[str] | None, path: Path | None) -> list:
    if text:
        return list(text)
    if path is None:
        raise PolytaskError("give --text or --input")
    from polytask.data.records import read_records
    from polytask.errors import DataError

    records, problems = read_records(path)
    if problems:
        raise DataError(problems)
    return [r.fields for r in records]


def format_summary(summary: dict) -> str:
    lines = [f"best step {summary['best_step']} ({summary['train_seconds']:.0f}s training)"]
    for split in ("dev", "test"):
        if split not in summary:
            continue
        lines.append(f"{split}:")
        for task, metrics in summary[split].items():
            shown = "  ".join(f"{k}={v:.4f}" for k, v in metrics.items())
            lines.append(f"  {task:<14} {shown}")
        lines.append(f"  {'macro':<14} {summary[f'{split}_macro']:.4f}")
    return "\n".join(lines)


@app.command()
def compare(
    config: Path = typer.Argument(..., help="YAML config file (its compare section lists seeds and methods)"),
    overrides: Optional[list[str]] = OVERRIDES,
    progress: bool = typer.Option(False, help="Show each sub-run's progress bar"),
    plan: bool = typer.Option(False, "--plan", help="Print the sub-runs and their budgets; train nothing"),
    report_only: bool = typer.Option(False, "--report-only", help="Rebuild the report from finished sub-runs"),
) -> None:
    """Did multi-task learning help? Train single-task baselines and the multi-task methods of
    CONFIG (finished sub-runs are reused), then write report.md and plots to the run folder."""
    from polytask import compare as cmp
    from polytask.config import load_config

    try:
        cfg = load_config(config, overrides or [])
        if plan:
            p = cmp.plan_compare(cfg)
            for r in p.runs:
                exp = ", ".join(f"{t}={n:.0f}" for t, n in r.budget["expected_examples"].items())
                state = "finished" if r.finished else "to train"
                typer.echo(f"{r.key:<32} {r.budget['max_steps']:>6} steps, eval every {r.budget['eval_every']:<5} "
                           f"examples: {exp}  [{state}]")
            for note in p.notes:
                typer.echo(f"note: {note}")
            typer.echo(f"budget: {p.budget_rule}; folder: {p.root}")
            return
        cmp.run_compare(cfg, progress=progress, echo=typer.echo, train_missing=not report_only)
    except PolytaskError as exc:
        _fail(exc)


@app.command("export-adapter")
def export_adapter(
    run_dir: Path = typer.Argument(..., help="A run folder trained with architecture 'adapters'"),
    task: str = typer.Option(..., "--task", help="The task whose adapter to export"),
    out: Path = typer.Option(..., "--out", help="Output folder (created)"),
) -> None:
    """Export one task's adapter (PEFT format for LoRA) and head from an adapters run."""
    from polytask.export import export_adapter as export

    path = _call(export, run_dir, task, out)
    typer.echo(f"wrote the '{task}' adapter to {path}")


@app.command("merge-lora")
def merge_lora(
    run_dir: Path = typer.Argument(..., help="A run folder trained with architecture 'causal_lm'"),
    out: Path = typer.Option(..., "--out", help="Output folder for the merged model (created)"),
    task: Optional[str] = typer.Option(None, "--task", help="The task whose adapter to merge (task_lora runs)"),
) -> None:
    """Merge a LoRA adapter into the base LLM and write a plain Hugging Face model."""
    from polytask.export import merge_lora as merge

    path = _call(merge, run_dir, out, task)
    typer.echo(f"wrote the merged model to {path}")


if __name__ == "__main__":
    app()
