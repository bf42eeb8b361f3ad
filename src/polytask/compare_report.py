"""The report of ``polytask compare``: ``report.md`` plus PNG plots, from ``results.json``.

Everything here reads the JSON-ready dict built by :func:`polytask.compare.collect`; nothing
trains or measures. Plots (matplotlib, Agg backend):

* ``metrics.png``  per-task main metric of every model (test: bars, mean +- std over seeds;
  dev: dots);
* ``delta_m.png``  Delta-m per method on dev and test (mean +- std over seeds), with the
  "+1%" target line;
* ``curves.png``   dev main metric against the number of that task's training examples seen,
  per task, for the single-task model and every method (first seed).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from polytask import checkpoint as ckpt

SINGLE = "single"
TARGET_DELTA = 1.0  # percent: "multi-task helped" means Delta-m above this ...
WORST_TASK = -5.0  # ... with no task worse than this relative change (percent)


# ---------------------------------------------------------------------------------------------
# Formatting helpers


def _finite(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def fmt(ms: dict | None, digits: int = 4, pct: bool = False) -> str:
    """``mean ± std`` (just the mean with one seed); ``n/a`` when missing."""
    if not ms or not _finite(ms.get("mean")):
        return "n/a"
    sign = "+" if pct and ms["mean"] > 0 else ""
    text = f"{sign}{ms['mean']:.{digits}f}"
    if ms.get("n", 1) > 1 and _finite(ms.get("std")):
        text += f" ± {ms['std']:.{digits}f}"
    return text + ("%" if pct else "")


def _num(x: Any, digits: int = 0) -> str:
    if isinstance(x, dict):
        x = x.get("mean")
    if not _finite(x):
        return "n/a"
    if digits == 0 and abs(x) >= 1e5:
        return f"{x / 1e6:.2f}M"
    return f"{x:,.{digits}f}"


def _load(env: dict) -> str:
    la = env.get("load_average")
    return " / ".join(f"{x:.2f}" for x in la) if la else "n/a"


def _load_range(results: dict) -> str:
    lr = results.get("load_during_training")
    return f"{lr[0]:.2f} to {lr[1]:.2f}" if lr else "n/a"


def _columns(results: dict) -> list[str]:
    return [SINGLE] + list(results["methods"])


def _label(m: str) -> str:
    return "single-task" if m == SINGLE else m


def _metric_name(results: dict, task: str) -> str:
    arrow = "" if results["higher_is_better"][task] else " (lower is better)"
    return f"{results['metric'][task]}{arrow}"


def verdicts(results: dict) -> dict[str, dict[str, Any]]:
    """Per method: test Delta-m, the worst task's relative change, and whether the target is met."""
    out = {}
    for m in results["methods"]:
        d = results["delta_m"].get(m, {})
        test, dev = d.get("test", {}), d.get("dev", {})
        per_task = {t: v.get("mean") for t, v in test.get("per_task", {}).items()}
        finite = {t: v for t, v in per_task.items() if _finite(v)}
        worst = min(finite.items(), key=lambda kv: kv[1]) if finite else (None, math.nan)
        ok = (_finite(test.get("mean")) and test["mean"] > TARGET_DELTA
              and all(v >= WORST_TASK for v in finite.values()))
        out[m] = {"test": test.get("mean", math.nan), "dev": dev.get("mean", math.nan),
                  "worst_task": worst[0], "worst_change": worst[1], "meets_target": bool(ok),
                  "below": sorted(t for t, v in finite.items() if v < WORST_TASK)}
    return out


def best_on_dev(results: dict) -> str | None:
    """The method with the highest dev Delta-m (selection never looks at test)."""
    v = verdicts(results)
    cands = [(d["dev"], m) for m, d in v.items() if _finite(d["dev"])]
    return max(cands)[1] if cands else None


# ---------------------------------------------------------------------------------------------
# The console table


