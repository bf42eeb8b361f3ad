"""Reliability, round three (issue 26): no code from a run folder by any path, hostile input never
reaches a traceback, resume verifies before it trains, a full disk is one error line.

Real subprocesses, a real pseudo-terminal (item 1: answering "y" to transformers' prompt must not
run the code), and a real small filesystem (item 7) where the machine allows mounting."""

from __future__ import annotations

import json
import os
import pty
import select
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from conftest import tiny_config
from polytask.config import from_dict
from polytask.train import train

RUN = dict(max_steps=6, eval_every=3, checkpoint_every=3, log_every=1, batch_size=8, keep_checkpoints=2)
SRC = Path(__file__).resolve().parents[1] / "src"


def config(backbone, tmp_path, name="run", **train_args):
    raw = tiny_config(backbone, tmp_path / "runs", **{**RUN, **train_args})
    raw["name"] = name
    raw["tasks"] = raw["tasks"][1:2]  # topic: fast
    return raw


def cli(*args, cwd=None, timeout=300, stdin=None):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    return subprocess.run([sys.executable, "-m", "polytask.cli", *map(str, args)], capture_output=True, text=True,
                          timeout=timeout, cwd=cwd, env=env, stdin=stdin)


@pytest.fixture(scope="module")
def finished(tiny_backbone, tmp_path_factory) -> Path:
    """A finished tiny run, copied by the tests that change it."""
    return train(from_dict(config(tiny_backbone, tmp_path_factory.mktemp("finished"))), progress=False)


def copy_of(run: Path, tmp_path: Path, name: str = "copy") -> Path:
    target = tmp_path / name
    shutil.copytree(run, target)
    return target


def in_terminal(args: list[str], answer: bytes = b"y\n", timeout: float = 300) -> tuple[int, str]:
    """Run ``args`` on a real pseudo-terminal; answer every ``[y/N]`` prompt with ``answer``."""
    pid, fd = pty.fork()
    if pid == 0:  # the child: stdin, stdout and stderr are the terminal
        os.environ.update(OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1")
        os.execv(sys.executable, [sys.executable, *args])
    out, answered, deadline = b"", 0, time.monotonic() + timeout
    while time.monotonic() < deadline:
        ready, _, _ = select.select([fd], [], [], 1.0)
        if ready:
            try:
                chunk = os.read(fd, 4096)
            except OSError:  # the child closed the terminal
                break
            if not chunk:
                break
            out += chunk
            if out.count(b"[y/N]") > answered:
                answered += 1
                os.write(fd, answer)
    else:
        os.kill(pid, 9)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status), out.decode(errors="replace")


# -- 1. no code from a run folder, by any path -----------------------------------------------------


def plant_code(folder: Path, marker: Path, json_name: str, auto_map: dict, base: str) -> None:
    """Custom code in ``folder`` that marks ``marker`` when imported, named by ``auto_map``."""
    (folder / "evil_code.py").write_text(
        f"open({str(marker)!r}, 'w').write('ran')\n"
        f"from transformers import {base}\n"
        f"class Evil({base}):\n    pass\n")
    meta = json.loads((folder / json_name).read_text())
    meta["auto_map"] = auto_map
    meta.pop("tokenizer_class", None)  # no local class to fall back on: only the folder's code
    (folder / json_name).write_text(json.dumps(meta))


@pytest.mark.parametrize("where", ["tokenizer", "backbone"])
def test_run_folder_custom_code_never_runs_even_answered_yes_in_a_terminal(finished, tmp_path, where):
    run = copy_of(finished, tmp_path)
    marker = tmp_path / "code-ran"
    if where == "tokenizer":
        plant_code(run / "tokenizer", marker, "tokenizer_config.json",
                   {"AutoTokenizer": [None, "evil_code.Evil"]}, "BertTokenizerFast")
    else:
        plant_code(run / "backbone", marker, "config.json",
                   {"AutoConfig": "evil_code.Evil", "AutoModel": "evil_code.Evil"}, "BertConfig")
        meta = json.loads((run / "backbone" / "config.json").read_text())
        meta["model_type"] = "evil-model"  # no local code: transformers would need the folder's
        (run / "backbone" / "config.json").write_text(json.dumps(meta))
    code, out = in_terminal(["-m", "polytask.cli", "predict", str(run), "--text", "x"])
    assert not marker.exists(), out
    assert "[y/N]" not in out, out
    assert code == 2 and "--allow-code" in out and "Traceback" not in out, out


# -- 2. a missing model.json is an error, not a skipped check --------------------------------------


