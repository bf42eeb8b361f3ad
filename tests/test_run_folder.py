"""The run folder keeps its word (docs/reliability.md, round two): one run per folder, resume
that records what it changed, weights and hash as one unit, clear errors for damaged files, no
code imported from a run folder unless allowed."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from conftest import tiny_config
from polytask import run_folder as rf
from polytask.config import from_dict
from polytask.errors import CheckpointError, ConfigError, PolytaskError
from polytask.predict import Predictor
from polytask.run_folder import RunFolder
from polytask.train import train

RUN = dict(max_steps=10, eval_every=5, checkpoint_every=5, log_every=1, batch_size=8, keep_checkpoints=2)


def config(backbone, tmp_path, name="run", **train_args):
    raw = tiny_config(backbone, tmp_path / "runs", **{**RUN, **train_args})
    raw["name"] = name
    raw["tasks"] = raw["tasks"][1:2]  # topic: fast
    return raw


def cli(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "polytask.cli", *map(str, args)], capture_output=True, text=True,
                          timeout=600, cwd=cwd)


@pytest.fixture(scope="module")
def finished(tiny_backbone, tmp_path_factory) -> Path:
    """A finished tiny run, copied by the tests that damage it."""
    return train(from_dict(config(tiny_backbone, tmp_path_factory.mktemp("finished"))), progress=False)


def copy_of(run: Path, tmp_path: Path) -> Path:
    target = tmp_path / "copy"
    shutil.copytree(run, target)
    return target


# -- one run per folder ---------------------------------------------------------------------------


def test_new_run_into_a_folder_holding_a_run_is_refused_unless_overwrite(tiny_backbone, tmp_path):
    raw = config(tiny_backbone, tmp_path)
    train(from_dict(raw), progress=False)
    with pytest.raises(PolytaskError, match="holds another run.*--resume.*--overwrite"):
        train(from_dict(raw), progress=False)
    events_before = RunFolder(tmp_path / "runs" / "run").events()
    train(from_dict(raw), progress=False, overwrite=True)
    events = RunFolder(tmp_path / "runs" / "run").events()
    assert [e["kind"] for e in events].count("start") == 1 and len(events) == len(events_before)


def test_copied_run_folder_never_resumes_the_old_run(tiny_backbone, tmp_path, finished):
    """The reported repro: a new run started into a copy of an old run, killed, resumed."""
    reuse = tmp_path / "runs" / "reuse"
    shutil.copytree(finished, reuse)
    raw = config(tiny_backbone, tmp_path, name="reuse", max_steps=6, checkpoint_every=3)
    train(from_dict(raw), progress=False, overwrite=True)
    manifests = [json.loads(p.read_text()) for p in (reuse / "checkpoints").glob("step-*/manifest.json")]
    assert sorted(m["step"] for m in manifests) == [3, 6]
    assert {m["run_id"] for m in manifests} == {RunFolder(reuse).run_id}


def test_pruning_and_resume_ignore_another_runs_checkpoints(tmp_path):
    folder = RunFolder(tmp_path)
    folder.create()
    model = torch.nn.Linear(3, 2)
    folder.write_marker()
    old = folder.save_checkpoint(300, model, {"x": 1}, keep=2)
    folder.write_marker()  # another run takes the folder over (as after a copy)
    for step in (10, 20, 30):
        folder.save_checkpoint(step, model, {"x": step}, keep=2)
    assert old.exists()  # another run's checkpoint: never pruned as ours
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == [
        "step-0000020", "step-0000030", "step-0000300"]
    assert folder.load_checkpoint(model) == {"x": 30}


def test_second_writer_is_refused_while_the_first_trains(tiny_backbone, tmp_path):
    path = tmp_path / "long.yaml"
    path.write_text(yaml.safe_dump(config(tiny_backbone, tmp_path, name="busy", max_steps=100000, eval_every=10**5,
                                          checkpoint_every=10**5)))
    first = subprocess.Popen([sys.executable, "-m", "polytask.cli", "train", str(path), "--no-progress"],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    events = tmp_path / "runs" / "busy" / "metrics.jsonl"
    try:
        end = time.time() + 300
        while not (events.exists() and events.read_text().count("\n") > 2):
            assert first.poll() is None and time.time() < end, first.stderr.read() if first.poll() else "timeout"
            time.sleep(0.05)
        second = cli("train", path, "--no-progress", "--overwrite")
        assert second.returncode == 2
        assert f"in use by a running training (pid {first.pid})" in second.stderr
        assert first.poll() is None  # the first run was not disturbed
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait()
    with RunFolder(tmp_path / "runs" / "busy").lock():  # the kernel released the killed run's lock
        pass


def test_stale_temporary_files_are_removed_at_the_next_start(tiny_backbone, tmp_path, finished):
    run = copy_of(finished, tmp_path)
    (run / ".model.safetensors.abc123.tmp").write_bytes(b"half")
    (run / "checkpoints" / ".tmp-xyz").mkdir()
    train(resume=run, overrides=["train.max_steps=12"], progress=False)
    assert not list(run.glob(".*.tmp")) and not list((run / "checkpoints").glob(".tmp-*"))


# -- resume keeps its word -----------------------------------------------------------------------


def test_resume_saves_and_records_allowed_changes(tiny_backbone, tmp_path, finished):
    run = copy_of(finished, tmp_path)
    train(resume=run, overrides=["train.max_steps=14"], progress=False)
    folder = RunFolder(run)
    assert folder.read_config().train.max_steps == 14  # the next resume keeps it
    (change,) = folder.events("resume_changes")
    assert change["changed"] == ["train.max_steps"] and change["forced"] == [] and change["step"] == 10
    assert RunFolder(run).read_summary()["steps"] == 14


def test_resume_refuses_trajectory_changes_unless_allowed(tiny_backbone, tmp_path, finished):
    run = copy_of(finished, tmp_path)
    with pytest.raises(ConfigError, match="train.lr, train.batch_size|train.batch_size, train.lr"):
        train(resume=run, overrides=["train.lr=0.5", "train.batch_size=4", "train.max_steps=12"], progress=False)
    cfg = yaml.safe_load((run / "config.yaml").read_text())
    cfg["seed"] = 99  # a hand edit of the run's config is a change too
    (run / "config.yaml").write_text(yaml.safe_dump(cfg))
    with pytest.raises(ConfigError, match="seed"):
        train(resume=run, progress=False)
    train(resume=run, overrides=["train.max_steps=12"], progress=False, allow_changes=True)
    (change,) = RunFolder(run).events("resume_changes")
    assert change["forced"] == ["seed"]


def test_config_and_resume_together_is_an_error(tiny_backbone, tmp_path, finished):
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(config(tiny_backbone, tmp_path)))
    proc = cli("train", path, "--resume", finished, "--no-progress")
    assert proc.returncode == 2 and "not both" in proc.stderr


# -- weights, hashes and damaged files -------------------------------------------------------------


def test_kill_between_hash_and_weights_keeps_the_old_weights_valid(tmp_path, monkeypatch):
    path = tmp_path / "model.safetensors"
    old = torch.nn.Linear(4, 2)
    rf.save_weights(old, path, {"step": 3})

    def killed(src, dst):  # the process dies after model.json is written, before the rename
        raise KeyboardInterrupt

    monkeypatch.setattr(rf.os, "replace", killed)
    with pytest.raises(KeyboardInterrupt):
        rf.save_weights(torch.nn.Linear(4, 2), path, {"step": 6})
    monkeypatch.undo()
    fresh = torch.nn.Linear(4, 2)
    assert rf.load_weights(fresh, path)["step"] == 3
    assert torch.equal(fresh.weight, old.weight)
    rf.save_weights(torch.nn.Linear(4, 2), path, {"step": 9})
    assert rf.load_weights(torch.nn.Linear(4, 2), path)["step"] == 9


@pytest.mark.parametrize("damaged, message", [
    ("vocab.json", "vocab.json cannot be read"),
    ("model.json", "model.json cannot be read"),
    ("polytask.json", "polytask.json cannot be read"),
])
def test_damaged_json_is_one_error_line(tmp_path, finished, damaged, message):
    run = copy_of(finished, tmp_path)
    (run / damaged).write_text('{"cut sh')
    proc = cli("predict", run, "--text", "a film")
    assert proc.returncode == 2 and message in proc.stderr and "Traceback" not in proc.stderr


def test_empty_tokenizer_folder_is_one_error_line(tmp_path, finished):
    run = copy_of(finished, tmp_path)
    shutil.rmtree(run / "tokenizer")
    (run / "tokenizer").mkdir()
    proc = cli("predict", run, "--text", "a film")
    assert proc.returncode == 2 and "cannot be loaded as a tokenizer" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_weights_of_another_run_are_a_clear_error(tiny_backbone, tmp_path, finished):
    raw = config(tiny_backbone, tmp_path, name="two")
    raw["tasks"] = tiny_config(tiny_backbone, tmp_path)["tasks"][:2]
    other = train(from_dict(raw), progress=False)
    run = copy_of(finished, tmp_path)
    shutil.copy(other / "model.safetensors", run / "model.safetensors")
    shutil.copy(other / "model.json", run / "model.json")
    with pytest.raises(CheckpointError, match="does not fit the model"):
        Predictor.load(run)


def test_partial_last_event_line_is_dropped_and_resume_works(tmp_path, finished):
    run = copy_of(finished, tmp_path)
    folder = RunFolder(run)
    complete = folder.events()
    with open(run / "metrics.jsonl", "a") as fh:
        fh.write('{"kind": "train", "st')  # a kill while appending
    assert folder.events() == complete
    train(resume=run, overrides=["train.max_steps=12"], progress=False)
    assert [e["step"] for e in folder.events("train")] == list(range(1, 13))


# -- no code from a run folder ------------------------------------------------------------------


def test_run_folder_code_is_not_imported(tmp_path, finished):
    run = copy_of(finished, tmp_path)
    marker = tmp_path / "code-ran"
    (run / "evil_task.py").write_text(f"open({str(marker)!r}, 'w').write('ran')\nclass Task: pass\n")
    cfg = yaml.safe_load((run / "config.yaml").read_text())
    cfg["tasks"][0]["type"] = "evil_task:Task"
    (run / "config.yaml").write_text(yaml.safe_dump(cfg))
    env_path = os.pathsep.join([str(run), os.environ.get("PYTHONPATH", "")])
    proc = subprocess.run([sys.executable, "-m", "polytask.cli", "predict", ".", "--text", "a film"], cwd=run,
                          capture_output=True, text=True, timeout=600, env={**os.environ, "PYTHONPATH": env_path})
    assert proc.returncode == 2
    assert "evil_task:Task" in proc.stderr and "--allow-code" in proc.stderr
    assert not marker.exists()
    with pytest.raises(ConfigError, match="allow_code=True"):  # the change accepted, the code still refused
        train(resume=run, progress=False, allow_changes=True)
    assert not marker.exists()


@pytest.mark.parametrize("where", ["file", "proc"])
def test_unwritable_output_is_one_error_line(tiny_backbone, tmp_path, where):
    blocker = tmp_path / "blocker"
    blocker.write_text("a file, not a folder")
    output = {"file": blocker, "proc": Path("/proc/polytask-runs")}[where]
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(config(tiny_backbone, tmp_path)))
    proc = cli("train", path, f"output_dir={output}", "--no-progress")
    assert proc.returncode == 2, proc.stderr
    assert "error: cannot read or write" in proc.stderr and "Traceback" not in proc.stderr


def test_a_failed_start_leaves_no_run_folder_and_files_are_readable_by_others(tiny_backbone, tmp_path):
    raw = config(tiny_backbone, tmp_path, name="nope")
    raw["model"]["backbone"] = str(tmp_path / "missing-model")
    with pytest.raises(ConfigError, match="path not found"):
        train(from_dict(raw), progress=False)
    assert not (tmp_path / "runs" / "nope").exists()
    run = train(from_dict(config(tiny_backbone, tmp_path, name="shared")), progress=False)
    umask = os.umask(0)
    os.umask(umask)
    for name in ("config.yaml", "model.safetensors", "model.json", "summary.json", "metrics.jsonl"):
        assert (run / name).stat().st_mode & 0o777 == 0o666 & ~umask, name
    checkpoint = next((run / "checkpoints").iterdir())
    assert checkpoint.stat().st_mode & 0o777 == 0o777 & ~umask


def test_drop_checkpoints_only_once_the_run_is_finished(tmp_path):
    folder = RunFolder(tmp_path / "run")
    step = tmp_path / "run" / RunFolder.CHECKPOINTS / "step-0000004"
    step.mkdir(parents=True)
    (step / "state.pt").write_bytes(b"x" * 1000)
    with pytest.raises(CheckpointError, match="not finished"):
        folder.drop_checkpoints()  # an unfinished run resumes from them
    assert step.exists()
    for name in (RunFolder.SUMMARY, RunFolder.CONFIG, RunFolder.WEIGHTS):
        (tmp_path / "run" / name).write_text("{}")
    assert folder.drop_checkpoints() == 1000
    assert not folder.has_checkpoints() and folder.is_finished()
    assert folder.drop_checkpoints() == 0
