"""polytask compare: Delta-m on known numbers, budget planning and accounting, resume, report."""

from __future__ import annotations

import json
import math
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from polytask.compare import (SINGLE, config_differences, delta_m_defined, exposure, format_table, plan_compare,
                              relative_changes, replay, run_compare, throughput, train_lengths, verdicts)
from polytask.config import from_dict, to_dict
from polytask.errors import ConfigError
from polytask.metrics import delta_m

from conftest import demo_tasks, tiny_config

# ---------------------------------------------------------------------------------------------
# Delta-m


def test_delta_m_known_numbers():
    hib = {"acc": True, "f1": True}
    # +10% and -5% -> mean +2.5%
    assert delta_m({"acc": 0.88, "f1": 0.57}, {"acc": 0.80, "f1": 0.60}, hib) == pytest.approx(2.5)
    assert delta_m({"acc": 0.80, "f1": 0.60}, {"acc": 0.80, "f1": 0.60}, hib) == 0.0


def test_delta_m_lower_is_better_flips_sign():
    hib = {"acc": True, "mse": False}
    # accuracy 0.90 -> 0.90 (0%); MSE 0.50 -> 0.40 is 20% lower: an improvement of +20% -> +10% overall
    assert delta_m({"acc": 0.9, "mse": 0.4}, {"acc": 0.9, "mse": 0.5}, hib) == pytest.approx(10.0)
    # MSE going up is a loss
    assert delta_m({"acc": 0.9, "mse": 0.6}, {"acc": 0.9, "mse": 0.5}, hib) == pytest.approx(-10.0)


def test_delta_m_negative_baseline_keeps_sign_meaning():
    # Matthews correlation -0.10 -> +0.05 is better: relative change +150%
    assert delta_m({"cola": 0.05}, {"cola": -0.10}, {"cola": True}) == pytest.approx(150.0)


def test_relative_changes_and_zero_baseline_excluded():
    hib = {"a": True, "b": True, "c": False}
    single = {"a": 0.5, "b": 0.0, "c": 2.0}
    mtl = {"a": 0.55, "b": 0.2, "c": 1.0}
    rel = relative_changes(mtl, single, hib)
    assert rel["a"] == pytest.approx(10.0) and rel["c"] == pytest.approx(50.0) and math.isnan(rel["b"])
    value, excluded = delta_m_defined(mtl, single, hib)
    assert excluded == ["b"] and value == pytest.approx(30.0)
    value, excluded = delta_m_defined({"b": 0.3}, {"b": 0.0}, {"b": True})
    assert math.isnan(value) and excluded == ["b"]


def test_verdict_target_rule():
    results = {"methods": ["m1", "m2"], "delta_m": {
        "m1": {"test": {"mean": 3.0, "per_task": {"a": {"mean": 9.0}, "b": {"mean": -6.0}}}, "dev": {"mean": 2.0}},
        "m2": {"test": {"mean": 1.5, "per_task": {"a": {"mean": 2.0}, "b": {"mean": 1.0}}}, "dev": {"mean": 1.0}},
    }}
    v = verdicts(results)
    assert not v["m1"]["meets_target"] and v["m1"]["below"] == ["b"] and v["m1"]["worst_task"] == "b"
    assert v["m2"]["meets_target"]


# ---------------------------------------------------------------------------------------------
# Budgets


def two_task_raw(backbone, out_dir, **compare):
    raw = tiny_config(backbone, out_dir, max_steps=40, batch_size=8, eval_every=10, log_every=2)
    raw["name"] = "cmp"
    raw["tasks"] = demo_tasks(n_train=96, n_eval=24)[:2]  # sentiment, topic (classification)
    raw["compare"] = compare
    return raw


SIZES = {"sentiment": 300, "topic": 100}