def format_table(results: dict) -> str:
    """Test main metric per task and model, macro average and Delta-m: what the CLI prints."""
    cols = _columns(results)
    head = ["task (metric)"] + [_label(c) for c in cols]
    rows = []
    for t in results["tasks"]:
        rows.append([f"{t} ({results['metric'][t]})"] + [fmt(results["table"][c]["test"].get(t)) for c in cols])
    rows.append(["macro"] + [fmt(results["table"][c]["test"].get("macro")) for c in cols])
    for split in ("test", "dev"):
        rows.append([f"Delta-m % ({split})", "0 (reference)"]
                    + [fmt(results["delta_m"].get(c, {}).get(split), 2, pct=True) for c in cols[1:]])
    eff = results.get("efficiency", {})
    rows.append(["train samples/s"] + [_num(eff.get(c, {}).get("samples_per_s"), 1) for c in cols])
    rows.append(["trainable params"] + [_num(eff.get(c, {}).get("trainable_params")) for c in cols])
    widths = [max(len(r[i]) for r in [head] + rows) for i in range(len(head))]
    line = lambda r: "  ".join(c.ljust(w) for c, w in zip(r, widths))  # noqa: E731
    out = [f"compare '{results['name']}' (test, main metric; mean ± std over {len(results['seeds'])} seed(s); "
           f"budget: {results['budget_rule']})", line(head), line(["-" * w for w in widths])]
    out += [line(r) for r in rows]
    best = best_on_dev(results)
    if best:
        v = verdicts(results)[best]
        out.append(f"best method on dev: {best} (test Delta-m {v['test']:+.2f}%, "
                   f"worst task {v['worst_task']} {v['worst_change']:+.1f}%; "
                   f"target Delta-m > +{TARGET_DELTA:g}% with no task below {WORST_TASK:g}%: "
                   f"{'met' if v['meets_target'] else 'not met'})")
    if results.get("missing"):
        out.append(f"unfinished sub-runs (not in the table): {', '.join(results['missing'])}")
    return "\n".join(out)


# ---------------------------------------------------------------------------------------------
# Markdown


def _md_table(head: list[str], rows: list[list[str]]) -> list[str]:
    out = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    out += ["| " + " | ".join(r) + " |" for r in rows]
    return out