def test_missing_weights_manifest_is_an_error_unless_vouched_for(finished, tmp_path):
    run = copy_of(finished, tmp_path)
    (run / "model.json").unlink()
    proc = cli("predict", run, "--text", "a film")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    assert "model.json is missing" in proc.stderr and "trust-weights" in proc.stderr, proc.stderr
    (run / "model.json").write_text("{}")  # a hand-made manifest without a hash is no better
    assert "holds no sha256" in cli("predict", run, "--text", "a film").stderr
    vouch = subprocess.run([sys.executable, "-m", "polytask.run_folder", "trust-weights", str(run)],
                           capture_output=True, text=True, timeout=120)
    assert vouch.returncode == 0, vouch.stderr
    proc = cli("predict", run, "--text", "a film")
    assert proc.returncode == 0 and json.loads(proc.stdout)["topic"], proc.stderr


# -- 3. weights that are not a regular file are refused, never read --------------------------------


@pytest.mark.parametrize("kind", ["dev-zero", "fifo"])
def test_weights_that_are_not_a_regular_file_are_refused_at_once(finished, tmp_path, kind):
    run = copy_of(finished, tmp_path)
    (run / "model.safetensors").unlink()
    if kind == "dev-zero":
        (run / "model.safetensors").symlink_to("/dev/zero")
    else:
        os.mkfifo(run / "model.safetensors")
    for args in (["predict", run, "--text", "a film"], ["evaluate", run], ["serve", run, "--port", "1"]):
        start = time.monotonic()
        proc = cli(*args, timeout=120)
        assert proc.returncode == 2 and "Traceback" not in proc.stderr, (args, proc.stderr)
        assert "model.safetensors is not a regular file" in proc.stderr, (args, proc.stderr)
        assert time.monotonic() - start < 60


def test_a_checkpoint_file_that_is_a_fifo_is_skipped_as_damaged(finished, tmp_path):
    from polytask.run_folder import latest_good_checkpoint

    run = copy_of(finished, tmp_path)
    newest = sorted((run / "checkpoints").glob("step-*"))[-1]
    (newest / "state.json").unlink()
    os.mkfifo(newest / "state.json")
    warnings: list[str] = []
    assert latest_good_checkpoint(run, warn=warnings.append) != newest
    assert "state.json is not a regular file" in warnings[0]


# -- 4. a resume verifies what it needs, and writes nothing when refused ---------------------------


def test_resume_with_damaged_best_weights_is_refused_before_training(finished, tmp_path):
    run = copy_of(finished, tmp_path)
    data = bytearray((run / "model.safetensors").read_bytes())
    data[-1] ^= 0xFF
    (run / "model.safetensors").write_bytes(bytes(data))
    config_before, events_before = (run / "config.yaml").read_bytes(), (run / "metrics.jsonl").read_bytes()
    proc = cli("train", "--resume", run, "train.max_steps=9", "--no-progress")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    assert "model.safetensors is corrupted" in proc.stderr, proc.stderr
    assert (run / "config.yaml").read_bytes() == config_before
    assert (run / "metrics.jsonl").read_bytes() == events_before
    assert sorted(p.name for p in (run / "checkpoints").glob("step-*")) == ["step-0000003", "step-0000006"]


def test_resume_refused_for_code_writes_nothing(finished, tmp_path):
    run = copy_of(finished, tmp_path)
    marker = tmp_path / "code-ran"
    (run / "evil_task.py").write_text(f"open({str(marker)!r}, 'w').write('ran')\nclass Task: pass\n")
    cfg = yaml.safe_load((run / "config.yaml").read_text())
    cfg["tasks"][0]["type"] = "evil_task:Task"
    (run / "config.yaml").write_text(yaml.safe_dump(cfg))
    config_before, events_before = (run / "config.yaml").read_bytes(), (run / "metrics.jsonl").read_bytes()
    proc = cli("train", "--resume", run, "train.max_steps=9", "--allow-changes", "--no-progress", cwd=run)
    assert proc.returncode == 2 and "--allow-code" in proc.stderr, proc.stderr
    assert not marker.exists()
    assert (run / "config.yaml").read_bytes() == config_before
    assert (run / "metrics.jsonl").read_bytes() == events_before


# -- 5. lone surrogates are rejected where they enter, with file and line --------------------------


def test_lone_surrogates_are_rejected_with_file_and_line(finished, tmp_path):
    inputs = tmp_path / "inputs.jsonl"
    inputs.write_text('{"text": "a fine film"}\n{"text": "bad \\ud800 text"}\n')
    proc = cli("predict", finished, "--task", "topic", "--input", inputs)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    assert f"{inputs}:2" in proc.stderr and "lone surrogate" in proc.stderr, proc.stderr
    train_file = tmp_path / "train.jsonl"
    train_file.write_text("".join(f'{{"text": "film {i}", "label": "{i % 2}"}}\n' for i in range(8))
                          + '{"text": "\\udc00", "label": "1"}\n')
    raw = yaml.safe_load((finished / "config.yaml").read_text())
    raw["tasks"] = [{"name": "t", "type": "classification", "data": {"train": str(train_file)}}]
    raw["output_dir"] = str(tmp_path / "runs")
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(raw))
    for command in ("check", "train"):
        proc = cli(command, path, *(["--no-progress"] if command == "train" else []))
        assert proc.returncode == 2 and "Traceback" not in proc.stderr, (command, proc.stderr)
        assert f"{train_file}:9" in proc.stderr and "lone surrogate" in proc.stderr, (command, proc.stderr)
    from polytask.errors import DataError
    from polytask.predict import Predictor

    with pytest.raises(DataError, match="lone surrogate"):
        Predictor.load(finished).predict("topic", ["ok", "bad \ud800"])


