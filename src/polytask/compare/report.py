"""The report of ``polytask compare``: the console table, ``report.md`` and its plots.

Everything here reads the JSON-ready dict built by :func:`polytask.compare.results.collect`
(also saved as ``results.json``); nothing trains or measures. :func:`verdicts` applies the
target "Delta-m > +1% with no task below -5%"; :func:`format_table` is what the CLI prints;
:func:`polytask.compare.plots.write_report` writes ``report.md`` (rendered here) and the plots.
"""

from __future__ import annotations

import math
from typing import Any

from polytask.compare import report_checks as rc
from polytask.compare.markdown import finite, fmt, md_table as _md_table
from polytask.compare.plan import SINGLE

TARGET_DELTA = 1.0  # percent: "multi-task helped" means Delta-m above this ...
WORST_TASK = -5.0  # ... with no task worse than this relative change (percent)
REPORT = "report.md"


# ---------------------------------------------------------------------------------------------
# Formatting helpers


def _num(x: Any, digits: int = 0) -> str:
    if isinstance(x, dict):
        x = x.get("mean")
    if not finite(x):
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


def columns(results: dict) -> list[str]:
    return [SINGLE] + list(results["methods"])


def label(m: str) -> str:
    return "single-task" if m == SINGLE else m


def _metric_name(results: dict, task: str) -> str:
    arrow = "" if results["higher_is_better"][task] else " (lower is better)"
    return f"{results['metric'][task]}{arrow}"


def _delta(results: dict, method: str, split: str) -> str:
    return fmt(results["delta_m"].get(method, {}).get(split), 2, pct=True)


def verdicts(results: dict) -> dict[str, dict[str, Any]]:
    """Per method: test Delta-m, the worst task's relative change, and whether the target is met."""
    out = {}
    for m in results["methods"]:
        d = results["delta_m"].get(m, {})
        test, dev = d.get("test", {}), d.get("dev", {})
        per_task = {t: v.get("mean") for t, v in test.get("per_task", {}).items()}
        ok_values = {t: v for t, v in per_task.items() if finite(v)}
        worst = min(ok_values.items(), key=lambda kv: kv[1]) if ok_values else (None, math.nan)
        ok = (finite(test.get("mean")) and test["mean"] > TARGET_DELTA
              and all(v >= WORST_TASK for v in ok_values.values()))
        out[m] = {"test": test.get("mean", math.nan), "dev": dev.get("mean", math.nan),
                  "worst_task": worst[0], "worst_change": worst[1], "meets_target": bool(ok),
                  "below": sorted(t for t, v in ok_values.items() if v < WORST_TASK)}
    return out


def best_on_dev(results: dict) -> str | None:
    """The method with the highest dev Delta-m (selection never looks at test)."""
    v = verdicts(results)
    cands = [(d["dev"], m) for m, d in v.items() if finite(d["dev"])]
    return max(cands)[1] if cands else None


# ---------------------------------------------------------------------------------------------
# The console table


def format_table(results: dict) -> str:
    """Test main metric per task and model, macro average and Delta-m: what the CLI prints."""
    cols = columns(results)
    head = ["task (metric)"] + [label(c) for c in cols]
    rows = [[f"{t} ({results['metric'][t]})"] + [fmt(results["table"][c]["test"].get(t)) for c in cols]
            for t in results["tasks"]]
    rows.append(["macro"] + [fmt(results["table"][c]["test"].get("macro")) for c in cols])
    flagged = any(d.get("test", {}).get("near_chance") for d in results["delta_m"].values())
    for split in ("test", "dev"):
        rows.append([f"Delta-m % ({split}{', all tasks' if flagged else ''})", "0 (reference)"]
                    + [_delta(results, c, split) for c in cols[1:]])
    if flagged:
        rows.append(["Delta-m % (test, w/o near-chance)", "0 (reference)"] + [
            fmt(results["delta_m"].get(c, {}).get("test", {}).get("without_near_chance"), 2, pct=True)
            for c in cols[1:]])
    eff = results.get("efficiency", {})
    rows.append(["train samples/s"] + [_num(eff.get(c, {}).get("samples_per_s"), 1) for c in cols])
    rows.append(["trainable params"] + [_num(eff.get(c, {}).get("trainable_params")) for c in cols])
    widths = [max(len(r[i]) for r in [head] + rows) for i in range(len(head))]
    line = lambda r: "  ".join(c.ljust(w) for c, w in zip(r, widths))  # noqa: E731
    out = [f"compare '{results['name']}' (test, main metric; mean ± std over {len(results['seeds'])} seed(s); "
           f"budget: {results['budget_rule']})", *_verdict_lines(results), line(head), line(["-" * w for w in widths])]
    out += [line(r) for r in rows]
    best = best_on_dev(results)
    if best:
        v = verdicts(results)[best]
        out.append(f"best method on dev: {best} (test Delta-m of all tasks {v['test']:+.2f}%, "
                   f"worst task {v['worst_task']} {v['worst_change']:+.1f}%; "
                   f"target Delta-m > +{TARGET_DELTA:g}% with no task below {WORST_TASK:g}%: "
                   f"{'met' if v['meets_target'] else 'not met'})")
    if results.get("missing"):
        out.append(f"unfinished sub-runs (not in the table): {', '.join(results['missing'])}")
    return "\n".join(out)


