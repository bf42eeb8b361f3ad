"""Several processes, launched for real through torchrun (gloo on the CPU, tiny random BERT).

N processes with ``train.batch_size`` b train the same model as one process with N*b: equal
per-step losses and final weights, dev and test metrics, for loss weighting with task sampling,
uncertainty weighting, and UPGrad/MGDA in representation and last-layer gradient space. A group
killed with SIGKILL resumes the uninterrupted trajectory; a process that dies takes the others
down in bounded time.

Dropout is off in the equality runs (the processes' dropout masks differ from one process's);
the resume run keeps it on, so it checks that every process's RNG is restored.

Run as a script under torchrun, this file trains the configs named on its command line, one
after another in the same processes (one launch for many runs).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "POLYTASK_PROCESS_TIMEOUT": "60",
       "PYTHONPATH": str(REPO / "src"), "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
CASES = {  # name: (weighting, grad_space)
    "equal": ("equal", "representation"),
    "uncertainty": ("uw", "representation"),
    "upgrad_representation": ("upgrad", "representation"),
    "upgrad_last_layers": ("upgrad", "last_layers"),
    "mgda_representation": ("mgda", "representation"),
    "mgda_last_layers": ("mgda", "last_layers"),
    "token_means": ("upgrad", "representation"),  # tagging: a mean over tokens, not examples
}
TASKS = {"token_means": [3, 0]}  # demo tasks by position; default: the first three (per-example means)


def test_shard_takes_contiguous_slices_and_their_share_of_the_mean():
    from polytask.devices import shard

    assert shard(list(range(8)), 1, 2) == ([4, 5, 6, 7], 1.0)
    assert shard([9, 8, 7, 6, 5], 0, 2) == ([9, 8], 0.8)  # 2 * 2/5: the mean of the scaled means is the mean
    assert shard([9, 8, 7, 6, 5], 1, 2) == ([7, 6, 5], 1.2)
    assert shard([3], 0, 2) == ([3], 0.0) and shard([3], 1, 2) == ([3], 2.0)  # an empty slice counts 0
    # token means: a slice's share counts its tokens (3 of 10 -> 2 * 3/10; 1 + 6 of 10 -> 2 * 7/10)
    assert shard([9, 8, 7], 0, 2, units=[3, 1, 6]) == ([9], 0.6)
    assert shard([9, 8, 7], 1, 2, units=[3, 1, 6]) == ([8, 7], 1.4)
    assert shard([9, 8, 7, 6], 0, 2, units=[0, 0, 5, 1]) == ([7], 0.0)  # nothing to score: one that has, x 0


def test_evaluation_shows_a_progress_bar_over_batches(tiny_backbone, tmp_path, capsys):
    from conftest import tiny_config
    from polytask.backbones.encoder import load_encoder
    from polytask.config import from_dict
    from polytask.dataset import encode_all, prepare
    from polytask.evaluate import evaluate
    from polytask.model import build_model

    cfg = from_dict(tiny_config(tiny_backbone, tmp_path))
    data = prepare(cfg)
    backbone, tok = load_encoder(tiny_backbone)
    encode_all(data, tok, 32)
    model = build_model(cfg, backbone, {n: td.task for n, td in data.items()})
    quiet = evaluate(model, data, "dev", 0, 16)
    assert "eval dev" not in capsys.readouterr().err
    shown = evaluate(model, data, "dev", 0, 16, progress=True)
    err = capsys.readouterr().err
    assert shown == quiet and len(shown) == 4 and "eval dev" in err and "0/12" in err  # 4 tasks x 3 batches


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def torchrun(*args: str, processes: int = 2) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(processes),
            "--master_addr", "127.0.0.1", "--master_port", str(free_port()), *args]


def accelerate_launch(*args: str, processes: int = 2) -> list[str]:
    """Accelerate's launcher; ``--multi_gpu`` starts one process per slot on a CPU-only machine too
    (its ``--cpu`` flag would start a single process)."""
    return [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", str(processes),
            "--num_machines", "1", "--main_process_port", str(free_port()), *args]


def launch(*args: str, timeout: float = 120, launcher=torchrun) -> subprocess.CompletedProcess:
    done = subprocess.run(launcher(*args), env=ENV, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done


def raw_config(backbone: str, out: Path, name: str, weighting: str = "equal", grad_space: str = "representation",
               batch_size: int = 4, dropout: float = 0.0, **train) -> dict:
    from conftest import demo_tasks

    demo = demo_tasks(n_train=21, n_eval=20)  # 21: ragged batches
    tasks = [dict(demo[i], head_dropout=dropout) for i in TASKS.get(name, [0, 1, 2])]
    return {"name": name, "output_dir": str(out), "seed": 5, "model": {"backbone": backbone, "max_length": 32},
            "tasks": tasks, "weighting": {"name": weighting},
            "train": {"mixed_precision": "no", "max_steps": 6, "batch_size": batch_size, "eval_batch_size": 8, "lr": 1e-3, "eval_every": 6,
                      "log_every": 1, "warmup_ratio": 0.0, "grad_space": grad_space, "grad_layers": 1,
                      "device": "cpu", **train}}


@pytest.fixture(scope="module")
def still_backbone(tmp_path_factory, tiny_backbone) -> str:
    """The tiny BERT without dropout: one process and several draw different dropout masks."""
    from transformers import BertConfig

    out = tmp_path_factory.mktemp("still-bert")
    for f in Path(tiny_backbone).iterdir():
        (out / f.name).symlink_to(f)
    (out / "config.json").unlink()
    config = BertConfig.from_pretrained(tiny_backbone, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    config.save_pretrained(out)
    return str(out)


def write_yaml(raw: dict, path: Path) -> str:
    path.write_text(yaml.safe_dump(raw))
    return str(path)


def train_events(run: Path) -> list[dict]:
    events = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [e for e in events if e["kind"] == "train"]


def train_losses(run: Path) -> list[dict]:
    return [e["loss"] for e in train_events(run)]


def weights(run: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(run / "model.safetensors"))


# The two runs sum the same float32 terms in a different order (two partial batch sums reduced
# across processes vs one sum). Each logged loss and gradient norm is such a reduction over at most
# n = 8 examples x 32 tokens = 256 non-negative terms, so it differs by at most gamma_256 (float32)
# relative (Higham, Accuracy and Stability of Numerical Algorithms, 2nd ed., section 3.1): 1.5e-5.
FLOAT32_REDUCTION = 256 * 2.0**-24 / (1 - 256 * 2.0**-24)


def gram_of(event: dict, names: list[str]):
    """The task Gram matrix K (T, T) float64 of one train event, from its logged norms and cosines."""
    import torch

    n = torch.tensor([event["grad_norm"][k] for k in names], dtype=torch.float64)
    C = torch.eye(len(names), dtype=torch.float64)
    for i, a in enumerate(names):
        for j, b in enumerate(names[i + 1:], i + 1):
            C[i, j] = C[j, i] = event["cosine"][f"{a}|{b}"]
    return n[:, None] * C * n[None, :]


def propagated(method: str, Ka, Kb, names: list[str]):
    """First-order change of ``method``'s weights between the Gram matrices Ka and Kb:
    sum over entries e of |dw/dK_e| |Ka_e - Kb_e|, the derivatives by central differences at Ka.

    A gradient method's weights are a function of K alone, so the weights of two runs can differ
    by no more than this (plus second-order terms) once their Gram matrices differ.
    """
    import torch

    from polytask.weighting import build_weighting

    def w(K):
        losses = torch.ones(len(names), dtype=torch.float64)
        return build_weighting(method, names, {}).combine(losses, names, K)[1].double()

    total = torch.zeros(len(names), dtype=torch.float64)
    for i in range(len(names)):
        for j in range(i, len(names)):
            h = 1e-6 * float(Ka[i, i].sqrt() * Ka[j, j].sqrt())
            if h == 0.0:
                continue
            E = torch.zeros_like(Ka)
            E[i, j] = E[j, i] = h
            total += (w(Ka + E) - w(Ka - E)).abs() / (2 * h) * float((Ka[i, j] - Kb[i, j]).abs())
    return total


def assert_same_step(x: dict, y: dict, method: str, atol: float) -> None:
    """Losses and gradient norms within ``atol`` relative; a gradient method's weights within
    ``atol`` plus 4x the change its Gram-matrix difference implies (the factor covers the
    second-order terms and the difference quotients); other methods' weights within ``atol``."""
    from polytask.weighting import REGISTRY

    assert x["loss"].keys() == y["loss"].keys() and x["weights"].keys() == y["weights"].keys(), (x, y)
    assert all(abs(x["loss"][k] - y["loss"][k]) <= atol * max(1.0, abs(x["loss"][k])) for k in x["loss"]), (x, y)
    names = list(x["weights"])
    slack = [0.0] * len(names)
    if REGISTRY[method].needs_grads and "cosine" in x and "cosine" in y:
        Ka, Kb = gram_of(x, names), gram_of(y, names)
        slack = (4 * propagated(method, Ka, Kb, names)).tolist()
    for k, extra in zip(names, slack):
        bound = atol * max(1.0, abs(x["weights"][k])) + extra
        assert abs(x["weights"][k] - y["weights"][k]) <= bound, (k, x["weights"], y["weights"], bound)