# -- 8. settings that passed check and crashed train: check names their key -------------------------

NAN = float("nan")
BAD_SETTINGS = [
    ({"seed": 2**32}, "seed: must be in 0..4294967295"),
    ({"sampling": {"name": "temperature", "args": {"T": NAN}}}, "sampling.args: T:"),
    ({"sampling": {"name": "temperature", "args": {"T": None}}}, "sampling.args: T:"),
    ({"architecture": {"name": "mmoe", "args": {"n_experts": 0}}}, "architecture.args.n_experts"),
    ({"architecture": {"name": "mmoe", "args": {"n_expert": 4}}}, "architecture.args:"),
    ({"tasks": [{"name": "weather", "type": "classification", "data": {"format": "synthetic"}}]},
     "tasks[0].name: no synthetic task 'weather'"),
    ({"tasks": [{"name": "topic", "type": "classification", "data": {"format": "synthetic", "max_train": 10**12}}]},
     "tasks[0].data.max_train: at most"),
    ({"train": {"max_steps": 10**12}}, "train.max_steps:"),
]


@pytest.mark.parametrize("change,message", BAD_SETTINGS, ids=[m.split(":")[0] for _, m in BAD_SETTINGS])
def test_check_names_settings_that_used_to_crash_train(tiny_backbone, tmp_path, change, message):
    raw = config(tiny_backbone, tmp_path)
    for key, value in change.items():
        raw[key] = {**raw[key], **value} if isinstance(value, dict) and isinstance(raw.get(key), dict) else value
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(raw))
    start = time.monotonic()
    proc = cli("check", path, timeout=120)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    assert message in proc.stderr and "TypeError" not in proc.stderr, proc.stderr
    assert time.monotonic() - start < 100


# -- 11. a second compare into a folder in use fails at once ---------------------------------------


def test_second_compare_into_a_folder_in_use_fails_at_once(tiny_backbone, tmp_path):
    from conftest import demo_tasks

    raw = tiny_config(tiny_backbone, tmp_path / "out", max_steps=400, batch_size=8, eval_every=200, log_every=50)
    raw["name"] = "busy"
    raw["tasks"] = demo_tasks(n_train=64, n_eval=16)[:2]
    raw["compare"] = {"isolate": False, "inference_examples": 0, "budget": "steps", "methods": [{"name": "ew"}]}
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(raw))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    first = subprocess.Popen([sys.executable, "-m", "polytask.cli", "compare", str(path), "--no-progress"],
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    try:
        plan = tmp_path / "out" / "busy" / "plan.json"
        deadline = time.monotonic() + 300
        while not plan.exists() and first.poll() is None and time.monotonic() < deadline:
            time.sleep(0.5)
        assert plan.exists() and first.poll() is None, first.stdout.read() if first.poll() is not None else ""
        start = time.monotonic()
        second = cli("compare", path, "--no-progress", timeout=300)
        assert second.returncode == 2 and "Traceback" not in second.stderr, second.stderr
        assert "in use by another polytask compare" in second.stderr and f"pid {first.pid}" in second.stderr
        assert time.monotonic() - start < 60  # at once: no sub-run trained first
        assert first.poll() is None  # the first compare keeps going
    finally:
        first.kill()
        first.wait(timeout=60)


# -- 7. a full disk while saving is one error line; what was saved survives --------------------------


@pytest.fixture
def small_disk(tmp_path):
    """A real 10 MB tmpfs: room for the first best weights, not for the checkpoint that follows."""
    mount = tmp_path / "disk"
    mount.mkdir()
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=10m", "tmpfs", str(mount)], capture_output=True,
                          text=True)
    if proc.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here (needs root or CAP_SYS_ADMIN): {proc.stderr.strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], capture_output=True)


def test_full_disk_while_saving_is_one_error_line_and_the_best_survives(tiny_backbone, tmp_path, small_disk):
    raw = config(tiny_backbone, tmp_path)
    raw["output_dir"] = str(small_disk)
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(raw))
    proc = cli("train", path, "--no-progress")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "No space left on device" in errors[0], proc.stderr[-3000:]
    assert "intact" in errors[0] and "--resume" in errors[0], errors
    from polytask.run_folder import check_weights

    run = small_disk / "run"
    assert check_weights(run / "model.safetensors")["step"] == 3  # the best weights saved before survive
    assert not [p for p in (run / "checkpoints").iterdir() if p.name.startswith(".tmp-")]
