"""Every fenced code block of README.md runs, in the order a new user meets them, in one folder.

The blocks run one after another in one temporary clone-like folder (``polytask/`` with the
repository's ``examples/`` and ``Makefile`` copied, beside ``shared/data``, a link to the real
data), so a block sees what the blocks before it left there, as after a fresh clone:

- ``bash`` blocks: every command runs through the real CLI, with small overrides so that it
  takes seconds: ``polytask train`` gets the tiny random BERT (``model.backbone=...``),
  ``train.max_steps=2`` and small ``max_train`` (a ``train.max_steps`` the README gives, as in
  ``--resume ... train.max_steps=3000``, becomes 4). ``polytask serve`` starts in the background
  on a free port and the ``curl`` lines call it there (with the port rewritten). ``make demo``
  runs the Makefile's own ``demo`` recipe (its ``polytask`` command, with the same small
  overrides), twice: it must be re-runnable. ``make test`` and ``make setup`` only check that
  the Makefile has the target (they would run this suite again, or build a virtual
  environment); ``. .venv/bin/activate`` is what the test's own interpreter already is.
  Commands that need ../shared/data are skipped with a reason when it is absent.
- ``python`` blocks run as scripts in the folder, after ``make demo``'s run: in the fast test
  with the tiny BERT and a few steps (``"train.max_steps=100"`` rewritten), in the slow test as
  written (the demo on the real MiniLM for 100 steps).
- ``yaml`` blocks load with the config loader.
- Blocks without a language are output samples (an error message), not code.

A new block in another language, or a shell command this file does not know, fails the test.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
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


def commands(body: str) -> list[list[str]]:
    """Shell lines of a block: continuations joined, comments and blank lines dropped."""
    joined = re.sub(r"\\\n\s*", " ", body)
    out = []
    for line in joined.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            out.append(shlex.split(line, comments=True))
    return out


def make_recipe(target: str) -> list[list[str]]:
    """The shell commands of a Makefile target's recipe (tab-indented lines after ``target:``)."""
    text = (REPO / "Makefile").read_text()
    match = re.search(rf"^{target}:.*\n((?:\t.*\n)+)", text, flags=re.M)
    assert match, f"the Makefile has no recipe for {target}"
    return [shlex.split(line, comments=True) for line in match.group(1).splitlines()]


def test_every_block_is_known():
    langs = {lg for lg, _ in blocks()}
    assert langs <= {"bash", "python", "yaml", ""}, langs
    assert blocks("python") and blocks("bash") and blocks("yaml")


def test_make_targets_exist():
    """``make`` lines name targets of the Makefile (``make test``/``setup`` are checked, not run)."""
    targets = set(re.findall(r"^([\w-]+):", (REPO / "Makefile").read_text(), flags=re.M))
    for _, body in blocks("bash"):
        for cmd in commands(body):
            if cmd[0] == "make":
                assert cmd[1] in targets, cmd


def test_demo_recipe_overwrites():
    """``make demo`` trains the demo with --overwrite (a second ``make demo`` replaces runs/demo)."""
    recipe = make_recipe("demo")
    assert any(cmd[:3] == ["$(BIN)/polytask", "train", "examples/demo.yaml"] and "--overwrite" in cmd
               for cmd in recipe), recipe


def test_yaml_blocks_load_with_the_config_loader(tmp_path):
    from polytask.config import load_config

    for i, (_, body) in enumerate(blocks("yaml")):
        path = tmp_path / f"block{i}.yaml"
        path.write_text(body)
        assert load_config(path).tasks, body


def clone_like(tmp_path: Path) -> Path:
    """``tmp_path/polytask`` as a fresh clone looks to the README (examples/, Makefile), beside
    ``tmp_path/shared/data`` (a link to the real data, when there is any)."""
    root = tmp_path / "polytask"
    root.mkdir()
    shutil.copytree(REPO / "examples", root / "examples")
    shutil.copy(REPO / "Makefile", root / "Makefile")
    if SHARED_DATA.exists():
        (tmp_path / "shared").mkdir()
        (tmp_path / "shared" / "data").symlink_to(SHARED_DATA)
    return root


