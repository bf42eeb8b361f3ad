"""The training plot does not mislead (issue 16, item 5): checked on the Figure's objects."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pytest  # noqa: E402

from polytask.report import cosine_heatmap, plot_training, task_colours, training_figure  # noqa: E402


def train_event(step, weights=None, probe=False, cosine=None, lr=1e-3):
    event = {"kind": "train", "step": step, "loss": {"a": 1.0 / step, "b": 2.0 / step},
             "weights": weights or {"a": 1.0, "b": 1.0}, "grad_norm": {"a": 0.5, "b": 0.7}, "lr": lr}
    if cosine is not None:
        event["cosine"] = {"a|b": cosine}
    if probe:
        event["probe_grad_norm"] = {"a": 0.4, "b": 0.6}
    return event


def eval_event(step, acc=0.5, pearson=0.1):
    return {"kind": "eval", "step": step, "split": "dev", "macro": (acc + pearson) / 2,
            "metrics": {"a": {"accuracy": acc, "f1": acc - 0.1}, "b": {"pearson": pearson, "spearman": 0.3}},
            "main": {"a": acc, "b": pearson}}


def axes_by_title(fig) -> dict:
    return {ax.get_title(): ax for ax in fig.axes if ax.get_title()}


@pytest.fixture
def close():
    yield
    plt.close("all")


def test_every_series_has_markers_and_a_single_point_shows(close):
    fig = training_figure([train_event(5), eval_event(5)])
    data_lines = [line for ax in fig.axes for line in ax.get_lines() if line.get_label() != "_nolegend_"
                  and not line.get_label().startswith("best step")  # a vertical mark, not a series
                  and len(line.get_xdata()) >= 1 and line.get_xdata()[0] == 5]
    assert len(data_lines) >= 5  # loss a, b; dev a, b; macro; norms; lr
    assert all(line.get_marker() not in (None, "None", "") for line in data_lines)


def test_one_dev_panel_per_task_with_its_metric_on_the_axis(close):
    fig = training_figure([train_event(5), eval_event(5), eval_event(10, 0.7, 0.4)])
    titles = axes_by_title(fig)
    assert titles["dev a"].get_ylabel() == "accuracy"
    assert titles["dev b"].get_ylabel() == "pearson"
    assert "dev macro average" in titles


def test_task_colours_are_the_same_in_every_panel(close):
    events = [train_event(5, {"a": 0.5, "b": 1.5}), train_event(10, {"a": 0.8, "b": 1.2}), eval_event(10)]
    fig = training_figure(events)
    colours = task_colours(events)
    seen: dict[str, set] = {}
    for ax in fig.axes:
        for line in ax.get_lines():
            if line.get_label() in colours:
                seen.setdefault(line.get_label(), set()).add(line.get_color())
    assert seen == {"a": {colours["a"]}, "b": {colours["b"]}}
    assert "task weights (effective)" in axes_by_title(fig)


def test_weights_panel_only_when_weights_vary(close):
    flat = training_figure([train_event(5), train_event(10)])
    assert "task weights (effective)" not in axes_by_title(flat)


def test_probe_cosines_are_points_not_lines(close):
    events = [train_event(s) for s in (5, 10, 15)] + [train_event(20, probe=True, cosine=0.3),
                                                      train_event(40, probe=True, cosine=-0.2)]
    ax = axes_by_title(training_figure(events))["cosine of task gradients (pairs)"]
    cos_lines = [line for line in ax.get_lines() if "a|b" in line.get_label()]
    assert cos_lines and all(line.get_linestyle() == "None" for line in cos_lines)
    assert all(line.get_marker() == "o" for line in cos_lines)


def test_in_step_cosines_are_lines_with_markers(close):
    events = [train_event(s, cosine=0.1 * s / 5) for s in (5, 10, 15)]
    ax = axes_by_title(training_figure(events))["cosine of task gradients (pairs)"]
    line = next(line for line in ax.get_lines() if line.get_label() == "a|b")
    assert line.get_linestyle() == "-" and line.get_marker() == "o"


def test_learning_rate_is_plotted(close):
    events = [train_event(5, lr=1e-3), train_event(10, lr=5e-4)]
    ax = axes_by_title(training_figure(events))["learning rate"]
    assert list(ax.get_lines()[0].get_ydata()) == [1e-3, 5e-4]
    assert ax.get_ylabel() == "learning rate"


def test_cosine_heatmap_and_png(tmp_path, close):
    events = [train_event(s, cosine=(-1) ** s * 0.5) for s in (5, 10, 15)] + [eval_event(15)]
    fig = cosine_heatmap(events)
    assert fig.axes[0].images[0].get_array().shape == (1, 3)
    assert cosine_heatmap([train_event(5)]) is None
    out = plot_training(events, tmp_path / "training.png")
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_no_events_still_draws(tmp_path, close):
    assert plot_training([], tmp_path / "training.png").exists()


def test_the_dev_axis_names_the_logged_main_metric_even_when_values_tie():
    from polytask.report import main_metric_name

    tie = {"kind": "eval", "step": 5, "metrics": {"topic": {"accuracy": 0.995, "macro_f1": 0.995}},
           "main": {"topic": 0.995}}
    assert main_metric_name([tie], "topic") == "main metric"  # ambiguous without the name: not guessed
    assert main_metric_name([{**tie, "main_metric": {"topic": "accuracy"}}], "topic") == "accuracy"


def test_best_step_marked_norms_split_and_cosine_axis_follows_the_data(close):
    """Issue 25.11: training.png did not mark the best step; training-step and probe gradient norms
    (orders of magnitude apart) shared one panel; the cosine axis at +-1 flattened values near 0."""
    events = [train_event(s, cosine=0.02 * s / 5) for s in (5, 10, 15)]
    events += [train_event(20, probe=True, cosine=-0.03)]
    events += [eval_event(5, 0.5), eval_event(10, 0.8), eval_event(15, 0.6)]
    panels = axes_by_title(training_figure(events))
    for title in ("dev a", "dev b", "dev macro average"):
        marks = [line for line in panels[title].get_lines() if line.get_label().startswith("best step 10")]
        assert marks and list(marks[0].get_xdata()) == [10, 10], title
    assert "task gradient norm" not in panels
    steps = panels["task gradient norm (training steps)"]
    probes = panels["task gradient norm (probes)"]
    assert all(line.get_linestyle() == "-" for line in steps.get_lines())
    assert probes.get_lines() and all(line.get_linestyle() == "None" for line in probes.get_lines())
    lo, hi = panels["cosine of task gradients (pairs)"].get_ylim()
    assert -0.2 < lo < -0.03 and 0.06 < hi < 0.3  # the data's range with 0 in view, not -1..1


def test_head_learning_rate_is_logged_and_plotted_beside_the_backbones(tiny_backbone, tmp_path, close):
    """Issue 25.11: with ``train.head_lr``, training.png showed the backbone's learning rate only.
    A real run logs the heads' rate (same schedule, head_lr / lr times the backbone's) and the
    learning-rate panel draws both."""
    import json

    from conftest import tiny_config
    from polytask.config import from_dict
    from polytask.train import train

    raw = tiny_config(tiny_backbone, tmp_path, max_steps=4, eval_every=4, log_every=1, head_lr=4e-3,
                      warmup_ratio=0.5)
    run = train(from_dict(raw), progress=False)
    events = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    steps = [e for e in events if e["kind"] == "train"]
    assert len(steps) == 4 and all(e["head_lr"] == pytest.approx(4 * e["lr"]) for e in steps)
    assert len({e["lr"] for e in steps}) > 1  # the schedule moves both
    lines = axes_by_title(training_figure(events))["learning rate"].get_lines()
    assert [line.get_label() for line in lines] == ["backbone", "heads"]