def assert_same_run(one: Path, two: Path, atol: float = FLOAT32_REDUCTION) -> None:
    import torch

    a, b = train_events(one), train_events(two)
    assert len(a) == len(b) > 0
    method = yaml.safe_load((one / "config.yaml").read_text())["weighting"]["name"]
    for x, y in zip(a, b):  # the running losses and the task weights of every step
        assert_same_step(x, y, method, atol)
    wa, wb = weights(one), weights(two)
    assert wa.keys() == wb.keys()
    worst = max(float((wa[k].float() - wb[k].float()).abs().max()) for k in wa)
    assert worst <= atol, worst
    sa, sb = (json.loads((r / "summary.json").read_text()) for r in (one, two))
    for split in ("dev", "test"):
        for task, metrics in sa[split].items():
            assert metrics == pytest.approx(sb[split][task], rel=atol, abs=1e-6), (split, task)


@pytest.fixture(scope="module")
def two_process_runs(still_backbone, tiny_backbone, tmp_path_factory) -> Path:
    """Every case's 2 x 4 run, and the uninterrupted reference of the resume test, in one launch
    (through ``accelerate launch``; the resume test launches through ``torchrun``)."""
    out = tmp_path_factory.mktemp("two")
    configs = [write_yaml(raw_config(still_backbone, out, name, w, g), out / f"{name}.yaml")
               for name, (w, g) in CASES.items()]
    configs.append(write_yaml(resume_config(tiny_backbone, out, "whole"), out / "whole.yaml"))
    launch(__file__, *configs, timeout=300, launcher=accelerate_launch)
    return out


