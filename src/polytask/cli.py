"""Command line: ``polytask train | evaluate | predict | serve | check | compare | affinity | adapt | export |
export-adapter | merge-lora``.

Each verb is a thin wrapper over a library function; errors become one red line and exit code 2."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path
from typing import Optional

import typer

from polytask.errors import PolytaskError

# plain click help (rich_markup_mode=None): docstrings are re-wrapped to the terminal's width
# instead of keeping their source line breaks, and flags show no "<bool>" value type
app = typer.Typer(add_completion=False, no_args_is_help=True, rich_markup_mode=None,
                  help="Multi-task learning with pretrained language models.")

def _version(value: bool) -> None:
    if value:
        from polytask._version import __version__

        typer.echo(f"polytask {__version__}")
        raise typer.Exit()


@app.callback()
def main(version: bool = typer.Option(False, "--version", callback=_version, is_eager=True,
                                      help="Print the version and exit")) -> None:
    """Multi-task learning with pretrained language models."""


OVERRIDES = typer.Argument(None, help="Config overrides like train.max_steps=100 tasks.sst2.data.max_train=500")
ALLOW_CODE = typer.Option(False, "--allow-code", help="Import module:Class components named in the run folder's config "
                                      "(only for run folders you trust)")
PRECISION = typer.Option("auto", "--precision", help="fp32, bf16 (autocast; CPUs with AMX or AVX512_BF16, GPUs; auto takes it on AMX CPUs and bf16 GPUs), int8 "
                         "(dynamic quantization, CPU), or auto: the run's training precision where this device "
                         "computes it natively, else fp32 (docs/serving.md)")


PROGRESS = typer.Option(None, "--progress/--no-progress", help="Progress bars (default: when stderr is a terminal; "
                        "without them, as in a log file, a line per evaluation and no carriage returns)")


def show_progress(flag: bool | None) -> bool:
    """``--progress``/``--no-progress`` when given, else bars only on a terminal (a log gets no ``\\r`` noise)."""
    return sys.stderr.isatty() if flag is None else flag


def _fail(exc: Exception) -> None:
    typer.secho(f"error: {_describe(exc)}", fg=typer.colors.RED, err=True)
    raise typer.Exit(2)


def _describe(exc: Exception) -> str:
    """One line for the user: a PolytaskError says it itself; a failed read or write names the
    path and the operating system's reason (a full disk, a read-only folder, a file in the way)."""
    if isinstance(exc, OSError) and not isinstance(exc, PolytaskError):
        where = f" {exc.filename}" if exc.filename else ""
        return f"cannot read or write{where}: {exc.strerror or exc} (check the path, its permissions and free space)"
    return str(exc)


USER_ERRORS = (PolytaskError, OSError)


def _call(fn, *args):
    """``fn(*args)``, with a user error (PolytaskError, OSError) reported as one line and exit code 2."""
    try:
        return fn(*args)
    except USER_ERRORS as exc:
        _fail(exc)


@app.command()
def train(
    config: Optional[str] = typer.Argument(None, help="YAML config file (omit with --resume)"),
    overrides: Optional[list[str]] = OVERRIDES,
    resume: Optional[Path] = typer.Option(None, help="Continue this run folder from its last good checkpoint"),
    progress: Optional[bool] = PROGRESS,
    overwrite: bool = typer.Option(False, "--overwrite", help="Start over in a run folder that holds another run (clears its files)"),
    allow_changes: bool = typer.Option(False, "--allow-changes", help="With --resume: accept overrides that change the trajectory"),
    allow_code: bool = typer.Option(False, "--allow-code", help="With --resume: import module:Class components named in the run folder"),
) -> None:
    """Train one multi-task model on every task in CONFIG; writes a run folder.

    Ctrl-C or SIGTERM writes a checkpoint first; `polytask train --resume RUN_DIR` continues
    it exactly (extra overrides such as train.max_steps=2000 may extend it; they are saved in
    the run's config.yaml). A folder that holds another run is refused unless --overwrite.
    """
    from polytask.train import Interrupted, train as run_train

    overrides = list(overrides or [])
    if config and "=" in config:  # with --resume, the first positional is an override
        overrides.insert(0, config)
        config = None
    try:
        run_dir = run_train(config, overrides, progress=show_progress(progress), resume=resume, overwrite=overwrite,
                            allow_changes=allow_changes, allow_code=allow_code)
    except Interrupted as exc:
        typer.secho(str(exc), fg=typer.colors.YELLOW, err=True)
        raise typer.Exit(130)
    except USER_ERRORS as exc:
        _fail(exc)
    from polytask.devices import process_state
    from polytask.run_folder import RunFolder

    if not process_state().is_main_process:  # torchrun / accelerate launch: the main process reports
        return
    typer.echo(format_summary(RunFolder(run_dir).read_summary()))
    typer.echo(f"run folder: {run_dir}")


