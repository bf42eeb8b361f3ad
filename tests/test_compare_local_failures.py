"""compare on the local executor past a failed sub-run, as on Ray (tests/test_compare_ray.py): with
--jobs 1 (isolated or in this process) and --jobs 2 the other sub-runs train, the report marks the
failed one missing, the command exits non-zero with its last log lines, and a rerun trains only it.
Ctrl-C still stops at once. A real tiny random BERT; the failing method passes an argument the
architecture does not take, which the config check does not see (it fails when its model is built)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import yaml

from polytask.compare import run_compare
from polytask.config import from_dict
from polytask.errors import PolytaskError

from conftest import REPO, ctrl_c_as_in_a_terminal, demo_tasks, tiny_config

METHODS = [{"name": "mtl"}, {"name": "broken", "architecture": {"name": "hard", "args": {"bogus": 1}}}]
FINISHED = ["single/sentiment/seed3", "mtl/mtl/seed3"]  # the sub-runs' folders that finish; mtl/broken/seed3 fails


def raw_config(backbone: str, out: Path, steps: int = 8, **compare) -> dict:
    raw = tiny_config(backbone, out, max_steps=steps, batch_size=8, eval_every=max(1, steps // 2),
                      log_every=max(1, steps // 2))
    raw["name"] = "cmp"
    raw["tasks"] = demo_tasks(n_train=48, n_eval=16)[:1]
    raw["compare"] = {"budget": "steps", "inference_examples": 0, "methods": METHODS, **compare}
    return raw


def cli(path: Path, *args: str, **kw) -> subprocess.Popen:
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-m", "polytask.cli", "compare", str(path), *args], cwd=REPO, env=env,
                            text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            preexec_fn=ctrl_c_as_in_a_terminal, **kw)


@pytest.mark.parametrize("jobs, isolate", [(1, True), (1, False)])  # --jobs 2: the CLI test below
def test_a_failed_sub_run_shows_its_log_and_the_sweep_goes_on(tiny_backbone, tmp_path, jobs, isolate):
    """The broken method's error carries its train.log's last lines (isolated) or its traceback's
    (in this process); the single-task model and mtl finish; the report marks it missing; then it fails."""
    raw = raw_config(tiny_backbone, tmp_path, jobs=jobs, isolate=isolate)
    lines: list[str] = []
    with pytest.raises(PolytaskError) as err:
        run_compare(from_dict(raw), echo=lines.append)
    message = str(err.value)
    assert "1 sub-run(s) failed" in message and "broken/seed3" in message and "bogus" in message, message
    log = tmp_path / "cmp" / "mtl" / "broken" / "seed3" / "train.log"
    tail = f"last lines of {log}:" if isolate else "last lines of its traceback:"
    assert tail in message, message
    first = "sub-run broken/seed3 failed (exit 2)" if isolate else "sub-run broken/seed3 failed in this process"
    assert sum(line.startswith(f"[3/3] broken/seed3: failed: {first}") for line in lines) == 1, lines
    assert sorted(p.parent.relative_to(tmp_path / "cmp").as_posix()
                  for p in (tmp_path / "cmp").rglob("summary.json")) == sorted(FINISHED)
    assert not (tmp_path / "cmp" / "mtl" / "broken" / "seed3" / "summary.json").exists()
    report = (tmp_path / "cmp" / "report.md").read_text()
    assert "**Unfinished sub-runs, not included:** broken/seed3" in report


def test_the_cli_exits_non_zero_and_a_rerun_retries_only_the_failed_sub_run(tiny_backbone, tmp_path):
    """`polytask compare --jobs 2` twice: both exit 2 naming the failure; the second trains only
    the failed sub-run again (the finished ones are reused untouched)."""
    path = tmp_path / "cmp.yaml"
    path.write_text(yaml.safe_dump(raw_config(tiny_backbone, tmp_path)))
    summaries = {}
    for attempt in (1, 2):
        out, err = (proc := cli(path, "--jobs", "2")).communicate(timeout=600)
        assert proc.returncode == 2, out + err
        assert "1 sub-run(s) failed" in err and "run the same command again to retry them" in err, err
        assert f"last lines of {tmp_path / 'cmp' / 'mtl' / 'broken' / 'seed3' / 'train.log'}" in err, err
        assert "[3/3] broken/seed3: failed: sub-run broken/seed3 failed (exit 2)" in out, out
        assert "**Unfinished sub-runs, not included:** broken/seed3" in (tmp_path / "cmp" / "report.md").read_text()
        trained = sorted(line.split(":")[0] for line in out.splitlines() if ": training on CPU thread group" in line)
        now = {p: p.stat().st_mtime_ns for p in (tmp_path / "cmp").rglob("summary.json")}
        assert len(now) == 2, now  # single/sentiment and mtl/mtl
        if attempt == 1:
            assert len(trained) == 3 and trained[2] == "[3/3] broken/seed3", out
            summaries = now
        else:
            assert "3 sub-runs (2 finished)" in out, out
            assert trained == ["[3/3] broken/seed3"], out
            assert now == summaries  # reused, not trained again
    log = (tmp_path / "cmp" / "mtl" / "broken" / "seed3" / "train.log").read_text()
    assert sum(line.startswith("error:") for line in log.splitlines()) == 2, log  # one attempt per command


@pytest.mark.parametrize("isolate", [True, False])
def test_ctrl_c_stops_the_sweep_at_once(tiny_backbone, tmp_path, isolate):
    """SIGINT to the real CLI while the first sub-run trains (--jobs 1): the command stops with a
    non-zero exit, no other sub-run starts, and nothing is reported as a failed sub-run."""
    path = tmp_path / "cmp.yaml"
    path.write_text(yaml.safe_dump(raw_config(tiny_backbone, tmp_path, steps=5000, isolate=isolate)))
    proc = cli(path)
    seen: list[str] = []
    for line in proc.stdout:
        seen.append(line)
        if ": training" in line:
            break
    assert any(s.startswith("[1/3] single/sentiment/seed3: training") for s in seen), "".join(seen)
    time.sleep(3)  # it is training
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode != 0, out + err
    assert "[2/3]" not in out and ": failed:" not in out and "sub-run(s) failed" not in err, out + err
    assert not list((tmp_path / "cmp").rglob("summary.json"))
    assert not (tmp_path / "cmp" / "report.md").exists()


def test_ctrl_c_with_two_jobs_starts_no_queued_sub_run(tiny_backbone, tmp_path):
    """A KeyboardInterrupt in the main thread while two sub-runs train at once (--jobs 2): it is
    raised, the two in flight end, and the third (queued) never starts."""
    raw = raw_config(tiny_backbone, tmp_path, jobs=2)
    raw["compare"]["methods"] = [{"name": "mtl"}, {"name": "other", "overrides": ["train.lr=5e-4"]}]
    lines: list[str] = []

    def echo(line: str) -> None:
        lines.append(line)
        if sum(": training on" in s for s in lines) == 2 and ": training on" in line:  # both in flight
            signal.pthread_kill(threading.main_thread().ident, signal.SIGINT)  # Ctrl-C reaches the main thread

    previous = signal.signal(signal.SIGINT, signal.default_int_handler)  # as in a terminal (see
    try:                                                                  # conftest.ctrl_c_as_in_a_terminal)
        with pytest.raises(KeyboardInterrupt):
            run_compare(from_dict(raw), echo=echo)
    finally:
        signal.signal(signal.SIGINT, previous)
    assert sum(": training on" in s for s in lines) == 2 and not any(s.startswith("[3/3]") for s in lines), lines
    assert sorted(p.parent.relative_to(tmp_path / "cmp").as_posix()
                  for p in (tmp_path / "cmp").rglob("summary.json")) == sorted(FINISHED)  # in flight: they end
    assert not (tmp_path / "cmp" / "mtl" / "other").exists()
    assert not (tmp_path / "cmp" / "report.md").exists()
