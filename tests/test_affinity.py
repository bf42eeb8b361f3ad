"""polytask affinity: TAG lookahead affinity on constructed cases, the grouping search, the
unchanged trajectory, and the command line (tiny backbone, seconds)."""

from __future__ import annotations

import json
import random
import subprocess
import sys

import pytest
import torch
import yaml

from conftest import demo_tasks, tiny_config
from polytask.affinity.grouping import best_beam, best_exhaustive, best_partners, groupings, partitions, score

WORDS = "good bad film movie great awful plot actor scene story long short fun dull bright dark".split()


def _twin_config(tiny_backbone, tmp_path) -> dict:
    """a, b: the same regression data; neg: the same texts with the target negated;
    topic: an unrelated synthetic classification task."""
    rng = random.Random(0)
    rows = [{"text": " ".join(rng.choice(WORDS) for _ in range(6)), "target": rng.uniform(2.0, 5.0)} for _ in range(32)]
    same, neg = tmp_path / "same.jsonl", tmp_path / "neg.jsonl"
    same.write_text("".join(json.dumps(r) + "\n" for r in rows))
    neg.write_text("".join(json.dumps({**r, "target": -r["target"]}) + "\n" for r in rows))
    topic = next(t for t in demo_tasks(32, 8) if t["name"] == "topic")
    cfg = tiny_config(tiny_backbone, tmp_path / "runs", max_steps=1)
    cfg["tasks"] = [{"name": n, "type": "regression", "data": {"train": str(p)}, "pooling": "mean"}
                    for n, p in (("a", same), ("b", same), ("neg", neg))] + [topic]
    return cfg


@pytest.fixture(scope="module")
def twin_lookahead(tiny_backbone, tmp_path_factory):
    from polytask.affinity.lookahead import lookahead
    from polytask.config import from_dict
    from polytask.run_folder import RunFolder
    from polytask.train import set_up, train_batch

    tmp = tmp_path_factory.mktemp("twins")
    cfg = from_dict(_twin_config(tiny_backbone, tmp))
    s = set_up(cfg, RunFolder(tmp / "run"), resuming=False)
    for twin in ("b", "neg"):  # identical heads: the twins differ only in their data
        s.model.heads[twin].load_state_dict(s.model.heads["a"].state_dict())
    idx = list(range(16))
    batches = {n: train_batch(s.data[n], idx, s.pad_id, s.device) for n in s.tasks}
    params = s.model.arch.shared_parameters()
    before = [p.detach().clone() for p in params]
    result = lookahead(s.model, s.tasks, batches, params, s.optimizer, lr=1e-3)
    return result, before, params, s


def test_identical_twins_have_the_highest_affinity(twin_lookahead):
    m, *_ = twin_lookahead
    Z = m.affinity
    a, b, neg, topic = (m.names.index(n) for n in ("a", "b", "neg", "topic"))
    assert Z[a, b] == Z[a, a] and Z[b, a] == Z[b, b]  # same data, same head: the same loss
    assert Z[a, b] > 0
    assert Z[a, b] > max(Z[a, neg], Z[a, topic]) and Z[b, a] > max(Z[neg, a], Z[topic, a])
    assert m.cosine[a, b] == pytest.approx(1.0, abs=1e-5)


def test_negated_target_has_negative_affinity_with_its_twin(twin_lookahead):
    m, *_ = twin_lookahead
    Z = m.affinity
    a, neg = m.names.index("a"), m.names.index("neg")
    assert Z[a, neg] < 0 and Z[neg, a] < 0
    assert Z[neg, neg] > 0  # its own step helps itself
    assert m.cosine[a, neg] < -0.9  # predictions near 0, targets 2..5 apart in sign: opposite gradients


def test_lookahead_restores_parameters_and_leaves_grads_alone(twin_lookahead):
    _, before, params, s = twin_lookahead
    assert all(torch.equal(p, q) for p, q in zip(params, before))
    assert all(p.grad is None for p in s.model.parameters())
    assert s.model.training  # set_up leaves the model in training mode; lookahead restores it


HAND = [  # two blocks: {0, 1} and {2, 3} help each other, across the blocks they hurt
    [0.0, 0.4, -0.1, -0.2],
    [0.2, 0.0, -0.3, 0.0],
    [-0.1, -0.1, 0.0, 0.3],
    [0.0, -0.2, 0.1, 0.0],
]


def test_score_is_the_mean_affinity_from_group_mates_summed():
    assert score(HAND, [[0, 1], [2, 3]]) == pytest.approx(0.2 + 0.4 + 0.1 + 0.3)
    # in a group of three each task gets the mean of the two others' affinity onto it
    assert score(HAND, [[0, 1, 2], [3]]) == pytest.approx((0.2 - 0.1) / 2 + (0.4 - 0.1) / 2 + (-0.1 - 0.3) / 2)
    assert score(HAND, [[0], [1], [2], [3]]) == 0.0


def test_partitions_are_each_counted_once():
    # Stirling numbers of the second kind S(5, k) and the Bell number B(6)
    assert [sum(1 for _ in partitions(5, k)) for k in range(1, 6)] == [1, 15, 25, 10, 1]
    assert sum(sum(1 for _ in partitions(6, k)) for k in range(1, 7)) == 203
    assert all(sorted(i for g in p for i in g) == list(range(5)) for p in partitions(5, 3))