@app.command()
def evaluate(
    run_dir: Path = typer.Argument(..., help="A run folder written by 'polytask train'"),
    split: str = typer.Option("dev", help="dev, test or train"),
    overrides: Optional[list[str]] = OVERRIDES,
    allow_code: bool = ALLOW_CODE,
    precision: str = PRECISION,
) -> None:
    """Evaluate a trained run on its configured dev or test data (e.g. data_dir=... to move it)."""
    from polytask.predict import evaluate_run

    result = _call(evaluate_run, run_dir, split, overrides or [], allow_code, precision)
    typer.echo(json.dumps(json_safe(result), indent=2, allow_nan=False))


def json_safe(value):
    """``value`` with every non-finite float (a metric undefined on its data) as ``null``: valid JSON."""
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


@app.command()
def predict(
    run_dir: Path = typer.Argument(..., help="A run folder written by 'polytask train'"),
    task: Optional[str] = typer.Option(None, help="Task to predict (default: every task)"),
    text: Optional[list[str]] = typer.Option(None, help="Input text (repeatable)"),
    input: Optional[Path] = typer.Option(None, "--input", help="JSONL or CSV/TSV file of inputs"),
    output: Optional[Path] = typer.Option(None, help="Write JSONL here instead of stdout"),
    on_invalid: str = typer.Option("error", "--on-invalid", help="error: any unreadable line or invalid value "
                                   "stops (every problem listed); skip: predict the other inputs and list the "
                                   "skipped ones on stderr"),
    scores: bool = typer.Option(False, "--scores", help="Add each label-set task's label probabilities (as the "
                                "server's scores)"),
    masks: Optional[Path] = typer.Option(None, "--masks", help="Write segmentation masks as PNG files of class "
                                         "indices here (<task>/<input number>.png; the JSON names each file)"),
    allow_code: bool = ALLOW_CODE,
    precision: str = PRECISION,
) -> None:
    """Predict with a trained run, for one task or all tasks, from --text or an --input file.

    One JSON line per input: the input and each task's prediction; a task an input lacks the
    fields of is listed under "skipped" (every task); --on-invalid skip leaves out bad inputs.
    """
    from polytask.predict import Predictor

    from polytask.data.records import Record

    try:
        if on_invalid not in ("error", "skip"):
            raise PolytaskError(f"--on-invalid {on_invalid!r}: use error or skip")
        records, unreadable = read_inputs(text, input)
        pred = Predictor.load(run_dir, allow_code=allow_code, precision=precision)
        names = [task] if task else list(pred.tasks)
        records, dropped = valid_inputs(pred, names, records, unreadable, task is not None, on_invalid == "skip")
        # every task: one encoder pass per input where the architecture allows, and only the
        # tasks whose fields an input has (the others are listed under "skipped")
        if scores:
            results = pred.predict_tasks(names, records, strict=task is not None, scores=True)
        else:
            results = {task: pred.predict(task, records)} if task else pred.predict_all(records)
    except USER_ERRORS as exc:
        _fail(exc)
    inputs = [r.fields if isinstance(r, Record) else r for r in records]
    if masks is not None:
        write_masks(results, masks)
    written = write_predictions(inputs, names, results, output)
    if dropped:
        from polytask.errors import group_problems

        typer.secho(f"skipped {len(dropped)} input(s) (--on-invalid skip):", fg=typer.colors.YELLOW, err=True)
        for line in group_problems(dropped):
            typer.secho(f"  - {line}", fg=typer.colors.YELLOW, err=True)
    if output:
        left_out = len({(p.file, p.line) for p in dropped})
        notes = [f"{len(inputs) - written} with no task's fields (their rows list why under 'skipped')"] * (
            written < len(inputs)) + [f"{left_out} invalid, left out (listed above)"] * bool(left_out)
        typer.echo(f"wrote {len(inputs)} rows to {output}: {written} of {len(inputs) + left_out} inputs predicted"
                   + "".join(f"; {n}" for n in notes))