def _verdict_lines(results: dict) -> list[str]:
    """What the CLI leads with: each method's verdict and the interval it reads (Delta-m, or
    Delta-m without near-chance tasks, or the chance-corrected gain), and "provisional" when
    models were still improving at their step cap."""
    out = []
    reads = {"Delta-m": "delta_m", "Delta-m without near-chance tasks": "delta_m_without_near_chance"}
    for m, iv in (results.get("intervals") or {}).items():
        if not iv or not iv.get("delta_m"):
            continue
        source = iv.get("verdict_from", "Delta-m")
        interval = iv.get(reads.get(source, "gain")) or iv["delta_m"]
        unit = "%" if source in reads else ""
        left_out = f"; near-chance tasks left out: {', '.join(iv['near_chance'])}" if iv.get("near_chance") else ""
        out.append(f"verdict {m}: {iv['verdict']} (from the {100 * iv['level']:.0f}% interval of {source}: "
                   f"[{interval[0]:+.2f}, {interval[1]:+.2f}]{unit}{left_out})")
    improving = [r["run"] for r in results.get("convergence") or [] if r.get("still_improving")]
    if improving:
        out.append(f"provisional: {len(improving)} of {len(results['convergence'])} models were still improving at "
                   "their step cap; their scores are lower bounds (report.md: \"Did each model converge?\")")
    return out


# ---------------------------------------------------------------------------------------------
# Markdown: one function per section


def _md_header(results: dict) -> list[str]:
    env = results.get("environment", {})
    commit = env.get("commit") or "unknown"
    if env.get("dirty"):
        commit += " (with uncommitted changes)"
    machine = f"{env.get('processor', '?')}, {env.get('cpu_count', '?')} CPUs"
    if env.get("cuda"):
        machine += f", GPU {env['cuda']}"
    base = results["base"]
    return [f"# Did multi-task learning help? `{results['name']}`", "",
            f"- generated: {results['generated']}",
            f"- machine: {machine}; torch {env.get('torch', '?')} with {env.get('torch_threads', '?')} threads, "
            f"transformers {env.get('transformers', '?')}, Python {env.get('python', '?')}",
            f"- commit: {commit}",
            f"- machine load (1-min load average) at the start and end of the training runs: "
            f"{_load_range(results)}; when this report was written (1/5/15 min): {_load(env)}. Other work on "
            "the machine slows every timing below.",
            f"- backbone: `{base['backbone']}` ({base.get('input') or 'max length %s' % base['max_length']}); "
            f"seeds: {results['seeds']}", ""]


def _md_verdict(results: dict) -> list[str]:
    L = ["## Verdict", ""]
    v = verdicts(results)
    for m in results["methods"]:
        d = v[m]
        status = "meets" if d["meets_target"] else "does not meet"
        worst = f"worst task {d['worst_task']} {d['worst_change']:+.1f}%" if d["worst_task"] else "worst task n/a"
        below = f"; below {WORST_TASK:g}%: {', '.join(d['below'])}" if d["below"] else ""
        iv = (results.get("intervals") or {}).get(m)
        sure = (f" **{iv['verdict']}** by the {100 * iv['level']:.0f}% interval of {iv.get('verdict_from', 'Delta-m')};"
                if iv else "")
        L.append(f"- **{m}**:{sure} test Delta-m {_delta(results, m, 'test')} (dev {_delta(results, m, 'dev')}); "
                 f"{worst}{below}; {status} the target (Delta-m > +{TARGET_DELTA:g}%, no task below "
                 f"{WORST_TASK:g}%).")
    best = best_on_dev(results)
    if best:
        L.append(f"- Chosen on dev Delta-m: **{best}** (its test Delta-m: {v[best]['test']:+.2f}%).")
    improving = [r["run"] for r in results.get("convergence") or [] if r.get("still_improving")]
    if improving:
        L.append(f"- **Provisional:** {len(improving)} of {len(results['convergence'])} models were still improving "
                 "at their step cap (see \"Did each model converge?\"); their scores are lower bounds.")
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
    return L