def resume_config(backbone: str, out: Path, name: str) -> dict:
    return raw_config(backbone, out, name, dropout=0.1, max_steps=24, checkpoint_every=4, eval_every=12,
                      keep_checkpoints=50)


@pytest.mark.parametrize("case", list(CASES))
def test_two_processes_of_batch_4_train_as_one_of_batch_8(case, still_backbone, two_process_runs, tmp_path,
                                                           monkeypatch):
    from polytask.config import from_dict
    from polytask.train import train

    skip_plots(monkeypatch.setattr)

    weighting, space = CASES[case]
    one = train(from_dict(raw_config(still_backbone, tmp_path, case, weighting, space, batch_size=8)),
                progress=False)
    two = two_process_runs / case
    assert_same_run(Path(one), two)
    (start,) = [json.loads(line) for line in (two / "metrics.jsonl").read_text().splitlines()[:1]]
    assert start["processes"] == 2 and start["effective_batch"] == 8


def test_resume_after_sigkill_of_the_whole_group(tiny_backbone, two_process_runs, tmp_path):
    config = write_yaml(resume_config(tiny_backbone, tmp_path, "whole"), tmp_path / "cut.yaml")
    run = tmp_path / "whole"
    done, at = cut_then_resume(config, run, checkpoint=8)
    assert 8 <= at < 24, done.stdout  # a real cut: steps are left to train
    losses, whole = train_losses(run), train_losses(two_process_runs / "whole")
    assert len(losses) == len(whole) == 24
    assert all(abs(a[k] - b[k]) <= 1e-6 for a, b in zip(losses, whole) for k in a)
    assert_same_run(run, two_process_runs / "whole", atol=1e-6)
    from polytask.errors import CheckpointError
    from polytask.train import train

    with pytest.raises(CheckpointError, match="trained with 2 process"):  # each step's global batch differs
        train(resume=run, progress=False)


