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
