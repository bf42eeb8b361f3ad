"""Reliability guarantees (docs/reliability.md): exact resume after SIGKILL and SIGTERM,
corrupted checkpoints detected and skipped, non-finite losses handled by policy, safe loading."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from polytask import run_folder as ckpt
from polytask.config import from_dict
from polytask.errors import CheckpointError, ConfigError
from polytask.train import NonFiniteError, train

from conftest import tiny_config


def trajectory(run_dir: Path):
    """Every train and eval event, without wall-clock fields."""
    out = []
    for line in (run_dir / "metrics.jsonl").read_text().splitlines():
        e = json.loads(line)
        if e["kind"] in ("train", "eval"):
            e.pop("elapsed", None)
            out.append(e)
    return out


def write_config(tmp_path, backbone, name, **train_args):
    cfg = tiny_config(backbone, tmp_path / "runs", **train_args)
    cfg["name"] = name
    cfg["tasks"] = cfg["tasks"][1:3]  # topic + similarity: fast
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def start(args, env=None):
    return subprocess.Popen([sys.executable, "-m", "polytask.cli", "train", *map(str, args), "--no-progress"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, **(env or {})})


def wait_for(path: Path, proc, timeout=300):
    end = time.time() + timeout
    while not path.exists():
        if proc.poll() is not None:
            raise AssertionError(f"run ended before {path} appeared:\n{proc.stderr.read()}")
        if time.time() > end:
            raise AssertionError(f"timed out waiting for {path}")
        time.sleep(0.02)


RUN = dict(max_steps=60, eval_every=20, checkpoint_every=10, log_every=1, batch_size=8, keep_checkpoints=3)


@pytest.fixture(scope="module")
def reference(tiny_backbone, tmp_path_factory):
    """An uninterrupted run to compare against."""
    tmp = tmp_path_factory.mktemp("ref")
    proc = start([write_config(tmp, tiny_backbone, "ref", **RUN)])
    assert proc.wait() == 0, proc.stderr.read()
    return trajectory(tmp / "runs" / "ref")


def test_sigkill_then_resume_from_last_good_checkpoint_is_exact(tiny_backbone, tmp_path, reference):
    config = write_config(tmp_path, tiny_backbone, "killed", **RUN)
    run_dir = tmp_path / "runs" / "killed"
    proc = start([config])
    wait_for(run_dir / "checkpoints" / "step-0000030", proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    # damage the newest checkpoint: resume must detect it and use the previous one
    newest = sorted((run_dir / "checkpoints").glob("step-*"))[-1]
    weights = newest / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    proc = start(["--resume", run_dir])
    out, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err
    assert f"skipping checkpoint {newest}" in out + err and "corrupted or truncated" in out + err
    assert trajectory(run_dir) == reference


def test_sigterm_writes_checkpoint_and_resume_is_exact(tiny_backbone, tmp_path, reference):
    config = write_config(tmp_path, tiny_backbone, "termed", **RUN)
    run_dir = tmp_path / "runs" / "termed"
    proc = start([config])
    wait_for(run_dir / "checkpoints" / "step-0000010", proc)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "SIGTERM at step" in err and "polytask train --resume" in err
    stopped = json.loads((run_dir / "metrics.jsonl").read_text().splitlines()[-1])
    assert stopped["kind"] == "interrupted"
    assert (run_dir / "checkpoints" / f"step-{stopped['step']:07d}").exists()
    proc = start(["--resume", run_dir])
    assert proc.wait(timeout=600) == 0, proc.stderr.read()
    assert trajectory(run_dir) == reference


def test_repeated_sigterm_does_not_interrupt_the_checkpoint():
    """The first signal sets the flag; a repeated SIGTERM (a scheduler, a parent-death signal)
    is ignored; a second Ctrl-C stops at once."""
    from polytask.train import StopFlag

    with StopFlag() as stop:
        os.kill(os.getpid(), signal.SIGTERM)
        os.kill(os.getpid(), signal.SIGTERM)
        assert stop.signum == signal.SIGTERM
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)


def test_bit_flip_and_truncation_detected(tmp_path):
    def writer(content):
        return lambda d: (d / "model.safetensors").write_bytes(content)

    for step in (10, 20, 30):
        ckpt.save_checkpoint(tmp_path, step, writer(bytes(range(256)) * (step + 1)), keep=2)
    kept = sorted(p.name for p in (tmp_path / "checkpoints").iterdir())
    assert kept == ["step-0000020", "step-0000030"]  # only the newest K
    newest = tmp_path / "checkpoints" / "step-0000030" / "model.safetensors"
    data = bytearray(newest.read_bytes())
    data[100] ^= 0x01  # one bit
    newest.write_bytes(bytes(data))
    assert "hash mismatch" in ckpt.verify_checkpoint(newest.parent)
    warnings = []
    assert ckpt.latest_good_checkpoint(tmp_path, warn=warnings.append).name == "step-0000020"
    assert "step-0000030" in warnings[0]
    older = tmp_path / "checkpoints" / "step-0000020" / "model.safetensors"
    older.write_bytes(older.read_bytes()[:10])  # truncated
    assert ckpt.latest_good_checkpoint(tmp_path, warn=warnings.append) is None


def test_best_weights_hash_checked(tmp_path):
    import torch

    model = torch.nn.Linear(4, 2)
    path = tmp_path / "model.safetensors"
    ckpt.save_weights(model, path, {"step": 3})
    assert ckpt.load_weights(torch.nn.Linear(4, 2), path)["step"] == 3
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="corrupted or truncated"):
        ckpt.load_weights(torch.nn.Linear(4, 2), path)


def nan_config(backbone, tmp_path, policy, **train_args):
    cfg = tiny_config(backbone, tmp_path, max_steps=12, eval_every=12, log_every=1, on_nonfinite=policy, **train_args)
    cfg["tasks"] = [dict(cfg["tasks"][1], type="nan_task:NaNTask")]
    return from_dict(cfg)


def test_nan_loss_skipped_and_counted(tiny_backbone, tmp_path, monkeypatch):
    monkeypatch.setenv("POLYTASK_TEST_NAN_CALLS", "4,7")
    run_dir = train(nan_config(tiny_backbone, tmp_path, "skip"), progress=False)
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["skipped_batches"] == 2 and summary["steps"] == 12
    events = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    faults = [e for e in events if e["kind"] == "nonfinite"]
    assert [(e["step"], e["task"], e["what"]) for e in faults] == [(4, "topic", "loss"), (7, "topic", "loss")]
    assert all(e["first_example"].startswith("synthetic:topic:train:") for e in faults)


def test_nan_loss_stops_with_report(tiny_backbone, tmp_path, monkeypatch):
    monkeypatch.setenv("POLYTASK_TEST_NAN_CALLS", "5")
    with pytest.raises(NonFiniteError, match=r"non-finite loss in task 'topic' at step 5 \(batch of 16 examples"):
        train(nan_config(tiny_backbone, tmp_path, "stop"), progress=False)


def test_too_many_skips_stop_the_run(tiny_backbone, tmp_path, monkeypatch):
    monkeypatch.setenv("POLYTASK_TEST_NAN_CALLS", "2,3,4")
    with pytest.raises(NonFiniteError, match="3 batches skipped within 100 steps"):
        train(nan_config(tiny_backbone, tmp_path, "skip", max_skips=2), progress=False)


def test_run_folder_from_newer_version_refused(tiny_backbone, tmp_path):
    from polytask import load

    run_dir = train(from_dict(tiny_config(tiny_backbone, tmp_path, max_steps=2, eval_every=2)), progress=False)
    suffixes = {p.suffix for p in run_dir.rglob("*") if p.is_file()}
    assert not suffixes & {".bin", ".pt", ".pth", ".pkl", ".ckpt"}  # nothing pickled is written
    marker = run_dir / "polytask.json"
    marker.write_text(json.dumps({"format": 99}))
    with pytest.raises(CheckpointError, match="newer polytask"):
        load(run_dir)
    with pytest.raises(CheckpointError, match="newer polytask"):
        train(resume=run_dir, progress=False)


def test_tokenizer_model_mismatch(tmp_path, tiny_backbone):
    from transformers import AutoTokenizer, BertConfig, BertModel

    from polytask.backbones.encoder import load_encoder

    BertModel(BertConfig(vocab_size=100, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                         intermediate_size=16)).save_pretrained(tmp_path)
    AutoTokenizer.from_pretrained(tiny_backbone).save_pretrained(tmp_path)
    with pytest.raises(ConfigError, match="tokenizer/model mismatch"):
        load_encoder(str(tmp_path))


def test_missing_backbone_path_named(tmp_path):
    from polytask.backbones.encoder import load_encoder

    with pytest.raises(ConfigError, match="model.backbone: path not found"):
        load_encoder(str(tmp_path / "nope"))


def test_nonfinite_report_names_the_offending_examples(tiny_backbone, tmp_path):
    rows = [{"text": f"plain sentence number {i}", "label": "ab"[i % 2]} for i in range(40)]
    rows[21]["text"] = rows[22]["text"] = "POISON here"
    data = tmp_path / "train.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    cfg = tiny_config(tiny_backbone, tmp_path, max_steps=6, eval_every=6, log_every=1, on_nonfinite="stop",
                      batch_size=40)
    cfg["tasks"] = [{"name": "p", "type": "nan_task:PoisonTask", "data": {"train": str(data)}}]
    with pytest.raises(NonFiniteError, match=f"non-finite for: {data}:22, {data}:23"):
        train(from_dict(cfg), progress=False)


def test_two_quick_ctrl_c_stop_with_a_message(tiny_backbone, tmp_path):
    """Two SIGINTs 20 ms apart: the run stops at once and says what that means."""
    config = write_config(tmp_path, tiny_backbone, "twice", **{**RUN, "max_steps": 100000, "eval_every": 10**5,
                                                                "checkpoint_every": 10})
    run_dir = tmp_path / "runs" / "twice"
    proc = start([config])
    wait_for(run_dir / "checkpoints" / "step-0000010", proc)
    proc.send_signal(signal.SIGINT)
    time.sleep(0.02)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode != 0
    assert "second Ctrl-C: stopping now" in err and "--resume" in err
