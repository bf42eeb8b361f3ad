"""polytask compare, the honest-verdict rules: converged budgets, the tuning grid, --seeds, chance
correction, the positive label in the report, parallel sub-runs (known numbers, tiny backbone)."""

from __future__ import annotations

import json
import math

import pytest

from polytask.compare import (chance_level, choose, corrected, ending, gain, grid_points, near_chance, plan_compare,
                              run_compare, with_seeds)
from polytask.config import CompareConfig, TaskConfig, from_dict
from polytask.errors import ConfigError
from polytask.tasks import build_task

from test_compare import SIZES, two_task_raw

# ---------------------------------------------------------------------------------------------
# Chance levels, chance-corrected scores and gain


def _classifier(main_metric: str, labels: list[str], positive: str | None = None):
    task = build_task(TaskConfig(name="t", type="classification", main_metric=main_metric, positive_label=positive))
    task.load_vocab_state({"labels": labels})
    return task


def test_chance_levels_known_numbers():
    refs = ["a", "a", "a", "b"]  # majority rate 0.75
    assert chance_level(_classifier("accuracy", ["a", "b"]), refs) == pytest.approx(0.75)
    assert chance_level(_classifier("matthews", ["a", "b"]), refs) == 0.0
    # binary F1 of positive "b" (rate p = 1/4): always predicting "b" gives 2p / (1 + p) = 0.4
    assert chance_level(_classifier("f1", ["a", "b"], positive="b"), refs) == pytest.approx(0.4)
    # positive "a" (p = 3/4): 2 * 0.75 / 1.75
    assert chance_level(_classifier("f1", ["a", "b"], positive="a"), refs) == pytest.approx(1.5 / 1.75)
    reg = build_task(TaskConfig(name="r", type="regression", main_metric="mse"))
    assert chance_level(reg, [1.0, 2.0, 3.0, 6.0]) == pytest.approx(3.5)  # variance around the mean 3
    assert chance_level(build_task(TaskConfig(name="r", type="regression")), [1.0, 2.0]) == 0.0  # pearson


def test_corrected_scores_and_gain_known_numbers():
    assert corrected(0.85, 0.7, True) == pytest.approx(0.5)  # half-way from chance 0.7 to 1
    assert corrected(1.0, 4.0, False) == pytest.approx(0.75)  # MSE 1 vs variance 4: R^2 0.75
    assert math.isnan(corrected(0.5, 1.0, True))
    hib = {"cola": True, "sst2": True}
    chance = {"cola": 0.0, "sst2": 0.5}
    single = {"cola": 0.03, "sst2": 0.80}  # c = 0.03 (near chance), 0.6
    mtl = {"cola": 0.09, "sst2": 0.81}  # c = 0.09, 0.62
    # classic Delta-m would be (+200% + 1.25%) / 2; the gain is ((0.09 - 0.03) + (0.62 - 0.6)) / 2 * 100 = 4 points
    assert gain(mtl, single, chance, hib) == pytest.approx(4.0)
    assert near_chance(single, chance, hib) == ["cola"]
    assert near_chance({"cola": 0.10, "sst2": 0.8}, chance, hib) == []  # c = 0.1 is not below 0.1


# ---------------------------------------------------------------------------------------------
# Budget converge: the cap and the accounting of how each run ended


def test_converge_budget_is_the_default_with_a_cap(tmp_path):
    cfg = from_dict(two_task_raw("minilm", tmp_path, methods=[{"name": "prop"}, {"name": "famo", "weighting": {"name": "famo"}}]))
    assert cfg.compare.budget == "converge"
    plan = plan_compare(cfg, sizes=SIZES)
    runs = {r.key: r for r in plan.runs}
    # equal-examples steps 30 / 10 / 40 / 20 (FAMO: 2 batches a step); cap 3x; eval_every as under that budget
    for key, steps, every in [("single/sentiment/seed3", 30, 8), ("single/topic/seed3", 10, 3),
                              ("prop/seed3", 40, 10), ("famo/seed3", 20, 5)]:
        b = runs[key].budget
        assert (b["examples_budget_steps"], b["max_steps"], b["eval_every"], b["early_stopping"]) == (steps, 3 * steps, every, 4)
    assert any("patience 4 evaluations" in n for n in plan.notes)  # the evaluations of one budget
    raw = two_task_raw("minilm", tmp_path, cap_factor=1.5)
    raw["train"]["early_stopping"] = 2
    runs = {r.key: r for r in plan_compare(from_dict(raw), sizes=SIZES).runs}
    assert runs["single/topic/seed3"].budget["max_steps"] == 15 and runs["mtl/seed3"].budget["early_stopping"] == 2


def test_compare_settings_are_checked(tmp_path):
    with pytest.raises(ConfigError, match="compare.cap_factor: must be a number >= 1"):
        from_dict(two_task_raw("minilm", tmp_path, cap_factor=0.5))
    with pytest.raises(ConfigError, match="compare.jobs: must be positive"):
        from_dict(two_task_raw("minilm", tmp_path, jobs=0))