def _md_results(results: dict) -> list[str]:
    cols, tasks = columns(results), results["tasks"]
    L: list[str] = []
    for split in ("test", "dev"):
        title = "Test" if split == "test" else "Dev"
        L += [f"## {title} results (main metric, mean ± std over {len(results['seeds'])} seed(s))", ""]
        head = ["task", "metric"] + [label(c) for c in cols]
        rows = [[t, _metric_name(results, t)] + [fmt(results["table"][c][split].get(t)) for c in cols] for t in tasks]
        rows.append(["**macro**", "mean"] + [fmt(results["table"][c][split].get("macro")) for c in cols])
        rows.append(["**Delta-m**", "%", "0 (reference)"] + [_delta(results, c, split) for c in cols[1:]])
        L += _md_table(head, rows)
        if split == "test":
            L += ["Test is evaluated once per model, at the end, with the checkpoint chosen on dev.", ""]
    L += ["## Relative change per task (test, % vs single-task)", ""]
    rows = [[t] + [fmt(results["delta_m"].get(m, {}).get("test", {}).get("per_task", {}).get(t), 1, pct=True)
                   for m in results["methods"]] for t in tasks]
    return L + _md_table(["task"] + results["methods"], rows)


def _md_training_cost(results: dict) -> list[str]:
    eff, tasks = results.get("efficiency", {}), results["tasks"]
    L = ["## Training cost", "",
         f"Single-task: the sum over the {len(tasks)} models (peak memory: the largest). Mean over seeds.", ""]
    tokens = results["base"].get("tokens", True)  # images: every input is one "token"; left out
    head = ["model", "trainable params", "steps", "training loop (s)", "wall time (s)", "train samples/s",
            "train tokens/s", "peak memory (MB)"]
    rows = []
    for c in columns(results):
        e = eff.get(c)
        if e:
            rows.append([f"single-task ({len(tasks)} models)" if c == SINGLE else c, _num(e["trainable_params"]),
                         _num(e["steps"]), _num(e["train_seconds"], 1), _num(e["wall_seconds"], 1),
                         _num(e["samples_per_s"], 1), _num(e["tokens_per_s"], 0), _num(e["peak_rss_mb"], 0)])
    if not tokens:
        drop = head.index("train tokens/s")
        head, rows = [h for k, h in enumerate(head) if k != drop], [[v for k, v in enumerate(r) if k != drop] for r in rows]
    L += _md_table(head, rows)
    if results.get("resumed"):
        L += ["Resumed after an interruption (so their wall time and peak memory, which cover only the last "
              "part, are not reported; the training loop time is the trainer's own clock, kept across the "
              f"interruption): {', '.join(results['resumed'])}.", ""]
    if eff:
        how = next(iter(eff.values()))["throughput_method"]
        L += [f"Training throughput: examples{' (and real, unpadded tokens)' if tokens else ''} trained on per "
              f"second, measured on "
              f"{how}; the counts are replayed exactly from each run's seeded sampler and batch streams. "
              "Training loop: the trainer's own clock (includes periodic dev evaluation); wall time: the "
              "whole sub-run (data loading, tokenization, model loading, final dev/test evaluation).", ""]
    return L


def _md_serving_cost(results: dict) -> list[str]:
    inf = results.get("inference", {})
    if not inf:
        return []
    head = ["served as", "models", "parameters served", "weights (MB)", "load (s)",
            "predict all tasks (s)", "examples/s"]
    rows = []
    for c in columns(results):
        i = inf.get(c)
        if i:
            rows.append([f"single-task ({i['models']} models)" if c == SINGLE else f"{c} (one model)",
                         str(i["models"]), _num(i["params_served"]), _num(i["weight_bytes"] / 2**20, 1),
                         _num(i["load_seconds"], 2), _num(i["predict_seconds"], 2), _num(i["examples_per_s"], 1)])
    any_i = next(iter(inf.values()))
    return (["## Serving cost: predicting every task", ""] + _md_table(head, rows)
            + [f"Measured, not estimated: the first {any_i['examples_per_task']} dev examples of every task "
               f"({any_i['examples']} in all), seed {any_i['seed']}, every model of a set loaded at once, "
               f"{any_i['torch_threads']} torch threads, after one warm-up batch. Each task's inputs go through "
               "one encoder pass either way, so compute is about equal; the multi-task model serves "
               f"1/{len(results['tasks'])} of the parameters.", ""])