def test_examples_budget_gives_each_single_task_its_share(tmp_path):
    raw = two_task_raw("minilm", tmp_path, budget="examples", methods=[
        {"name": "prop"},
        {"name": "famo", "weighting": {"name": "famo"}},
        {"name": "temp", "sampling": {"name": "temperature", "args": {"T": 100}}},
        {"name": "fixed", "weighting": {"name": "famo"}, "overrides": ["train.max_steps=30"]},
    ])
    plan = plan_compare(from_dict(raw), sizes=SIZES)
    runs = {r.key: r for r in plan.runs}
    assert len(plan.runs) == 2 + 4
    # proportional sampling: 3/4 of 40 steps of 8 examples are sentiment -> 240 examples = 30 steps
    assert runs["single/sentiment/seed3"].budget["max_steps"] == 30
    assert runs["single/topic/seed3"].budget["max_steps"] == 10
    assert runs["single/sentiment/seed3"].budget["expected_examples"] == {"sentiment": pytest.approx(240)}
    assert runs["prop/seed3"].budget["expected_examples"] == {"sentiment": pytest.approx(240),
                                                              "topic": pytest.approx(80)}
    # every model gets the same number of dev evaluations
    assert {r.budget["evaluations"] for r in plan.runs} == {4}
    # FAMO draws both tasks every step: half the steps, same total examples (320)
    assert runs["famo/seed3"].budget["max_steps"] == 20
    assert sum(runs["famo/seed3"].budget["expected_examples"].values()) == pytest.approx(320)
    # temperature sampling keeps the steps but spreads the examples more evenly
    temp = runs["temp/seed3"].budget
    assert temp["max_steps"] == 40 and temp["expected_examples"]["topic"] > 80
    # an explicit max_steps override wins, and the plan says why steps changed
    assert runs["fixed/seed3"].budget["max_steps"] == 30
    assert any("famo" in n for n in plan.notes)
    # single-task runs are plain fine-tuning of one task, in their own folders
    single = runs["single/topic/seed3"].cfg
    assert [t.name for t in single.tasks] == ["topic"] and single.weighting.name == "equal"
    assert single.compare is None and single.run_dir == tmp_path / "cmp" / SINGLE / "topic" / "seed3"


def test_steps_budget_and_seeds(tmp_path):
    raw = two_task_raw("minilm", tmp_path, budget="steps", seeds=[1, 2],
                       methods=[{"name": "uw", "weighting": {"name": "uw"}}])
    plan = plan_compare(from_dict(raw), sizes=SIZES)
    assert len(plan.runs) == 2 * (2 + 1)
    assert {r.budget["max_steps"] for r in plan.runs} == {40}
    assert {r.seed for r in plan.runs} == {1, 2} and {r.cfg.seed for r in plan.runs} == {1, 2}


def test_plan_rejects_bad_method_names(tmp_path):
    with pytest.raises(ConfigError, match="duplicate method"):
        plan_compare(from_dict(two_task_raw("minilm", tmp_path, methods=[{"name": "a"}, {"name": "a"}])), sizes=SIZES)
    with pytest.raises(ConfigError, match="folder name"):
        plan_compare(from_dict(two_task_raw("minilm", tmp_path, methods=[{"name": "single"}])), sizes=SIZES)
    with pytest.raises(ConfigError, match="compare.seeds"):
        plan_compare(from_dict(two_task_raw("minilm", tmp_path, seeds=[1, 1])), sizes=SIZES)


def test_exposure_needs_all_tasks(tmp_path):
    cfg = from_dict({**two_task_raw("minilm", tmp_path), "weighting": {"name": "famo"}})
    assert exposure(cfg, SIZES) == {"sentiment": 8.0, "topic": 8.0}


def test_throughput_skips_intervals_with_evaluation():
    # 6 steps, one example each; eval after step 2 (its 100 s are in the interval 2 -> 4)
    events = [{"kind": "train", "step": 2, "elapsed": 2.0}, {"kind": "eval", "step": 2},
              {"kind": "train", "step": 4, "elapsed": 104.0}, {"kind": "train", "step": 6, "elapsed": 106.0}]
    out = throughput(events, [1] * 6, [10] * 6, 106.0)
    assert out["samples_per_s"] == pytest.approx(1.0) and out["tokens_per_s"] == pytest.approx(10.0)
    assert out["measured_seconds"] == pytest.approx(4.0)


def test_config_differences_ignore_location():
    a = {"name": "x", "data_dir": "a", "train": {"lr": 1e-3, "num_threads": None}, "tasks": [{"name": "t"}]}
    b = {"name": "y", "data_dir": "b", "train": {"lr": 2e-3, "num_threads": 4}, "tasks": [{"name": "t"}]}
    assert config_differences(a, b) == ["train.lr"]