def test_verdict_reads_delta_m_without_near_chance_tasks():
    from polytask.compare.uncertainty import _verdict_source

    # Delta-m's interval is above 0 only thanks to a near-chance task; without it, it spans 0
    assert _verdict_source([5.0, 90.0], [-1.0, 2.0], [-0.5, 1.0], ["cola"], ["sst2"]) == {
        "verdict": "no measurable difference", "verdict_from": "Delta-m without near-chance tasks"}
    assert _verdict_source([5.0, 90.0], None, None, [], ["cola", "sst2"])["verdict"] == "helped"
    assert _verdict_source([5.0, 90.0], None, [-3.0, -1.0], ["cola"], [])["verdict"] == "hurt"


@pytest.mark.parametrize("steps, best, evals, patience, stopped, improving", [
    (40, 20, [10, 20, 30, 40], 2, "early", False),  # patience ran out exactly at the cap
    (30, 10, [10, 20, 30], 2, "early", False),  # stopped before the cap
    (40, 40, [10, 20, 30, 40], 2, "at the cap", True),  # best at the last evaluation
    (40, 30, [10, 20, 30, 40], 3, "at the cap", True),  # best at the one before
    (40, 20, [10, 20, 30, 40], 3, "at the cap", False),  # 2 evaluations without improvement, patience 3
    (40, 20, [10, 20, 30, 40], None, "at the cap", False),  # no early stopping
])
def test_how_a_run_ended(steps, best, evals, patience, stopped, improving):
    end = ending(steps, 40, best, evals, patience)
    assert end["stopped"] == stopped and end["still_improving"] is improving
    assert end["evaluations_after_best"] == sum(e > best for e in evals)


# ---------------------------------------------------------------------------------------------
# The grid and --seeds (planning)


def test_grid_plans_every_model_at_every_point(tmp_path):
    raw = two_task_raw("minilm", tmp_path, grid={"train.lr": [1e-4, 3e-4], "train.weight_decay": [0.0]})
    plan = plan_compare(from_dict(raw), sizes=SIZES)
    assert plan.grid == [{"train.lr": 1e-4, "train.weight_decay": 0.0}, {"train.lr": 3e-4, "train.weight_decay": 0.0}]
    assert len(plan.runs) == 2 * 3
    for r in plan.runs:
        assert r.cfg.train.lr == r.point["train.lr"] == [1e-4, 3e-4][r.grid_index]
        assert r.run_dir.name == f"seed3_g{r.grid_index}" and r.key.endswith(f"/g{r.grid_index}")
    # the same budget at every point
    assert {r.budget["max_steps"] for r in plan.runs if r.task == "topic"} == {30}
    with pytest.raises(ConfigError, match="cannot be tuned"):
        grid_points(CompareConfig(grid={"train.max_steps": [10, 20]}))


def test_seeds_option(tmp_path):
    cfg = with_seeds(from_dict(two_task_raw("minilm", tmp_path)), 3)
    assert cfg.compare.seeds == [3, 4, 5]  # from the config's seed
    cfg = with_seeds(from_dict(two_task_raw("minilm", tmp_path, seeds=[13, 99])), 2)
    assert cfg.compare.seeds == [13, 14]  # from the first of compare.seeds
    assert {r.seed for r in plan_compare(cfg, sizes=SIZES).runs} == {13, 14}
    with pytest.raises(ConfigError, match="--seeds"):
        with_seeds(cfg, 0)


def test_cli_seeds_and_grid_in_the_plan(tmp_path):
    import yaml
    from typer.testing import CliRunner

    from polytask.cli import app

    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(two_task_raw("minilm", tmp_path, grid={"train.lr": [1e-4, 3e-4]})))
    result = CliRunner().invoke(app, ["compare", str(path), "--plan", "--seeds", "2"])
    assert result.exit_code == 0, result.output
    for key in ("single/topic/seed3/g0", "single/topic/seed4/g1", "mtl/seed4/g1"):
        assert key in result.output
    assert "train.lr=0.0003" in result.output and "12 sub-runs (12 to train); budget: converge" in result.output


# ---------------------------------------------------------------------------------------------
# End to end on the tiny backbone: converge + grid + positive label; parallel = sequential


@pytest.fixture(scope="module")
def tuned(tiny_backbone, tmp_path_factory):
    raw = two_task_raw(tiny_backbone, tmp_path_factory.mktemp("tuned"), isolate=False, inference_examples=0,
                       grid={"train.lr": [1e-3, 1e-5]})
    raw["tasks"][0].update(main_metric="f1", positive_label="negative")
    raw["train"].update(max_steps=8, eval_every=2, log_every=2, early_stopping=1)
    root = run_compare(from_dict(raw), echo=lambda *_: None)
    return raw, root, json.loads((root / "results.json").read_text())