def cut_then_resume(config: str, run: Path, checkpoint: int) -> tuple[subprocess.CompletedProcess, int]:
    """Train ``config`` under torchrun, SIGKILL the whole group once checkpoint ``checkpoint``
    exists, resume it under torchrun; returns the resume's output and the step it resumed at."""
    group = subprocess.Popen(torchrun("-m", "polytask.cli", "train", config, "--no-progress"), env=ENV,
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while not (run / "checkpoints" / f"step-{checkpoint:07d}").is_dir() and time.monotonic() < deadline:
            assert group.poll() is None, group.stderr.read()[-3000:]
            time.sleep(0.01)
    finally:
        kill_all(group.pid)
    assert not (run / "summary.json").exists(), "the run ended before it could be killed"
    done = launch("-m", "polytask.cli", "train", "--resume", str(run), "--no-progress")
    (at,) = re.findall(r"resuming \S+ at step (\d+)", done.stdout)
    return done, int(at)


def kill_all(pid: int) -> None:
    """SIGKILL torchrun and its workers at once: torchrun starts each worker in a session of its
    own (torch 2.13), so killing torchrun's process group would leave the workers training."""
    import psutil

    procs = [psutil.Process(pid), *psutil.Process(pid).children(recursive=True)]
    for proc in procs:
        with contextlib.suppress(psutil.NoSuchProcess):
            proc.kill()
    psutil.wait_procs(procs, timeout=30)


def test_a_dying_process_ends_the_group_with_a_message(tiny_backbone, tmp_path):
    import psutil

    config = write_yaml(resume_config(tiny_backbone, tmp_path, "dies") | {}, tmp_path / "dies.yaml")
    group = subprocess.Popen(torchrun("-m", "polytask.cli", "train", config, "--no-progress",
                                      "train.max_steps=100000"), env=ENV, stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while not (tmp_path / "dies" / "metrics.jsonl").exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        time.sleep(1.0)  # training
        workers = psutil.Process(group.pid).children()
        (second,) = [p for p in workers if p.environ().get("RANK") == "1"]
        second.kill()
        killed = time.monotonic()
        output, _ = group.communicate(timeout=90)
        took = time.monotonic() - killed
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(group.pid, signal.SIGKILL)
    assert group.returncode != 0
    assert "SIGKILL" in output and "polytask.cli" in output, output[-3000:]
    assert took < 60, took


def skip_plots(setattr) -> None:
    """The equality runs skip training.png and report.html: matplotlib takes 6 of a tiny run's 8 s
    (the runs of the resume test, through the command line, draw them)."""
    import polytask.train

    setattr(polytask.train, "plot_training", lambda *args: None)
    setattr(polytask.train, "write_run_report", lambda *args: None)


def main(configs: list[str]) -> None:
    """Under torchrun: train each config in turn (this process's share of each run)."""
    from polytask.train import train

    skip_plots(setattr)
    for config in configs:
        train(config, progress=False)


if __name__ == "__main__":
    main(sys.argv[1:])