def render_markdown(results: dict, plots: dict[str, str]) -> str:
    env = results.get("environment", {})
    cols = _columns(results)
    tasks = results["tasks"]
    base = results["base"]
    n_seeds = len(results["seeds"])
    L: list[str] = [f"# Did multi-task learning help? `{results['name']}`", ""]
    commit = env.get("commit") or "unknown"
    if env.get("dirty"):
        commit += " (with uncommitted changes)"
    machine = f"{env.get('processor', '?')}, {env.get('cpu_count', '?')} CPUs"
    if env.get("cuda"):
        machine += f", GPU {env['cuda']}"
    L += [f"- generated: {results['generated']}",
          f"- machine: {machine}; torch {env.get('torch', '?')} with {env.get('torch_threads', '?')} threads, "
          f"transformers {env.get('transformers', '?')}, Python {env.get('python', '?')}",
          f"- commit: {commit}",
          f"- machine load (1-min load average) at the start and end of the training runs: {_load_range(results)}; "
          f"when this report was written (1/5/15 min): {_load(env)}. Other work on the machine slows every "
          "timing below.",
          f"- backbone: `{base['backbone']}` (max length {base['max_length']}); seeds: {results['seeds']}", ""]

    # --- verdict ---
    L += ["## Verdict", ""]
    v = verdicts(results)
    best = best_on_dev(results)
    for m in results["methods"]:
        d = v[m]
        status = "meets" if d["meets_target"] else "does not meet"
        worst = (f"worst task {d['worst_task']} {d['worst_change']:+.1f}%" if d["worst_task"] else "worst task n/a")
        below = f"; below {WORST_TASK:g}%: {', '.join(d['below'])}" if d["below"] else ""
        L.append(f"- **{m}**: test Delta-m {fmt(results['delta_m'].get(m, {}).get('test'), 2, pct=True)} "
                 f"(dev {fmt(results['delta_m'].get(m, {}).get('dev'), 2, pct=True)}); {worst}{below}; "
                 f"{status} the target (Delta-m > +{TARGET_DELTA:g}%, no task below {WORST_TASK:g}%).")
    if best:
        L.append(f"- Chosen on dev Delta-m: **{best}** (its test Delta-m: {v[best]['test']:+.2f}%).")
    L += ["", "Delta-m (Maninis et al., 2019) is the mean over tasks of the signed relative change of the "
          "main metric against the single-task model of the same seed, in percent (sign flipped for "
          "lower-is-better metrics); mean ± std over seeds. Positive means multi-task learning helped.", ""]
    excluded = sorted({t for m in results["methods"] for s in ("dev", "test")
                       for t in results["delta_m"].get(m, {}).get(s, {}).get("excluded_tasks", [])})
    if excluded:
        L += [f"Left out of Delta-m: {', '.join(excluded)} (a single-task metric of exactly 0, e.g. a "
              "collapsed classifier's Matthews correlation, makes the relative change undefined); "
              "their absolute numbers are in the tables.", ""]
    if results.get("missing"):
        L += [f"**Unfinished sub-runs, not included:** {', '.join(results['missing'])}", ""]

    # --- results ---
    for split in ("test", "dev"):
        title = "Test" if split == "test" else "Dev"
        L += [f"## {title} results (main metric, mean ± std over {n_seeds} seed(s))", ""]
        head = ["task", "metric"] + [_label(c) for c in cols]
        rows = [[t, _metric_name(results, t)] + [fmt(results["table"][c][split].get(t)) for c in cols] for t in tasks]
        rows.append(["**macro**", "mean"] + [fmt(results["table"][c][split].get("macro")) for c in cols])
        rows.append(["**Delta-m**", "%", "0 (reference)"]
                    + [fmt(results["delta_m"].get(c, {}).get(split), 2, pct=True) for c in cols[1:]])
        L += _md_table(head, rows) + [""]
        if split == "test":
            L += ["Test is evaluated once per model, at the end, with the checkpoint chosen on dev.", ""]
    L += ["## Relative change per task (test, % vs single-task)", ""]
    head = ["task"] + results["methods"]
    rows = [[t] + [fmt(results["delta_m"].get(m, {}).get("test", {}).get("per_task", {}).get(t), 1, pct=True)
                   for m in results["methods"]] for t in tasks]
    L += _md_table(head, rows) + [""]

    # --- cost ---
    eff = results.get("efficiency", {})
    L += ["## Training cost", "",
          f"Single-task: the sum over the {len(tasks)} models (peak memory: the largest). "
          "Mean over seeds.", ""]
    head = ["model", "trainable params", "steps", "training loop (s)", "wall time (s)", "train samples/s",
            "train tokens/s", "peak memory (MB)"]
    rows = []
    for c in cols:
        e = eff.get(c)
        if not e:
            continue
        label = f"single-task ({len(tasks)} models)" if c == SINGLE else c
        rows.append([label, _num(e["trainable_params"]), _num(e["steps"]), _num(e["train_seconds"], 1),
                     _num(e["wall_seconds"], 1), _num(e["samples_per_s"], 1), _num(e["tokens_per_s"], 0),
                     _num(e["peak_rss_mb"], 0)])
    L += _md_table(head, rows) + [""]
    if results.get("resumed"):
        L += [f"Resumed after an interruption (so their wall time and peak memory, which cover only the last part, are not reported; the training loop time is "
              f"the trainer's own clock, kept across the interruption): {', '.join(results['resumed'])}.", ""]
    if eff:
        how = next(iter(eff.values()))["throughput_method"]
        L += [f"Training throughput: examples (and real, unpadded tokens) trained on per second, measured on "
              f"{how}; the counts are replayed exactly from each run's seeded sampler and batch streams. "
              "Training loop: the trainer's own clock (includes periodic dev evaluation); wall time: the "
              "whole sub-run (data loading, tokenization, model loading, final dev/test evaluation).", ""]

    inf = results.get("inference", {})
    if inf:
        L += ["## Serving cost: predicting every task", ""]
        head = ["served as", "models", "parameters served", "weights (MB)", "load (s)",
                "predict all tasks (s)", "examples/s"]
        rows = []
        for c in cols:
            i = inf.get(c)
            if not i:
                continue
            label = f"single-task ({i['models']} models)" if c == SINGLE else f"{c} (one model)"
            rows.append([label, str(i["models"]), _num(i["params_served"]), _num(i["weight_bytes"] / 2**20, 1),
                         _num(i["load_seconds"], 2), _num(i["predict_seconds"], 2), _num(i["examples_per_s"], 1)])
        L += _md_table(head, rows) + [""]
        any_i = next(iter(inf.values()))
        L += [f"Measured, not estimated: the first {any_i['examples_per_task']} dev examples of every task "
              f"({any_i['examples']} in all), seed {any_i['seed']}, every model of a set loaded at once, "
              f"{any_i['torch_threads']} torch threads, after one warm-up batch. Each task's inputs go through "
              "one encoder pass either way, so compute is about equal; the multi-task model serves "
              f"1/{len(tasks)} of the parameters.", ""]

    # --- budget ---
    L += ["## Budget", ""]
    if results["budget_rule"] == "examples":
        L.append("Rule: **same number of training examples per task.** The base multi-task config "
                 f"({base['max_steps']} steps of {base['batch_size'] * base['grad_accum']} examples, sampling "
                 f"`{base['sampling']['name']}`, weighting `{base['weighting']['name']}`) fixes how many examples "
                 "of each task are seen; each single-task model gets that many (steps = examples / batch size). "
                 "Methods that draw every task in every step get proportionally fewer steps, so every model "
                 "trains on the same total number of examples; a method's own sampling may redistribute them "
                 "between tasks (see the examples-seen table).")
    else:
        L.append(f"Rule: **same number of steps.** Every model, single- or multi-task, runs {base['max_steps']} "
                 f"steps of {base['batch_size'] * base['grad_accum']} examples: the {len(tasks)} single-task "
                 "models together train on about "
                 f"{len(tasks)}x the examples of one multi-task model (a method that draws every task in every "
                 "step sees one batch per task per step; see the examples-seen table).")
    L += ["", f"Same early-stopping rule for every model: {base['evaluations']} dev evaluations over a run "
          f"(eval_every scaled with the run's steps), early stopping after "
          f"{base['early_stopping'] if base['early_stopping'] else 'never (off)'}"
          f"{' evaluations without improvement' if base['early_stopping'] else ''}; the checkpoint is chosen on "
          "dev (macro average of the run's tasks), test is touched once at the end.", ""]
    for note in results.get("notes", []):
        L.append(f"- {note}")
    if results.get("notes"):
        L.append("")
    L += ["Examples seen per task in training (replayed from the seeded sampler and batch streams, steps actually "
          "run, so early stopping counts; mean over seeds):", ""]
    head = ["task", "train size"] + [_label(c) for c in cols]
    rows = [[t, str(results["train_sizes"].get(t, "?"))]
            + [_num(eff.get(c, {}).get("examples_seen", {}).get(t)) for c in cols] for t in tasks]
    L += _md_table(head, rows) + [""]
    L += ["Planned runs (first seed):", ""]
    head = ["run", "steps", "eval every", "evaluations", "expected examples (per task)"]
    rows = []
    for key, b in results.get("budgets", {}).items():
        exp = ", ".join(f"{t} {n:,.0f}" for t, n in b["expected_examples"].items())
        rows.append([key, str(b["max_steps"]), str(b["eval_every"]), str(b["evaluations"]), exp])
    L += _md_table(head, rows) + [""]
    L += ["Methods:", ""]
    for m, desc in results.get("method_settings", {}).items():
        L.append(f"- **{m}**: {desc}")
    L += ["- **single-task**: one model per task; hard sharing with one head, unweighted loss "
          "(plain fine-tuning), otherwise the base config.", ""]

    # --- plots ---
    if plots:
        L += ["## Plots", ""]
        captions = {"metrics": "Main metric per task (bars: test, mean ± std over seeds; dots: dev)",
                    "delta_m": "Delta-m per method (dev and test)",
                    "curves": "Dev main metric against the examples of that task seen in training (first seed)"}
        for key, name in plots.items():
            L += [f"**{captions.get(key, key)}**", "", f"![{key}]({name})", ""]
    L += ["Per-run training plots: `single/<task>/seed<S>/training.png` and `mtl/<method>/seed<S>/training.png`; "
          "all numbers: `results.json`.", ""]
    return "\n".join(L)