def valid_inputs(pred, names: list[str], records: list, unreadable: list, strict: bool, skip: bool):
    """The inputs every problem of which (unreadable lines, invalid values) is reported at once;
    with ``skip`` the bad ones are dropped instead: ``(kept inputs, their problems)``."""
    from polytask.errors import DataError

    pred._check_tasks(names)
    problems = list(unreadable)
    try:
        pred.parse_inputs(names, records, strict=strict)
    except DataError as exc:
        problems += exc.problems
    if problems and not skip:
        raise DataError(problems, hint="(--on-invalid skip predicts the other inputs and lists the skipped ones)")
    bad = {(p.file, p.line) for p in problems}
    where = [(r.file, r.line) if hasattr(r, "line") else ("<input>", i + 1) for i, r in enumerate(records)]
    return [r for r, w in zip(records, where) if w not in bad], list(dict.fromkeys(problems))


def write_masks(results, folder: Path) -> None:
    """Each predicted mask (a prediction with a base64 ``png``: segmentation) as a file
    ``folder/<task>/<input number from 1>.png``; the prediction names it under ``file``."""
    import base64

    for name, preds in results.items():
        for i, p in enumerate(preds):
            if isinstance(p, dict) and isinstance(p.get("png"), str):
                path = folder / name / f"{i + 1}.png"
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_bytes(base64.b64decode(p["png"]))
                p["file"] = str(path)


def write_predictions(inputs: list, names: list[str], results, output: Path | None) -> int:
    """One JSON line per input (to ``output`` or stdout); returns how many have a prediction."""
    skipped = getattr(results, "skipped", {})
    predicted = 0
    out = open(output, "w") if output else sys.stdout
    for i, item in enumerate(inputs):
        row = {"input": item, **{name: results[name][i] for name in names if i not in skipped.get(name, {})}}
        missed = {name: s[i] for name, s in skipped.items() if i in s}
        probabilities = {name: s[i] for name, s in getattr(results, "scores", {}).items() if s[i] is not None}
        if probabilities:
            row["scores"] = probabilities
        if missed:
            row["skipped"] = missed
        predicted += len(row) > 1 + bool(missed) + bool(probabilities)
        out.write(json.dumps(row) + "\n")
    if output:
        out.close()
    return predicted


@app.command()
def serve(
    run_dir: Path = typer.Argument(..., help="A run folder written by 'polytask train'"),
    host: str = typer.Option("127.0.0.1", help="Interface to listen on (0.0.0.0: every interface)"),
    port: int = typer.Option(8000, help="TCP port"),
    max_batch_size: int = typer.Option(32, help="Inputs per model call at most (micro-batching)"),
    max_wait_ms: float = typer.Option(5.0, help="How long a request waits for others to batch with"),
    batching: bool = typer.Option(True, help="--no-batching: one request at a time"),
    max_inputs: int = typer.Option(64, help="Inputs per request at most"),
    max_chars: int = typer.Option(2000, help="Characters per input at most"),
    max_new_tokens: Optional[int] = typer.Option(None, help="Largest max_new_tokens a request may ask "
                                                 "(generation tasks; default: each task's configured value)"),
    max_body_bytes: int = typer.Option(2 * 1024 * 1024, help="Request body size at most (413 before parsing)"),
    header_timeout: float = typer.Option(10.0, help="Seconds for a request's headers to arrive (then cut)"),
    body_timeout: float = typer.Option(30.0, help="Seconds for a request's body to arrive (then 408)"),
    max_image_bytes: int = typer.Option(8 * 1024 * 1024, help="Image runs: encoded bytes per image at most (413)"),
    max_image_pixels: int = typer.Option(40_000_000, help="Image runs: width x height per image at most (413)"),
    log_level: str = typer.Option("info", help="uvicorn log level"),
    precision: str = PRECISION,
) -> None:
    """Serve a trained run over HTTP (FastAPI): /v1/predict, /v1/tasks, /health, /metrics, /docs.

    See docs/serving.md. SIGTERM or Ctrl-C finishes the requests in flight, then exits.
    """
    from polytask.serve import ServeSettings, serve as run_server

    settings = ServeSettings(max_batch_size=max_batch_size, max_wait_ms=max_wait_ms, batching=batching,
                             max_inputs=max_inputs, max_chars=max_chars, max_new_tokens=max_new_tokens,
                             max_body_bytes=max_body_bytes, header_timeout=header_timeout, body_timeout=body_timeout,
                             max_image_bytes=max_image_bytes, max_image_pixels=max_image_pixels)
    _call(run_server, run_dir, host, port, settings, log_level, 30.0, precision)