def test_grouping_search_finds_the_known_optimum():
    rows = groupings(HAND, ["w", "x", "y", "z"])
    assert [r["groups"] for r in rows] == [1, 2, 3]
    two = rows[1]
    assert sorted(map(sorted, two["grouping"])) == [["w", "x"], ["y", "z"]]
    assert two["score"] == pytest.approx(1.0) and two["search"] == "exhaustive"
    assert sorted(map(sorted, rows[2]["grouping"])) == [["w", "x"], ["y"], ["z"]]  # 0.6 beats {y, z}'s 0.4
    assert rows[2]["score"] == pytest.approx(0.6)
    assert best_partners(HAND, ["w", "x", "y", "z"])["y"] == {"partner": "z", "affinity": 0.1}


def test_beam_search_equals_exhaustive_when_the_beam_holds_every_partial_partition():
    rng = random.Random(5)
    Z = [[rng.uniform(-1, 1) for _ in range(7)] for _ in range(7)]
    for k in range(1, 7):
        exact, value = best_exhaustive(Z, k)
        beam, beam_value = best_beam(Z, k, beam=877)  # Bell(7): every partial partition fits
        assert beam_value == pytest.approx(value)
        assert sorted(map(sorted, beam)) == sorted(map(sorted, exact))


def _tiny_affinity_config(tiny_backbone, tmp_path) -> dict:
    cfg = tiny_config(tiny_backbone, tmp_path / "runs", max_steps=9, eval_every=9, log_every=3)
    cfg["tasks"] = demo_tasks(48, 16)[:3]
    return cfg


def test_lookaheads_leave_the_training_trajectory_unchanged(tiny_backbone, tmp_path):
    from polytask.affinity.run import estimate
    from polytask.config import from_dict
    from polytask.run_folder import RunFolder

    cfg = from_dict(_tiny_affinity_config(tiny_backbone, tmp_path))
    with_la = estimate(cfg, every=2, out=tmp_path / "with", progress=False)
    estimate(cfg, every=2, out=tmp_path / "without", progress=False, lookaheads=False)
    runs = [RunFolder(tmp_path / d) for d in ("with", "without")]
    losses = [[e["loss"] for e in r.events("train")] for r in runs]
    assert len(losses[0]) == 3 and losses[0] == losses[1]
    assert runs[0].read_summary()["dev"] == runs[1].read_summary()["dev"]
    assert with_la["cost"]["lookaheads"] == 5  # before steps 0, 2, 4, 6, 8
    assert len(with_la["tag"]["mean"]) == 3 and len(with_la["groupings"]) == 2


def test_cli_prints_matrices_groupings_and_cost(tiny_backbone, tmp_path):
    path = tmp_path / "aff.yaml"
    path.write_text(yaml.safe_dump(_tiny_affinity_config(tiny_backbone, tmp_path)))
    out = tmp_path / "aff-run"
    proc = subprocess.run([sys.executable, "-m", "polytask.cli", "affinity", str(path), "--steps", "4", "--every",
                           "2", "--out", str(out), "--no-progress"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    text = proc.stdout
    assert "TAG lookahead affinity" in text and "gradient cosine" in text
    assert "1 group(s): " in text and "2 group(s): " in text and "best partner" in text
    assert "2 lookaheads (every 2 steps)" in text and "ratio" in text
    result = json.loads((out / "affinity.json").read_text())
    assert result["tasks"] == ["sentiment", "topic", "similarity"] and result["steps"] == 4
    assert all(abs(result["cosine"]["mean"][i][i] - 1) < 1e-6 for i in range(3))
    assert (out / "affinity_tag.png").read_bytes()[:4] == b"\x89PNG"
    assert (out / "affinity_cosine.png").read_bytes()[:4] == b"\x89PNG"
    assert "Task affinity" in (out / "report.html").read_text()


def test_one_task_is_refused(tiny_backbone, tmp_path):
    from polytask.affinity.run import AffinityError, estimate
    from polytask.config import from_dict

    cfg = _tiny_affinity_config(tiny_backbone, tmp_path)
    cfg["tasks"] = cfg["tasks"][:1]
    with pytest.raises(AffinityError, match="at least two tasks"):
        estimate(from_dict(cfg), out=tmp_path / "one", progress=False)


def test_cli_affinity_defaults_to_its_own_folder_beside_a_trained_run(tiny_backbone, tmp_path):
    """Issue 25.15: affinity wrote into the config's run folder by default, so after training the
    config it was refused ("holds another run"); it now defaults to output_dir/NAME-affinity."""
    path = tmp_path / "aff.yaml"
    path.write_text(yaml.safe_dump(_tiny_affinity_config(tiny_backbone, tmp_path)))
    cli = [sys.executable, "-m", "polytask.cli"]
    trained = subprocess.run(cli + ["train", str(path), "train.max_steps=2", "--no-progress"], capture_output=True,
                             text=True, timeout=300)
    assert trained.returncode == 0, trained.stderr[-2000:]
    summary = (tmp_path / "runs" / "tiny" / "summary.json").read_text()
    proc = subprocess.run(cli + ["affinity", str(path), "--steps", "2", "--every", "1", "--no-progress"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert (tmp_path / "runs" / "tiny-affinity" / "affinity.json").is_file()
    assert str(tmp_path / "runs" / "tiny-affinity") in proc.stdout
    assert (tmp_path / "runs" / "tiny" / "summary.json").read_text() == summary  # the trained run is untouched
