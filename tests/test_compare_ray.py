"""compare --executor ray on a local Ray instance (2 CPUs, started once for this file) with the tiny
random BERT: the same numbers as the local executor, a sub-run whose Ray worker is killed is
retried and resumes from its checkpoint, an output_dir the workers cannot see fails at start, a
search of 3 trials per model picks each model's best dev trial (the same trials on both
executors), and Ctrl-C on the real CLI leaves no Ray task running."""

from __future__ import annotations

import json
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

from conftest import REPO, ctrl_c_as_in_a_terminal, demo_tasks, tiny_config

ray = pytest.importorskip("ray", reason="pip install 'polytask[ray]'")


@pytest.fixture(scope="module")
def ray_address():
    """One local Ray instance (2 CPUs) for the whole file; this process is connected to it."""
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray.get_runtime_context().gcs_address
    ray.shutdown()


def raw_config(backbone: str, out: Path, n_tasks: int = 2, steps: int = 8, **compare) -> dict:
    raw = tiny_config(backbone, out, max_steps=steps, batch_size=8, eval_every=max(1, steps // 2),
                      log_every=max(1, steps // 2))
    raw["name"] = "cmp"
    raw["tasks"] = demo_tasks(n_train=48, n_eval=16)[:n_tasks]
    raw["compare"] = {"budget": "steps", "inference_examples": 0, **compare}
    return raw


def summaries(root: Path) -> dict[str, dict]:
    return {p.parent.relative_to(root).as_posix(): json.loads(p.read_text()) for p in sorted(root.rglob("summary.json"))}


def cli(args: list[str], cwd: Path, **kw) -> subprocess.Popen:
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-m", "polytask.cli", *args], cwd=cwd, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, preexec_fn=ctrl_c_as_in_a_terminal, **kw)


def job_processes(folder: Path) -> dict[int, int]:
    """pid -> parent pid of every sub-run child process (``python -m polytask.compare JOB``) under ``folder``."""
    found = {}
    for proc in Path("/proc").iterdir():
        try:
            cmd = (proc / "cmdline").read_bytes().split(b"\0")
            if b"polytask.compare" in cmd and any(str(folder).encode() in c for c in cmd):
                found[int(proc.name)] = int((proc / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
    return found


def test_ray_gives_the_local_numbers(ray_address, tiny_backbone, tmp_path):
    """A 2-task compare on Ray and locally (--jobs 2: one thread per sub-run, as a Ray task with 1
    CPU): every sub-run's dev and test metrics and the report's table are bit-identical."""
    roots, lines = {}, []
    for executor in ("local", "ray"):
        extra = {"jobs": 2} if executor == "local" else {"executor": "ray"}
        roots[executor] = run_compare(from_dict(raw_config(tiny_backbone, tmp_path / executor, **extra)),
                                      echo=lines.append)
    local, remote = summaries(roots["local"]), summaries(roots["ray"])
    assert set(local) == set(remote) == {"single/sentiment/seed3", "single/topic/seed3", "mtl/mtl/seed3"}
    for key in local:
        assert remote[key]["dev"] == local[key]["dev"] and remote[key]["test"] == local[key]["test"], key
    tables = [json.loads((roots[e] / "results.json").read_text())["table"] for e in ("local", "ray")]
    assert tables[0] == tables[1]
    node = ray.util.get_node_ip_address()
    for state in ("queued (1 CPU, 0 GPU", f"running on node {node}", f"done on node {node} (trained)"):
        assert sum(state in line for line in lines) == 3, state
    # a rerun on Ray reuses every finished sub-run
    lines.clear()
    run_compare(from_dict(raw_config(tiny_backbone, tmp_path / "ray", executor="ray")), echo=lines.append)
    assert sum("done (finished before, reused)" in line for line in lines) == 3
    assert not any("queued" in line for line in lines)


def test_a_killed_worker_is_retried_and_resumes(ray_address, tiny_backbone, tmp_path):
    """SIGKILL to the Ray worker of a running sub-run: its child checkpoints (SIGTERM on its
    parent's death), Ray runs the task again, and the sub-run resumes and finishes."""
    raw = raw_config(tiny_backbone, tmp_path, n_tasks=1, steps=400, executor="ray", retries=1)
    raw["train"].update(eval_every=40, log_every=20, checkpoint_every=40)
    target = tmp_path / "cmp" / "mtl" / "mtl" / "seed3"
    killed: list[int] = []

    def kill_the_worker() -> None:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline and not killed:
            children = job_processes(target)
            if children and any((target / "checkpoints").glob("*")):
                worker = next(iter(children.values()))
                os.kill(worker, signal.SIGKILL)
                killed.append(worker)
            time.sleep(0.05)

    watcher = threading.Thread(target=kill_the_worker, daemon=True)
    watcher.start()
    lines: list[str] = []
    root = run_compare(from_dict(raw), echo=lines.append)
    watcher.join(5)
    assert killed, "the sub-run finished before its worker could be killed"
    assert any("mtl/seed3: running on node" in line and "attempt 2 of 2: resumes from its checkpoint" in line
               for line in lines), lines
    resources = json.loads((target / "resources.json").read_text())
    summary = json.loads((target / "summary.json").read_text())
    assert resources["resumed"] is True and summary["steps"] == 400
    assert (root / "report.md").exists()


def test_an_output_dir_the_workers_cannot_see_fails_at_start(ray_address, tiny_backbone, tmp_path):
    """The CLI runs in its own mount namespace with a private tmpfs over output_dir, so the Ray
    workers see another (empty) folder at the same path, as on a node without the shared disk."""
    if os.geteuid() != 0 or subprocess.run(["unshare", "--mount", "true"], capture_output=True).returncode != 0:
        pytest.skip("needs root and unshare --mount (a private mount namespace) to hide the folder from the workers")
    out = tmp_path / "shared"
    out.mkdir()
    (tmp_path / "cmp.yaml").write_text(yaml.safe_dump(raw_config(tiny_backbone, out)))
    script = (f"mount -t tmpfs tmpfs {out} && exec {sys.executable} -m polytask.cli compare {tmp_path / 'cmp.yaml'} "
              f"--executor ray --ray-address {ray_address}")
    done = subprocess.run(["unshare", "--mount", "--propagation", "private", "sh", "-c", script], cwd=REPO,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 2, done.stdout + done.stderr
    assert "output_dir is not shared with every Ray node" in done.stderr
    assert f"node {ray.util.get_node_ip_address()}: {out / 'cmp'} does not hold the file" in done.stderr
    assert "queued" not in done.stdout and not list(out.iterdir())  # failed before any sub-run: nothing written here


def test_search_of_3_trials_picks_the_best_dev_trial_on_both_executors(ray_address, tiny_backbone, tmp_path):
    search = {"trials": 3, "seed": 1, "space": {"train.lr": {"low": 1.0e-4, "high": 3.0e-2, "log": True}}}
    results = {}
    for executor in ("local", "ray"):
        extra = {"jobs": 2} if executor == "local" else {"executor": "ray"}
        root = run_compare(from_dict(raw_config(tiny_backbone, tmp_path / executor, n_tasks=1, search=search,
                                                **extra)), echo=lambda line: None)
        results[executor] = json.loads((root / "results.json").read_text())
        trials = json.loads((root / "search.json").read_text())
        assert set(trials) == {"single/sentiment/seed3", "mtl/seed3"} and all(len(t) == 3 for t in trials.values())
        report = (root / "report.md").read_text()
        assert "## Search trials (Optuna TPE, 3 trials per model and seed, chosen on dev)" in report
        assert report.count("| chosen |") == 2
    choices = results["ray"]["grid"]["choices"]
    assert len(choices) == 2
    for c in choices:
        assert len(c["dev"]) == 3 and len({p["train.lr"] for p in c["points"]}) == 3  # three distinct points
        assert c["chosen"] == c["dev"].index(max(c["dev"]))  # the best dev score (the first of ties)
        assert all(1.0e-4 <= p["train.lr"] <= 3.0e-2 for p in c["points"])
    assert results["local"]["grid"]["choices"] == choices  # same trials, same scores, same choice
    assert results["local"]["table"] == results["ray"]["table"]
    lines: list[str] = []  # a rerun asks the recorded points again and reuses every finished trial
    run_compare(from_dict(raw_config(tiny_backbone, tmp_path / "ray", n_tasks=1, search=search, executor="ray")),
                echo=lines.append)
    assert sum("done (finished before, reused)" in line for line in lines) == 6
    assert not any("queued" in line for line in lines)


def test_ctrl_c_cancels_the_ray_tasks_it_started(ray_address, tiny_backbone, tmp_path):
    """SIGINT to the real CLI while its sub-runs train: it cancels its Ray tasks, their sub-run
    processes stop (after a checkpoint), and the cluster's CPUs are all free again."""
    (tmp_path / "cmp.yaml").write_text(yaml.safe_dump(raw_config(tiny_backbone, tmp_path, n_tasks=1, steps=5000)))
    proc = cli(["compare", str(tmp_path / "cmp.yaml"), "--executor", "ray", "--ray-address", ray_address], REPO)
    seen: list[str] = []
    for line in proc.stdout:
        seen.append(line)
        if sum("running on node" in s for s in seen) == 2:
            break
    assert sum("running on node" in s for s in seen) == 2, "".join(seen)
    time.sleep(3)  # both sub-runs are training
    assert len(job_processes(tmp_path / "cmp")) == 2
    proc.send_signal(signal.SIGINT)
    rest = proc.communicate(timeout=120)[0]
    assert proc.returncode != 0
    assert "cancelled the 2 Ray task(s) this compare had started" in rest, rest
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and (job_processes(tmp_path / "cmp") or ray.available_resources().get("CPU") != 2):
        time.sleep(0.5)
    assert not job_processes(tmp_path / "cmp")
    assert ray.available_resources().get("CPU") == 2  # no task of ours holds a CPU


def test_a_failed_sub_run_shows_its_log_and_the_sweep_goes_on(ray_address, tiny_backbone, tmp_path):
    """A method that fails when its model is built (an argument the architecture does not take,
    which the config check does not see): its error carries its train.log's last lines, the other
    sub-runs finish, the report is written with it marked missing, and the command then fails."""
    from polytask.errors import PolytaskError

    raw = raw_config(tiny_backbone, tmp_path, n_tasks=1, executor="ray",
                     methods=[{"name": "mtl"}, {"name": "broken", "architecture": {"name": "hard", "args": {"bogus": 1}}}])
    lines: list[str] = []
    with pytest.raises(PolytaskError) as err:
        run_compare(from_dict(raw), echo=lines.append)
    message = str(err.value)
    assert "1 sub-run(s) failed" in message and "broken/seed3" in message
    assert f"last lines of {tmp_path / 'cmp' / 'mtl' / 'broken' / 'seed3' / 'train.log'}" in message and "bogus" in message
    assert any(line.startswith("[3/3] broken/seed3: failed: sub-run broken/seed3 failed") for line in lines), lines
    assert sum("done on node" in line for line in lines) == 2  # the single-task model and mtl finished
    report = (tmp_path / "cmp" / "report.md").read_text()
    assert "**Unfinished sub-runs, not included:** broken/seed3" in report


def test_adapt_curves_on_ray_equal_the_local_curves(ray_address, tiny_backbone, tmp_path):
    """adapt's multi-run mode (--shots): one Ray task per start point gives the local records (one thread)."""
    import polytask
    import torch

    from polytask.adapt import learning_curves

    raw = tiny_config(tiny_backbone, tmp_path / "src", max_steps=6, eval_every=6)
    raw["tasks"] = [t for t in demo_tasks(n_train=80, n_eval=20) if t["name"] in ("sentiment", "similarity")]
    source = polytask.train(from_dict(raw), progress=False)
    topic = next(t for t in demo_tasks(n_train=120, n_eval=40) if t["name"] == "topic")
    task = {**topic, "train": {"max_steps": 6, "eval_every": 3, "batch_size": 8, "head_lr": 1e-2}}
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as in the Ray task
    try:
        local = learning_curves(source, task, [4, 8], seeds=1, out_dir=tmp_path / "local", progress=False)
    finally:
        torch.set_num_threads(threads)
    lines: list[str] = []
    remote = learning_curves(source, task, [4, 8], seeds=1, out_dir=tmp_path / "ray", progress=False,
                             executor="ray", echo=lines.append)
    drop = ("seconds",)  # wall time differs
    assert [{k: v for k, v in r.items() if k not in drop} for r in remote["runs"]] == \
        [{k: v for k, v in r.items() if k not in drop} for r in local["runs"]]
    assert remote["summary"] == local["summary"] and len(remote["runs"]) == 2 * 2
    assert lines.count("curves: multitask encoder queued on Ray") == 1
    assert "curves: pretrained encoder done (2 runs)" in lines