@app.command()
def check(
    config: Path = typer.Argument(..., help="YAML config file"),
    overrides: Optional[list[str]] = OVERRIDES,
) -> None:
    """Validate CONFIG and all of its data without training; report every problem at once."""
    from polytask.config import load_config
    from polytask.dataset import prepare
    from polytask.backbones import check_max_length, pretrained_config
    from polytask.train import build_components, check_architecture

    try:
        cfg = load_config(config, overrides or [])
        backbone_config = pretrained_config(cfg.model)
        check_max_length(cfg.model.max_length, backbone_config)
        data = prepare(cfg)
        build_components(cfg, list(data), [len(td.examples["train"]) for td in data.values()])
        check_architecture(cfg, backbone_config, list(data))
    except USER_ERRORS as exc:
        _fail(exc)
    from polytask.dataset import data_warnings, label_summary

    for line in data_warnings(data):
        typer.echo(f"warning: {line}")
    for name, td in data.items():
        counts = ", ".join(f"{s}={len(v)}" for s, v in td.examples.items())
        typer.echo(f"{name} ({td.task.type_name}): {counts}{label_summary(td)}; main metric {td.task.main_metric}")
    typer.echo("config and data OK")


def read_inputs(text: list[str] | None, path: Path | None) -> tuple[list, list]:
    """The inputs (texts, or the records of an input file with their file:line) and the file's
    unreadable lines (reported together with the inputs' own problems)."""
    if text:
        return list(text), []
    if path is None:
        raise PolytaskError("give --text or --input")
    from polytask.data.records import read_records

    return read_records(path)


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
    progress: Optional[bool] = typer.Option(None, "--progress/--no-progress", help="Show each sub-run's progress "
                                            "bar (default: when stderr is a terminal and one sub-run trains at a time)"),
    plan: bool = typer.Option(False, "--plan", help="Print the sub-runs and their budgets; train nothing"),
    report_only: bool = typer.Option(False, "--report-only", help="Rebuild the report from finished sub-runs"),
    seeds: Optional[int] = typer.Option(None, "--seeds", help="N consecutive seeds, from the first of "
                                        "compare.seeds (or the config's seed); replaces compare.seeds"),
    jobs: Optional[int] = typer.Option(None, "--jobs", help="Sub-runs trained at once: one GPU each when "
                                       "GPUs are visible (at most one per GPU), else one torch thread each (at most "
                                       "one per CPU core); compare.jobs"),
    executor: Optional[str] = typer.Option(None, "--executor", help="Where sub-runs train: local (processes here, "
                                           "default) or ray (one Ray task each; pip install 'polytask[ray]'); "
                                           "compare.executor"),
    ray_address: Optional[str] = typer.Option(None, "--ray-address", help="With --executor ray: the Ray cluster "
                                              "(e.g. ray://head:10001 or head:6379); default: a local Ray instance "
                                              "on this machine's cores; compare.ray_address"),
) -> None:
    """Did multi-task learning help? Train single-task baselines and the multi-task methods of
    CONFIG (finished sub-runs are reused), then write report.md and plots to the run folder."""
    import dataclasses

    from polytask import compare as cmp
    from polytask.config import CompareConfig, load_config

    try:
        cfg = load_config(config, overrides or [])
        if seeds is not None:
            cfg = cmp.with_seeds(cfg, seeds)
        if jobs is not None:
            if jobs < 1:
                raise PolytaskError(f"--jobs: must be positive, got {jobs}")
            cfg = dataclasses.replace(cfg, compare=dataclasses.replace(cfg.compare or CompareConfig(), jobs=jobs))
        if executor is not None or ray_address is not None:
            cfg = _with_executor(cfg, executor, ray_address)
        if plan:
            _print_compare_plan(cmp.plan_compare(cfg))
            return
        cmp.run_compare(cfg, progress=show_progress(progress), echo=typer.echo, train_missing=not report_only)
    except USER_ERRORS as exc:
        _fail(exc)