def test_replay_matches_what_training_drew(tiny_backbone, tmp_path, monkeypatch):
    """The replayed examples/tokens per task equal the batches the trainer actually took."""
    import polytask.draws as draws_mod
    import polytask.train as train_mod
    from polytask.batching import BatchStream

    drawn: list[tuple[int, int]] = []  # (stream seed, batch size) in draw order

    class Counting(BatchStream):
        def next(self):
            idx = super().next()
            if threading.current_thread() is threading.main_thread():  # not the prefetch thread's copy
                drawn.append((self.seed, len(idx), sum(self.lengths[i] for i in idx)))
            return idx

    monkeypatch.setattr(draws_mod, "BatchStream", Counting)  # StepDraws makes the trainer's streams
    raw = two_task_raw(tiny_backbone, tmp_path)
    raw["train"].update(max_steps=14, eval_every=7, grad_accum=2)
    raw["sampling"] = {"name": "annealed"}
    cfg = from_dict(raw)
    train_mod.train(cfg, progress=False)
    monkeypatch.undo()  # count what training drew, not the replay's own draws (same StepDraws)
    rep = replay(cfg, train_lengths(cfg), 14)
    seeds = {cfg.seed + i: n for i, n in enumerate(rep["tasks"])}  # the cosine probes' streams are not training
    for j, name in enumerate(rep["tasks"]):
        assert sum(row[j] for row in rep["examples"]) == sum(n for s, n, _ in drawn if seeds.get(s) == name)
        assert sum(row[j] for row in rep["tokens"]) == sum(t for s, _, t in drawn if seeds.get(s) == name)
    assert sum(map(sum, rep["examples"])) == 14 * 2 * 8


# ---------------------------------------------------------------------------------------------
# Running, resuming, reporting


def mtimes(root):
    return {p: p.stat().st_mtime_ns for p in sorted(root.rglob("summary.json"))}


@pytest.fixture(scope="module")
def compared(tiny_backbone, tmp_path_factory):
    out = tmp_path_factory.mktemp("compare")
    raw = two_task_raw(tiny_backbone, out, isolate=False, inference_examples=8, budget="examples",
                       methods=[{"name": "ew"}, {"name": "uw", "weighting": {"name": "uw"}}])
    raw["train"].update(max_steps=12, eval_every=6, log_every=2)
    lines: list[str] = []
    root = run_compare(from_dict(raw), echo=lines.append)
    return raw, root, lines


def test_compare_writes_report(compared):
    raw, root, lines = compared
    for name in ("report.md", "results.json", "plan.json", "compare.yaml", "inference.json",
                 "metrics.png", "delta_m.png", "curves.png"):
        assert (root / name).exists(), name
    for sub in ("single/sentiment/seed3", "single/topic/seed3", "mtl/ew/seed3", "mtl/uw/seed3"):
        assert (root / sub / "summary.json").exists(), sub
        assert (root / sub / "resources.json").exists(), sub
        assert not (root / sub / "checkpoints").exists(), sub  # a finished sub-run needs none (disk)
    results = json.loads((root / "results.json").read_text())
    for m in ("single", "ew", "uw"):
        for t in ("sentiment", "topic"):
            assert math.isfinite(results["table"][m]["test"][t]["mean"])
    for m in ("ew", "uw"):
        assert "mean" in results["delta_m"][m]["test"]
    eff = results["efficiency"]
    assert eff["single"]["trainable_params"]["mean"] > eff["ew"]["trainable_params"]["mean"]
    assert eff["ew"]["samples_per_s"]["mean"] > 0 and eff["ew"]["peak_rss_mb"]["mean"] > 0
    # the examples budget holds exactly: each single-task model saw what the ew model was planned to show it
    assert sum(eff["single"]["examples_seen"][t]["mean"] for t in ("sentiment", "topic")) == 12 * 8
    assert sum(eff["ew"]["examples_seen"][t]["mean"] for t in ("sentiment", "topic")) == 12 * 8
    assert results["inference"]["single"]["models"] == 2 and results["inference"]["ew"]["models"] == 1
    assert results["inference"]["single"]["params_served"] > results["inference"]["ew"]["params_served"]
    report = (root / "report.md").read_text()
    assert "Delta-m" in report and "| sentiment |" in report and "![delta_m](delta_m.png)" in report
    assert f"(max length {from_dict(raw).model.max_length})" in report and "| train tokens/s |" in report
    table = format_table(results)
    assert "sentiment" in table and "Delta-m" in table
    assert any("trained" in line for line in lines)