def _md_budget_rule(results: dict) -> list[str]:
    base, n = results["base"], len(results["tasks"])
    per_step = base["batch_size"] * base["grad_accum"]
    if results["budget_rule"] == "converge":
        rule = ("Rule: **converged models** (the default). Every model, single- and multi-task, trains until its dev "
                f"score has not improved for {base.get('patience') or base['early_stopping']} evaluations, up to a "
                f"step cap of {base.get('cap_factor', '?')}x its equal-examples budget (below); dev evaluations come "
                "as often as under that budget. The base multi-task config "
                f"({base['max_steps']} steps of {per_step} examples, sampling `{base['sampling']['name']}`) sets the "
                "equal-examples budget: each single-task model's share of its task's examples, a method's steps "
                "scaled to the same total. See \"Did each model converge?\" for how each one ended.")
    elif results["budget_rule"] == "examples":
        rule = ("Rule: **same number of training examples per task.** The base multi-task config "
                f"({base['max_steps']} steps of {per_step} examples, sampling `{base['sampling']['name']}`, "
                f"weighting `{base['weighting']['name']}`) fixes how many examples of each task are seen; each "
                "single-task model gets that many (steps = examples / batch size). Methods that draw every task "
                "in every step get proportionally fewer steps, so every model trains on the same total number "
                "of examples; a method's own sampling may redistribute them between tasks (see the "
                "examples-seen table).")
    else:
        rule = (f"Rule: **same number of steps.** Every model, single- or multi-task, runs {base['max_steps']} "
                f"steps of {per_step} examples: the {n} single-task models together train on about {n}x the "
                "examples of one multi-task model (a method that draws every task in every step sees one batch "
                "per task per step; see the examples-seen table).")
    converge = results["budget_rule"] == "converge"
    stop = base.get("patience") if converge else base["early_stopping"]
    within = f" within the equal-examples budget (up to {base.get('cap_factor')}x as many before the cap)" if converge else ""
    return ["## Budget", "", rule, "",
            f"Same early-stopping rule for every model: {base['evaluations']} dev evaluations{within} "
            f"(eval_every scaled with the run's steps), early stopping after "
            f"{stop if stop else 'never (off)'}{' evaluations without improvement' if stop else ''}; the checkpoint "
            "is chosen on dev (macro average of the run's tasks), test is touched once at the end.", ""]


def _md_budget_tables(results: dict) -> list[str]:
    L = [f"- {note}" for note in results.get("notes", [])] + ([""] if results.get("notes") else [])
    L += ["Examples seen per task in training (replayed from the seeded sampler and batch streams, steps "
          "actually run, so early stopping counts; mean over seeds):", ""]
    cols, eff = columns(results), results.get("efficiency", {})
    rows = [[t, str(results["train_sizes"].get(t, "?"))]
            + [_num(eff.get(c, {}).get("examples_seen", {}).get(t)) for c in cols] for t in results["tasks"]]
    L += _md_table(["task", "train size"] + [label(c) for c in cols], rows)
    L += ["Planned runs (first seed):", ""]
    rows = [[key, str(b["max_steps"]), str(b["eval_every"]), str(b["evaluations"]),
             ", ".join(f"{t} {n:,.0f}" for t, n in b["expected_examples"].items())]
            for key, b in results.get("budgets", {}).items()]
    L += _md_table(["run", "steps", "eval every", "evaluations", "expected examples (per task)"], rows)
    L += ["Methods:", ""] + [f"- **{m}**: {desc}" for m, desc in results.get("method_settings", {}).items()]
    return L + ["- **single-task**: one model per task; hard sharing with one head, unweighted loss "
                "(plain fine-tuning), otherwise the base config.", ""]


def _md_plots(plots: dict[str, str]) -> list[str]:
    L: list[str] = []
    if plots:
        L += ["## Plots", ""]
        captions = {"metrics": "Main metric per task (bars: test, mean ± std over seeds; dots: dev)",
                    "delta_m": "Delta-m per method (dev and test)",
                    "curves": "Dev main metric against the examples of that task seen in training (first seed)"}
        for key, name in plots.items():
            L += [f"**{captions.get(key, key)}**", "", f"![{key}]({name})", ""]
    return L + ["Per-run training plots: `single/<task>/seed<S>/training.png` and "
                "`mtl/<method>/seed<S>/training.png`; all numbers: `results.json`.", ""]


def render_markdown(results: dict, plots: dict[str, str]) -> str:
    sections = (_md_header(results), _md_verdict(results), rc.md_intervals(results), _md_results(results),
                rc.md_chance(results), rc.md_positive_labels(results), rc.md_convergence(results),
                rc.md_grid(results), rc.md_search(results), _md_training_cost(results),
                _md_serving_cost(results), _md_budget_rule(results), _md_budget_tables(results), _md_plots(plots))
    return "\n".join(line for section in sections for line in section)