@app.command()
def affinity(
    config: Path = typer.Argument(..., help="YAML config file with two or more tasks"),
    overrides: Optional[list[str]] = OVERRIDES,
    steps: Optional[int] = typer.Option(None, "--steps",
                                        help="Training steps of the joint run (default: train.max_steps)"),
    every: int = typer.Option(10, "--every", help="A lookahead every K steps (cost: T backward + T*(T+1) forward "
                                                  "passes each)"),
    out: Optional[Path] = typer.Option(None, "--out", help="Run folder (default: output_dir/NAME-affinity, beside "
                                                           "the config's own run)"),
    lookahead_lr: Optional[float] = typer.Option(None, "--lookahead-lr",
                                                 help="Lookahead step size (default: train.lr)"),
    overwrite: bool = typer.Option(False, "--overwrite", help="Start over in a run folder that holds another run (clears its files)"),
    progress: Optional[bool] = PROGRESS,
) -> None:
    """Which tasks to train together? One short joint run with a TAG lookahead every K steps:
    prints the inter-task affinity and gradient-cosine matrices, the best grouping for 1..T-1
    groups, each task's best partner and the cost; writes affinity.json and heatmaps into the
    run folder and its report.html (docs/affinity.md)."""
    from polytask.affinity.run import default_out, estimate
    from polytask.affinity.show import render

    try:
        result = estimate(config, overrides or [], steps=steps, every=every, out=out, lookahead_lr=lookahead_lr,
                          progress=show_progress(progress), overwrite=overwrite)
    except USER_ERRORS as exc:
        _fail(exc)
    from polytask.config import load_config

    where = out if out is not None else default_out(load_config(config, overrides or []))
    typer.echo(render(result, f"{where}/affinity.json, affinity_tag.png, affinity_cosine.png, report.html"))


@app.command()
def adapt(
    run_dir: Path = typer.Argument(..., help="A finished multi-task run folder (architecture: hard)"),
    task: Path = typer.Option(..., "--task", help="NEW.yaml: one task (as an entry of tasks:), optional train: "
                                                  "and lora: sections (docs/transfer.md)"),
    overrides: Optional[list[str]] = OVERRIDES,
    shots: Optional[list[int]] = typer.Option(None, "--shots", help="K-shot learning curves instead of one run: "
                                              "--shots 16 --shots 64 ... (or --shots 16 64 256)"),
    seeds: int = typer.Option(3, "--seeds", help="Draws (and seeds) per K for the curves"),
    tune: str = typer.Option("head", "--tune", help="head: frozen encoder, new head; lora: a new LoRA adapter; "
                                                    "full: the whole encoder (the run then holds the new task only)"),
    out: Optional[Path] = typer.Option(None, "--out", help="Adapted run folder, or the curves' folder with --shots "
                                       "(default: RUN_DIR-adapt-NAME / RUN_DIR-curves-NAME)"),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace a run already in --out"),
    progress: Optional[bool] = PROGRESS,
    executor: str = typer.Option("local", "--executor", help="With --shots: local (this process) or ray (one Ray "
                                 "task per start point; pip install 'polytask[ray]')"),
    ray_address: Optional[str] = typer.Option(None, "--ray-address", help="With --executor ray: the Ray cluster "
                                              "(default: a local Ray instance)"),
) -> None:
    """Train a new task on a trained multi-task model's encoder and save it as a run that predict and
    serve load (old tasks unchanged with head/lora); with --shots, few-shot learning curves of the
    multi-task encoder vs the plain pretrained backbone (table + plot). See docs/transfer.md."""
    from polytask.adapt import adapt as run_adapt, learning_curves
    from polytask.adapt.curves import table
    from polytask.adapt.spec import read_task_file

    overrides = list(overrides or [])
    if shots:  # `--shots 16 64 256`: the values after the first arrive as positionals
        shots = list(shots) + [int(x) for x in overrides if x.isdigit()]
        overrides = [x for x in overrides if not x.isdigit()]
    try:
        name = str(read_task_file(task).get("name", "task"))
        if shots:
            where = out or Path(f"{str(run_dir).rstrip('/')}-curves-{name}")
            result = learning_curves(run_dir, task, shots, seeds, tune, where, overrides, show_progress(progress),
                                     executor, ray_address, typer.echo)
            typer.echo(table(result))
            typer.echo(f"curves: {where}/curves.md, curves.json, curves.png")
            return
        if executor != "local" or ray_address:
            raise PolytaskError("--executor and --ray-address apply to the curves (--shots): one adaptation is one run")
        where = out or Path(f"{str(run_dir).rstrip('/')}-adapt-{name}")
        path = run_adapt(run_dir, task, where, tune, overrides, overwrite, show_progress(progress))
    except USER_ERRORS as exc:
        _fail(exc)
    from polytask.run_folder import RunFolder

    typer.echo(format_summary(RunFolder(path).read_summary()))
    typer.echo(f"run folder: {path}")