class Walk:
    """Runs the README's blocks in order in ``cwd`` (a clone-like folder), with the substitutions
    described above; ``as_written``: the Python blocks unchanged (the real MiniLM)."""

    def __init__(self, cwd: Path, backbone: str, as_written: bool = False):
        self.cwd, self.backbone, self.as_written = cwd, backbone, as_written
        self.port = free_port()
        self.servers: list[subprocess.Popen] = []
        (cwd / "questions.jsonl").write_text(
            "\n".join(json.dumps({"text": t}) for t in ("Who wrote Hamlet?", "a gorgeous, witty film")) + "\n")

    def block(self, index: int, lang: str, body: str) -> None:
        """One README block: shell commands, a Python script, a YAML config, or an output sample."""
        if lang == "bash":
            for cmd in commands(body):
                self.run(cmd)
        elif lang == "python":
            self.python(index, body)
        elif lang == "yaml":
            from polytask.config import load_config

            path = self.cwd / f"block{index}.yaml"
            path.write_text(body)
            assert load_config(path).tasks, body

    def python(self, index: int, body: str) -> None:
        if not self.as_written:  # the tiny BERT and a few steps instead of MiniLM for 100
            assert '"train.max_steps=100"' in body, "update the rewrite of the README's Python block"
            body = body.replace('"train.max_steps=100"',
                                f'"train.max_steps=4", "train.eval_every=2", "model.backbone={self.backbone}"')
        script = self.cwd / f"block{index}.py"
        script.write_text(body)
        proc = subprocess.run([sys.executable, str(script)], cwd=self.cwd, env=ENV, capture_output=True,
                              text=True, timeout=1800)
        assert proc.returncode == 0, (body, proc.stdout[-2000:], proc.stderr[-3000:])

    def rewrite(self, cmd: list[str]) -> list[str]:
        out = []
        for arg in cmd:
            if arg.startswith("train.max_steps="):  # `--resume ... train.max_steps=3000`: a few more steps
                arg = "train.max_steps=4"
            out.append(arg.replace("localhost:8000", f"127.0.0.1:{self.port}"))
        return out

    def run(self, cmd: list[str]) -> None:
        if cmd[:2] == ["make", "demo"]:
            for _ in range(2):  # re-runnable: the second replaces the first's runs/demo
                for line in make_recipe("demo"):
                    assert line[0] == "$(BIN)/polytask", line
                    self.run(["polytask", *line[1:]])
            return
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
        self.polytask([a for a in cmd[1:] if a != "&"])

    def polytask(self, args: list[str]) -> None:
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


def walk(tmp_path: Path, backbone: str, as_written: bool) -> Path:
    """Every block of the README in order, in one clone-like folder; returns the folder."""
    root = clone_like(tmp_path)
    shell = Walk(root, backbone, as_written)
    # the README's "--resume runs/glue" block continues a run named glue: train one first
    shell.run(["polytask", "train", "examples/sst2_trec.yaml", "data_dir=../shared/data", "name=glue"])
    try:
        for i, (lang, body) in enumerate(blocks()):
            shell.block(i, lang, body)
    finally:
        shell.close()
    return root


def test_readme_blocks_run_in_order(tmp_path, tiny_backbone):
    """Every block in order, in one folder: ``make demo`` (twice), then the quick start, the
    Python block (after the demo's run folder exists), serving, resuming; the tiny BERT."""
    root = walk(tmp_path, tiny_backbone, as_written=False)
    assert (root / "runs" / "demo" / "summary.json").exists()
    assert (root / "predictions.jsonl").exists()
    rows = [json.loads(line) for line in (root / "predictions.jsonl").read_text().splitlines()]
    assert len(rows) == 2 and {"sst2", "trec"} <= set(rows[0])


@pytest.mark.slow
def test_readme_blocks_run_in_order_as_written(tmp_path, tiny_backbone):
    """The same walk with the README's Python block unchanged: the demo on the real MiniLM (100 steps)."""
    walk(tmp_path, tiny_backbone, as_written=True)