def test_report_says_whether_each_model_converged(compared):
    raw, root, _ = compared
    results = json.loads((root / "results.json").read_text())
    runs = {r["run"]: r for r in results["convergence"]}
    assert set(runs) == {"single/sentiment/seed3", "single/topic/seed3", "ew/seed3", "uw/seed3"}
    for r in runs.values():  # no early stopping configured: every model ran to its cap
        summary = json.loads((root / _folder(r) / "summary.json").read_text())
        assert r["steps"] == r["cap"] == summary["steps"] and r["stopped"] == "at the cap"
        # 2 evaluations (steps 6 and 12 of the ew run): still improving unless the best came at the first
        assert r["evaluations"] == 2 and r["examples"] == (12 * 8 if r["method"] != "single" else r["examples"])
        assert r["still_improving"] == (r["evaluations_after_best"] < 2)
    report = (root / "report.md").read_text()
    assert "## Did each model converge?" in report and "| steps / cap |" in report


def _folder(r: dict) -> str:
    return f"single/{r['task']}/seed{r['seed']}" if r["method"] == "single" else f"mtl/{r['method']}/seed{r['seed']}"


def test_compare_resume_trains_nothing_again(compared):
    raw, root, _ = compared
    before = mtimes(root)
    # the fixture's four sub-runs (a test that adds a method to the shared folder may have run first)
    planned = {root / kind / name / "seed3" / "summary.json"
               for kind, name in (("single", "sentiment"), ("single", "topic"), ("mtl", "ew"), ("mtl", "uw"))}
    assert planned <= set(before), sorted(before)
    lines: list[str] = []
    run_compare(from_dict(raw), echo=lines.append)
    assert mtimes(root) == before
    assert not any("trained" in line or "resumed" in line for line in lines)


def test_compare_retrains_only_the_missing_sub_run(compared):
    raw, root, _ = compared
    before = mtimes(root)
    victim = root / "single" / "topic" / "seed3" / "summary.json"
    victim.unlink()
    lines: list[str] = []
    run_compare(from_dict(raw), echo=lines.append)
    after = mtimes(root)
    assert victim.exists()
    assert {p: t for p, t in after.items() if p != victim} == {p: t for p, t in before.items() if p != victim}
    redone = [line for line in lines if "trained" in line or "resumed" in line]
    assert len(redone) == 1 and "single/topic/seed3" in redone[0]  # (from its last checkpoint)


def test_compare_adds_a_method_without_retraining(compared):
    raw, root, _ = compared
    before = mtimes(root)
    raw2 = json.loads(json.dumps(raw))
    raw2["compare"]["methods"].append({"name": "temp", "sampling": {"name": "temperature", "args": {"T": 3}}})
    lines: list[str] = []
    run_compare(from_dict(raw2), echo=lines.append)
    after = mtimes(root)
    assert {p: after[p] for p in before} == before and len(after) == len(before) + 1
    results = json.loads((root / "results.json").read_text())
    assert results["methods"] == ["ew", "uw", "temp"]


def test_compare_refuses_a_changed_config(compared):
    raw, root, _ = compared
    raw2 = json.loads(json.dumps(raw))
    raw2["train"]["lr"] = 5e-4
    with pytest.raises(ConfigError, match="different configuration"):
        run_compare(from_dict(raw2), echo=lambda s: None)
    # a moved data folder is not a different experiment
    raw3 = json.loads(json.dumps(raw))
    raw3["train"]["num_threads"] = 1
    run_compare(from_dict(raw3), echo=lambda s: None, train_missing=False)


def test_compare_isolated_sub_runs(tiny_backbone, tmp_path):
    """Default mode: each sub-run trains in its own process and records that process's peak memory."""
    raw = two_task_raw(tiny_backbone, tmp_path, inference_examples=0, budget="examples")
    raw["tasks"] = raw["tasks"][:1]
    raw["train"].update(max_steps=4, eval_every=4, log_every=2)
    root = run_compare(from_dict(raw), echo=lambda s: None)
    res = json.loads((root / "single" / "sentiment" / "seed3" / "resources.json").read_text())
    assert res["peak_rss_method"].startswith("peak RSS of the sub-run's own process") and res["peak_rss_mb"] > 50
    assert (root / "mtl" / "mtl" / "seed3" / "summary.json").exists()  # default method: the base config


def test_cli_compare_plan(tiny_backbone, tmp_path):
    import yaml
    from typer.testing import CliRunner

    from polytask.cli import app

    raw = two_task_raw(tiny_backbone, tmp_path, methods=[{"name": "ew"}])
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(raw))
    result = CliRunner().invoke(app, ["compare", str(path), "--plan", "train.max_steps=20"])
    assert result.exit_code == 0, result.output
    assert "single/topic/seed3" in result.output and "to train" in result.output
    assert not (tmp_path / "cmp" / "single").exists()