def _with_executor(cfg, executor: str | None, address: str | None):
    """``cfg`` with ``--executor`` / ``--ray-address`` in its compare section."""
    import dataclasses

    from polytask.compare.executors import REGISTRY
    from polytask.config import CompareConfig

    cc = cfg.compare or CompareConfig()
    executor = executor or ("ray" if address else cc.executor)
    if executor not in REGISTRY:
        raise PolytaskError(f"--executor {executor!r}: the executors are: {', '.join(REGISTRY)}")
    if address and executor != "ray":
        raise PolytaskError("--ray-address needs --executor ray")
    return dataclasses.replace(cfg, compare=dataclasses.replace(cc, executor=executor,
                                                                ray_address=address or cc.ray_address))


def _print_compare_plan(p) -> None:
    from polytask.compare.plan import changed_keys

    for r in p.runs:
        exp = ", ".join(f"{t}={n:.0f}" for t, n in r.budget["expected_examples"].items())
        changed = changed_keys(r) if r.finished else []
        state = "finished" if r.finished else "to train"
        if changed:
            state = (f"finished with another config ({', '.join(changed[:4])}{' ...' if len(changed) > 4 else ''}): "
                     f"compare refuses it; delete {r.run_dir} to retrain it")
        point = f" {', '.join(f'{k}={v}' for k, v in r.point.items())}" if r.point else ""
        cap = "cap " if p.budget_rule == "converge" else ""
        typer.echo(f"{r.key:<32} {cap}{r.budget['max_steps']:>6} steps, eval every {r.budget['eval_every']:<5} "
                   f"examples: {exp}{point}  [{state}]")
    for note in p.notes:
        typer.echo(f"note: {note}")
    todo = sum(not r.finished for r in p.runs)
    typer.echo(f"{len(p.runs)} sub-runs ({todo} to train); budget: {p.budget_rule}; folder: {p.root}")


@app.command("export")
def export(
    run_dir: Path = typer.Argument(..., help="A finished run folder"),
    out: Path = typer.Option(..., "--out", help="Output folder (created)"),
    format: str = typer.Option("hf", "--format", help="hf: Hugging Face model folders (encoder + one per task); "
                                                      "onnx: encoder + all heads as one ONNX graph"),
    push_to_hub: Optional[str] = typer.Option(None, "--push-to-hub", help="Also upload the folder to this Hub repo"),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace a previous export in --out (a folder with other files is "
                                               "refused)"),
) -> None:
    """Write a run in a standard format (docs/export.md): the encoder and each task as Hugging Face
    model folders that AutoModel and transformers.pipeline load, with a model card (adapters and
    causal_lm runs: one PEFT adapter folder per task, with an LLM task's prompt); or (--format
    onnx) the encoder with every head as one ONNX graph, its tokenizer and labels."""
    from polytask.export import export_hf, export_onnx

    if format not in ("hf", "onnx"):
        _fail(PolytaskError(f"--format {format!r}: the formats are: hf, onnx"))
    if format == "onnx":
        if push_to_hub:
            _fail(PolytaskError("--push-to-hub works with --format hf only"))
        path = _call(export_onnx, run_dir, out, overwrite)
        typer.echo(f"wrote {path / 'model.onnx'} (tokenizer and labels: {path / 'polytask_onnx.json'})")
        return
    path = _call(export_hf, run_dir, out, push_to_hub, overwrite)
    typer.echo(f"wrote {path} (model card: {path / 'README.md'})")


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
