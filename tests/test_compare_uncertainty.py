"""Bootstrap intervals and the verdict rule of compare (polytask.compare.uncertainty)."""

from __future__ import annotations

import json
import random

import pytest

from polytask.compare import percentile_interval, verdict


def test_percentile_interval_of_a_known_sample():
    assert percentile_interval(list(range(1, 1001))) == [26, 975]  # 2.5th and 97.5th of 1..1000
    assert percentile_interval([3.0]) == [3.0, 3.0]


def test_percentile_interval_covers_the_mean_of_a_known_distribution():
    """The bootstrap interval of a mean: about mean +- 1.96 sd / sqrt(n) for a normal sample."""
    rng = random.Random(0)
    sample = [rng.gauss(10.0, 2.0) for _ in range(400)]
    means = []
    for _ in range(2000):
        drawn = [rng.choice(sample) for _ in sample]
        means.append(sum(drawn) / len(drawn))
    lo, hi = percentile_interval(means)
    center = sum(sample) / len(sample)
    assert lo < center < hi
    assert hi - lo == pytest.approx(2 * 1.96 * 2.0 / 400 ** 0.5, rel=0.15)


@pytest.mark.parametrize("interval, expected", [
    ([0.4, 3.0], "helped"), ([-2.0, -0.1], "hurt"), ([-1.0, 2.0], "no measurable difference"),
    ([0.0, 1.0], "no measurable difference"), (None, "no interval (predictions missing)"),
])
def test_verdict_is_read_from_the_interval(interval, expected):
    assert verdict(interval) == expected


def test_compare_writes_intervals_and_a_verdict(tiny_backbone, tmp_path):
    from polytask.compare import run_compare
    from polytask.config import from_dict
    from test_compare import two_task_raw

    raw = two_task_raw(tiny_backbone, tmp_path, isolate=False, inference_examples=0, seeds=[3, 4],
                       budget="examples")
    raw["train"].update(max_steps=8, eval_every=4, log_every=2)
    root = run_compare(from_dict(raw), echo=lambda *_: None)
    results = json.loads((root / "results.json").read_text())
    iv = results["intervals"]["mtl"]
    lo, hi = iv["delta_m"]
    assert lo <= hi and iv["resamples"] == 200
    assert iv["verdict"] == verdict([lo, hi]) and set(iv["per_task"]) == {"sentiment", "topic"}
    assert "How sure? 95% intervals" in (root / "report.md").read_text()
    preds = json.loads((root / "mtl" / "mtl" / "seed3" / "predictions" / "test.json").read_text())
    assert len(preds["topic"]["predictions"]) == len(preds["topic"]["references"]) == 24