def test_sub_run_config_round_trips(tmp_path):
    plan = plan_compare(from_dict(two_task_raw("minilm", tmp_path, methods=[{"name": "ew"}])), sizes=SIZES)
    for r in plan.runs:
        assert from_dict(to_dict(r.cfg)) == r.cfg


def test_a_stray_summary_is_not_a_finished_sub_run(tiny_backbone, tmp_path):
    plan = plan_compare(from_dict(two_task_raw(tiny_backbone, tmp_path)))
    run = plan.runs[0]
    run.run_dir.mkdir(parents=True)
    (run.run_dir / "summary.json").write_text("{}")
    assert not run.finished


def _pids_running(needle: str) -> list[int]:
    pids = []
    for proc in Path("/proc").iterdir():
        try:
            if proc.name.isdigit() and needle in (proc / "cmdline").read_bytes().decode(errors="replace"):
                state = (proc / "stat").read_text().split(") ")[-1].split()[0]
                if state != "Z":
                    pids.append(int(proc.name))
        except OSError:
            continue
    return pids


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="parent-death signal is Linux-only")
def test_killing_compare_stops_its_sub_run_with_a_checkpoint(tiny_backbone, tmp_path):
    """SIGKILL the compare process: its sub-run's process gets SIGTERM, checkpoints, and exits
    (no orphan keeps training and writing into a folder the user may delete or move)."""
    import signal
    import subprocess
    import time

    import yaml

    raw = two_task_raw(tiny_backbone, tmp_path, inference_examples=0)
    raw["tasks"] = raw["tasks"][:1]
    raw["train"].update(max_steps=100_000, eval_every=100_000, log_every=5)
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(raw))
    parent = subprocess.Popen([sys.executable, "-m", "polytask.cli", "compare", str(path)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    run_dir = tmp_path / "cmp" / "single" / "sentiment" / "seed3"
    job = str(run_dir / "compare_job.json")
    deadline = time.time() + 120
    while time.time() < deadline and '"kind": "train"' not in _read(run_dir / "metrics.jsonl"):
        time.sleep(0.2)
    children = _pids_running(job)
    assert children, "the sub-run never started training"
    parent.send_signal(signal.SIGKILL)
    parent.wait()
    deadline = time.time() + 60
    while time.time() < deadline and _pids_running(job):
        time.sleep(0.2)
    assert not _pids_running(job)
    events = [json.loads(x) for x in _read(run_dir / "metrics.jsonl").splitlines()]
    assert events[-1]["kind"] == "interrupted" and events[-1]["signal"] == "SIGTERM", (events[-3:], _read(run_dir / "train.log")[-2000:])
    assert (run_dir / "checkpoints").is_dir()


def _read(path: Path) -> str:
    return path.read_text() if path.exists() else ""


def _compare_cli(*args, cwd):
    return subprocess.run([sys.executable, "-m", "polytask.cli", "compare", *map(str, args)], cwd=cwd,
                          capture_output=True, text=True, timeout=600)


def test_cli_compare_checks_every_sub_run_before_training_any(tiny_backbone, tmp_path):
    """Issue 25.6: a missing test file of the third task failed only when that task's sub-run
    started, after the others had trained; now every sub-run's data is read first and nothing trains."""
    import yaml

    rows = [{"text": f"example {i}", "label": "ab"[i % 2]} for i in range(16)]
    (tmp_path / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    raw = two_task_raw(tiny_backbone, tmp_path, isolate=False, inference_examples=0, budget="steps",
                       methods=[{"name": "ew"}])
    raw["train"].update(max_steps=2, eval_every=2, log_every=1)
    raw["tasks"].append({"name": "third", "type": "classification",
                         "data": {"train": str(tmp_path / "train.jsonl"), "dev": str(tmp_path / "train.jsonl"),
                                  "test": str(tmp_path / "missing-test.jsonl")}})
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(raw))
    proc = _compare_cli(path, cwd=tmp_path)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "missing-test.jsonl" in proc.stderr and "trained none" in proc.stderr, proc.stderr
    assert not list((tmp_path / "cmp").rglob("summary.json"))  # no sub-run trained


def test_cli_compare_plan_shows_changed_finished_sub_runs_by_task_name(tiny_backbone, tmp_path):
    """Issue 25.6: --plan listed as [finished] a sub-run that compare then refused as changed, and
    the refusal named the task by the sub-run's own index (tasks.0) instead of the user's name."""
    import yaml

    raw = two_task_raw(tiny_backbone, tmp_path, isolate=False, inference_examples=0, budget="steps")
    raw["train"].update(max_steps=2, eval_every=2, log_every=1)
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(raw))
    assert _compare_cli(path, cwd=tmp_path).returncode == 0
    plan = _compare_cli(path, "--plan", "tasks.topic.pooling=cls", cwd=tmp_path)
    assert plan.returncode == 0, plan.stderr
    line = next(x for x in plan.stdout.splitlines() if x.startswith("single/topic/seed3"))
    assert "finished with another config (tasks.topic.pooling)" in line and "compare refuses it" in line
    assert "[finished]" in next(x for x in plan.stdout.splitlines() if x.startswith("single/sentiment/seed3"))
    real = _compare_cli(path, "tasks.topic.pooling=cls", cwd=tmp_path)
    assert real.returncode == 2 and "tasks.topic.pooling" in real.stderr and "tasks.0" not in real.stderr


def test_cli_compare_leads_with_the_verdict_and_says_provisional(compared, tmp_path):
    """Issue 25.9: the CLI printed the headline Delta-m (with near-chance tasks) first and the
    verdict last, and never said "provisional" when models were still improving at their cap."""
    import yaml

    raw, root, _ = compared
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(raw))
    proc = _compare_cli(path, "--report-only", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = proc.stdout.splitlines()
    table = next(i for i, line in enumerate(lines) if line.startswith("task (metric)"))
    verdicts = [i for i, line in enumerate(lines) if line.startswith(("verdict ew:", "verdict uw:"))]
    assert len(verdicts) == 2 and max(verdicts) < table, proc.stdout
    assert "from the 95% interval of" in lines[verdicts[0]]
    results = json.loads((root / "results.json").read_text())
    improving = sum(r["still_improving"] for r in results["convergence"])
    assert improving and any(line.startswith(f"provisional: {improving} of 4 models were still improving")
                             for line in lines[:table]), proc.stdout


def test_delta_m_plot_draws_the_bootstrap_interval_and_metrics_the_chance_level(compared, tmp_path):
    """Issue 25.9/25.12: delta_m.png's test bars had the seed spread (zero with one seed), not the
    interval the verdict reads; metrics.png did not show the chance (majority-class) level."""
    from polytask.compare.plots import delta_m_bars, plot_metrics

    _, root, _ = compared
    results = json.loads((root / "results.json").read_text())
    assert len(results["seeds"]) == 1
    bars = delta_m_bars(results, "test")
    for m in ("ew", "uw"):
        mean, lo, hi = bars[m]
        lo_iv, hi_iv = results["intervals"][m]["delta_m"]
        assert (lo, hi) == (min(lo_iv, mean), max(hi_iv, mean)) and hi > lo  # not zero with one seed
    assert all(lo == hi for _, lo, hi in delta_m_bars(results, "dev").values())  # dev: std over 1 seed: none
    with_chance = plot_metrics(results, tmp_path / "with.png").read_bytes()
    blind = dict(results, chance={})
    assert plot_metrics(blind, tmp_path / "without.png").read_bytes() != with_chance  # the chance line is drawn
    assert all(0 < results["chance"]["test"][t] < 1 for t in ("sentiment", "topic"))


def test_method_line_names_only_the_sampler_the_method_uses(tmp_path):
    """Issue 25.9: a method whose weighting trains every task in every step (PCGrad) was listed
    with the base config's sampler, which it never uses."""
    from polytask.compare.results import _method_settings
    from polytask.compare.report_checks import md_positive_labels

    raw = two_task_raw("minilm", tmp_path, methods=[{"name": "ew"}, {"name": "pc", "weighting": {"name": "pcgrad"}}])
    settings = _method_settings(plan_compare(from_dict(raw), sizes=SIZES))
    assert "every task in every step (no sampler)" in settings["pc"] and "sampling" not in settings["pc"]
    assert "sampling temperature" in settings["ew"] or "sampling " in settings["ew"]
    line = md_positive_labels({"positive_labels": {"mrpc": "equivalent"}})[0]
    assert "its `labels:` when set" in line