# ---------------------------------------------------------------------------------------------
# Plots


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _err(ms: dict):
    """Error bar: the std over seeds, none with a single seed."""
    return ms["std"] if ms.get("n", 1) > 1 and _finite(ms.get("std")) else None


def _save(fig, path: Path) -> None:
    tmp = path.with_suffix(".tmp.png")
    fig.savefig(tmp, dpi=90)
    tmp.replace(path)


def _task_grid(plt, n: int):
    """A figure with one panel per task, 3 to a row; returns it and the panels as a flat list."""
    ncols = min(3, n)
    nrows = math.ceil(n / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(4.2 * ncols, 3.2 * nrows), squeeze=False)
    panels = [ax for row in axes for ax in row]
    for ax in panels[n:]:
        ax.axis("off")
    return fig, panels


def _finish(plt, fig, path: Path) -> Path:
    fig.tight_layout()
    _save(fig, path)
    plt.close(fig)
    return path


def plot_metrics(results: dict, path: Path) -> Path:
    plt = _plt()
    tasks, cols = results["tasks"], _columns(results)
    fig, axes = _task_grid(plt, len(tasks))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for k, t in enumerate(tasks):
        ax = axes[k]
        for j, c in enumerate(cols):
            test = results["table"][c]["test"].get(t, {})
            dev = results["table"][c]["dev"].get(t, {})
            if _finite(test.get("mean")):
                ax.bar(j, test["mean"], yerr=_err(test), capsize=3, color=colors[j % len(colors)],
                       label="test" if j == 0 else None)
            if _finite(dev.get("mean")):
                ax.errorbar(j, dev["mean"], yerr=_err(dev), fmt="o", color="black", ms=4,
                            label="dev" if j == 0 else None)
        ax.set_xticks(range(len(cols)))
        ax.set_xticklabels([_label(c) for c in cols], rotation=30, ha="right", fontsize=8)
        ax.set_title(f"{t} ({results['metric'][t]})", fontsize=10)
        if k == 0:
            ax.legend(fontsize=7)
    return _finish(plt, fig, path)