def test_grid_point_is_chosen_on_dev(tuned):
    raw, root, results = tuned
    choices = {(c["method"], c["task"]): c for c in results["grid"]["choices"]}
    assert set(choices) == {("single", "sentiment"), ("single", "topic"), ("mtl", None)}
    for (method, task), c in choices.items():
        folder = root / ("single/" + task if method == "single" else "mtl/mtl")
        dev = [json.loads((folder / f"seed3_g{i}" / "summary.json").read_text())["dev_macro"] for i in (0, 1)]
        assert c["dev"] == pytest.approx(dev) and c["chosen"] == dev.index(max(dev))
        assert c["label"] == f"train.lr={[1e-3, 1e-5][c['chosen']]}"
    # the tables use the chosen point: the single-task topic score is that run's test score
    topic = choices[("single", "topic")]
    summary = json.loads((root / f"single/topic/seed3_g{topic['chosen']}/summary.json").read_text())
    assert results["table"]["single"]["test"]["topic"]["mean"] == summary["test"]["topic"]["accuracy"]
    assert "## Tuning grid" in (root / "report.md").read_text()


def test_converged_runs_report_steps_and_examples(tuned):
    raw, root, results = tuned
    ends = {r["run"]: r for r in results["convergence"]}
    assert len(ends) == 3  # the chosen points only
    for r in ends.values():
        summary = json.loads((root / ("single/" + r["task"] if r["method"] == "single" else "mtl/mtl")
                              / f"seed3_g{r['run'][-1]}" / "summary.json").read_text())
        assert r["steps"] == summary["steps"] and r["cap"] == 3 * {"sentiment": 4, "topic": 4, None: 8}[r["task"]]
        assert r["examples"] == r["steps"] * 8 and r["patience"] == 1
        assert r["stopped"] == ("early" if r["steps"] < r["cap"] or r["evaluations_after_best"] >= 1 else "at the cap")
    report = (root / "report.md").read_text()
    assert "| steps / cap | examples seen |" in report and "converged models" in report


def test_report_names_the_positive_label_and_chance(tuned):
    raw, root, results = tuned
    assert results["positive_labels"] == {"sentiment": "negative"}
    report = (root / "report.md").read_text()
    assert "sentiment: `negative`" in report and "## Near-chance baselines" in report
    assert set(results["chance"]["test"]) == {"sentiment", "topic"}
    assert 0 < results["chance"]["test"]["topic"] < 1  # the majority-class rate of the test split
    iv = results["intervals"]["mtl"]
    assert iv["gain"][0] <= iv["gain"][1] and iv["verdict_from"] in ("Delta-m", "Delta-m without near-chance tasks",
                                                                      "chance-corrected gain (every task near chance)")
    from polytask.compare import format_table

    assert f"verdict mtl: {iv['verdict']}" in format_table(results)


def test_parallel_sub_runs_match_sequential(tiny_backbone, tmp_path):
    """Two sub-runs at once, each in its own 1-thread process, give the numbers of the same
    sub-runs trained one after another (here in this process, which the tests run with 1 thread)."""
    summaries = {}
    for jobs in (1, 2):
        raw = two_task_raw(tiny_backbone, tmp_path / f"jobs{jobs}", inference_examples=0, budget="examples",
                           jobs=jobs, isolate=jobs > 1)
        raw["tasks"] = raw["tasks"][:1]
        raw["train"].update(max_steps=6, eval_every=3, log_every=3, num_threads=1)
        lines: list[str] = []
        root = run_compare(from_dict(raw), echo=lines.append)
        summaries[jobs] = {p.parent.relative_to(root).as_posix(): json.loads(p.read_text())
                           for p in sorted(root.rglob("summary.json"))}
    job = json.loads((root / "single/sentiment/seed3/compare_job.json").read_text())
    assert job["threads"] == 1 and any("up to 2 sub-runs at once" in line for line in lines)
    assert set(summaries[1]) == set(summaries[2]) == {"single/sentiment/seed3", "mtl/mtl/seed3"}
    for key in summaries[1]:
        assert summaries[2][key]["test"] == summaries[1][key]["test"] and summaries[2][key]["dev"] == summaries[1][key]["dev"]


def test_verdict_is_provisional_while_models_still_improve():
    from polytask.compare.report import _md_verdict

    results = {"methods": ["m"], "missing": [], "intervals": {"m": {"verdict": "helped", "level": 0.95,
                                                                    "verdict_from": "Delta-m"}},
               "delta_m": {"m": {"test": {"mean": 3.0, "n": 1, "per_task": {"a": {"mean": 3.0}}},
                                 "dev": {"mean": 2.0, "n": 1}}},
               "convergence": [{"run": "single/a/seed1", "still_improving": True},
                               {"run": "m/seed1", "still_improving": False}]}
    text = "\n".join(_md_verdict(results))
    assert "**m**: **helped** by the 95% interval of Delta-m;" in text
    assert "**Provisional:** 1 of 2 models were still improving" in text
    results["convergence"][0]["still_improving"] = False
    assert "Provisional" not in "\n".join(_md_verdict(results))
