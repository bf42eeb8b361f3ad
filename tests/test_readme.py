"""Every fenced code block of README.md runs, so the README cannot drift from the code.

- ``bash`` blocks: every command runs, in a temporary folder, through the real CLI, with small
  overrides so that it takes seconds: ``polytask train`` gets the tiny random BERT
  (``model.backbone=...``), ``train.max_steps=2`` and small ``max_train`` (a ``train.max_steps``
  the README gives, as in ``--resume ... train.max_steps=3000``, becomes 4); relative paths
  (``examples/``, ``../shared/data``) point at the repository's and the shared data; ``runs/``
  is the temporary folder's. ``polytask serve`` starts in the background on a free port and the
  ``curl`` lines call it there (with the port rewritten). Exceptions, not executed: ``make``
  lines only check that the Makefile has the target (``make test`` would run this test again,
  and ``make demo``/``setup`` build a virtual environment); ``. .venv/bin/activate`` is what
  the test's own interpreter already is. Commands that need ../shared/data are skipped with a
  reason when it is absent.
- ``python`` blocks run as written in a temporary folder (with ``examples/`` linked): the
  README's block trains the demo on the real MiniLM for 100 steps, so it is marked slow.
- ``yaml`` blocks load with the config loader.
- Blocks without a language are output samples (an error message), not code.

A new block in another language, or a shell command this file does not know, fails the test.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO, SHARED_DATA, free_port

README = REPO / "README.md"
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
# per command: the overrides that make it fast (appended to `polytask train`)
TRAIN_OVERRIDES = ["train.max_steps=2", "train.eval_every=2", "train.log_every=1"]


def blocks(lang: str | None = None) -> list[tuple[str, str]]:
    found = re.findall(r"^```(\w*)\n(.*?)^```", README.read_text(), flags=re.S | re.M)
    return [(lg, body) for lg, body in found if lang is None or lg == lang]


def commands(body: str) -> list[str]:
    """Shell lines of a block: continuations joined, comments and blank lines dropped."""
    joined = re.sub(r"\\\n\s*", " ", body)
    out = []
    for line in joined.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            out.append(shlex.split(line, comments=True))
    return out


def test_every_block_is_known():
    langs = {lg for lg, _ in blocks()}
    assert langs <= {"bash", "python", "yaml", ""}, langs
    assert blocks("python") and blocks("bash") and blocks("yaml")


def test_make_targets_exist():
    """``make`` lines are checked, not run (they would set up a venv or run this suite again)."""
    targets = set(re.findall(r"^([\w-]+):", (REPO / "Makefile").read_text(), flags=re.M))
    for _, body in blocks("bash"):
        for cmd in commands(body):
            if cmd[0] == "make":
                assert cmd[1] in targets, cmd


def test_yaml_blocks_load_with_the_config_loader(tmp_path):
    from polytask.config import load_config

    for i, (_, body) in enumerate(blocks("yaml")):
        path = tmp_path / f"block{i}.yaml"
        path.write_text(body)
        cfg = load_config(path)
        assert cfg.tasks, body


class Shell:
    """Runs README shell commands in ``cwd`` with the substitutions described above."""

    def __init__(self, cwd: Path, backbone: str):
        self.cwd, self.backbone = cwd, backbone
        self.port = free_port()
        self.servers: list[subprocess.Popen] = []
        (cwd / "questions.jsonl").write_text(
            "\n".join(json.dumps({"text": t}) for t in ("Who wrote Hamlet?", "a gorgeous, witty film")) + "\n")

    def rewrite(self, cmd: list[str]) -> list[str]:
        out = []
        for arg in cmd:
            arg = arg.replace("../shared/data", str(SHARED_DATA))
            if arg.startswith("examples/"):
                arg = str(REPO / arg)
            if arg.startswith("train.max_steps="):  # `--resume ... train.max_steps=3000`: a few more steps
                arg = "train.max_steps=4"
            out.append(arg.replace("localhost:8000", f"127.0.0.1:{self.port}"))
        return out

    def run(self, cmd: list[str]) -> None:
        if cmd[0] == "make":
            return  # test_make_targets_exist
        if cmd[:2] == [".", ".venv/bin/activate"]:
            return
        if any("../shared/data" in a for a in cmd) and not SHARED_DATA.exists():
            pytest.skip("../shared/data is absent")
        cmd = self.rewrite(cmd)
        if cmd[0] == "curl":
            proc = subprocess.run(cmd, cwd=self.cwd, capture_output=True, text=True, timeout=60)
            assert proc.returncode == 0 and "predictions" in json.loads(proc.stdout), (cmd, proc.stdout, proc.stderr)
            return
        assert cmd[0] == "polytask", f"README command not known to tests/test_readme.py: {cmd}"
        args = [a for a in cmd[1:] if a != "&"]
        if args[0] == "train" and not any(a == "--resume" for a in args):
            args += [f"model.backbone={self.backbone}", *TRAIN_OVERRIDES,
                     "tasks.0.data.max_train=48", "tasks.1.data.max_train=48",
                     "tasks.0.data.max_eval=16", "tasks.1.data.max_eval=16"]
        if args[0] == "train":
            args.append("--no-progress")
        if args[0] == "serve":
            return self.serve(args)
        proc = subprocess.run([sys.executable, "-m", "polytask.cli", *args], cwd=self.cwd, env=ENV,
                              capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, (args, proc.stdout[-2000:], proc.stderr[-2000:])

    def serve(self, args: list[str]) -> None:
        args = [a for a in args if a not in ("--port", "8000")] + ["--port", str(self.port), "--log-level", "warning"]
        proc = subprocess.Popen([sys.executable, "-m", "polytask.cli", *args], cwd=self.cwd, env=ENV,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.servers.append(proc)
        from polytask.serve import wait_until_ready

        wait_until_ready(f"http://127.0.0.1:{self.port}", proc, timeout=120)

    def close(self) -> None:
        for proc in self.servers:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=30)


def test_shell_blocks_run(tmp_path, tiny_backbone):
    """Every bash block, in order (later blocks use the run folders of earlier ones)."""
    shell = Shell(tmp_path, tiny_backbone)
    # the README's "--resume runs/glue" block continues a run named glue: train one first
    shell.run(["polytask", "train", "examples/sst2_trec.yaml", "data_dir=../shared/data", "name=glue"])
    try:
        for _, body in blocks("bash"):
            for cmd in commands(body):
                shell.run(cmd)
    finally:
        shell.close()
    assert (tmp_path / "predictions.jsonl").exists()
    rows = [json.loads(line) for line in (tmp_path / "predictions.jsonl").read_text().splitlines()]
    assert len(rows) == 2 and {"sst2", "trec"} <= set(rows[0])


@pytest.mark.slow
def test_python_blocks_run_as_written(tmp_path):
    """The README's Python block, unchanged: trains the demo on the real MiniLM (100 steps)."""
    (tmp_path / "examples").symlink_to(REPO / "examples")
    for i, (_, body) in enumerate(blocks("python")):
        script = tmp_path / f"block{i}.py"
        script.write_text(body)
        proc = subprocess.run([sys.executable, str(script)], cwd=tmp_path, env=ENV, capture_output=True,
                              text=True, timeout=1800)
        assert proc.returncode == 0, (body, proc.stdout[-2000:], proc.stderr[-3000:])