def plot_delta_m(results: dict, path: Path) -> Path:
    plt = _plt()
    methods = results["methods"]
    fig, ax = plt.subplots(figsize=(max(4.5, 1.4 * len(methods) + 2), 3.4))
    width = 0.38
    for k, (split, color) in enumerate((("dev", "#9ecae1"), ("test", "#3182bd"))):
        xs, ys, es = [], [], []
        for j, m in enumerate(methods):
            d = results["delta_m"].get(m, {}).get(split, {})
            if _finite(d.get("mean")):
                xs.append(j + (k - 0.5) * width)
                ys.append(d["mean"])
                es.append(_err(d) or 0.0)
        ax.bar(xs, ys, width, yerr=es, capsize=3, color=color, label=split)
    ax.axhline(0, color="black", lw=0.8)
    ax.axhline(TARGET_DELTA, color="green", lw=0.8, ls="--", label=f"target +{TARGET_DELTA:g}%")
    ax.set_xticks(range(len(methods)))
    ax.set_xticklabels(methods, rotation=20, ha="right", fontsize=8)
    ax.set_ylabel("Delta-m (%)")
    ax.set_title("Multi-task vs single-task (Delta-m, mean ± std over seeds)", fontsize=10)
    ax.legend(fontsize=7)
    return _finish(plt, fig, path)


def plot_curves(results: dict, path: Path) -> Path:
    plt = _plt()
    tasks, cols = results["tasks"], _columns(results)
    fig, axes = _task_grid(plt, len(tasks))
    for k, t in enumerate(tasks):
        ax = axes[k]
        for c in cols:
            pts = [(p["examples"], p["value"]) for p in results.get("curves", {}).get(c, {}).get(t, [])
                   if _finite(p.get("value"))]
            if pts:
                style = {"color": "black", "ls": "--"} if c == SINGLE else {}
                ax.plot(*zip(*pts), marker=".", label=_label(c), **style)
        ax.set_title(f"{t}: dev {results['metric'][t]}", fontsize=10)
        ax.set_xlabel(f"{t} training examples seen", fontsize=8)
        if k == 0:
            ax.legend(fontsize=7)
    return _finish(plt, fig, path)


def write_report(results: dict, root: Path) -> Path:
    """Write ``report.md`` and its PNG plots into ``root``; returns the report's path."""
    root = Path(root)
    plots = {}
    for key, fn in (("metrics", plot_metrics), ("delta_m", plot_delta_m), ("curves", plot_curves)):
        plots[key] = fn(results, root / f"{key}.png").name
    path = root / "report.md"
    ckpt.atomic_write(path, render_markdown(results, plots).encode())
    return path
