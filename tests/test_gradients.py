"""Task gradients for the gradient-based methods: the Gram matrix is right in every grad_space,
and gradient methods run inside the trainer with cosines and weights logged."""

import json

import pytest
import torch

from polytask.architectures import Features
from polytask.config import from_dict
from polytask.errors import ConfigError
from polytask.gradients import cosines, task_gram
from polytask.train import build_components, train

from conftest import tiny_config


def test_representation_gram_is_gradient_of_a_shared_bias():
    torch.manual_seed(0)
    w = torch.randn(4, requires_grad=True)
    feats, losses, expected = [], [], []
    for _ in range(2):
        z = (torch.randn(3, 5, 4) * w)  # (B, T, H), depends on a shared parameter
        bias = torch.zeros(4, requires_grad=True)
        target = torch.randn(3, 5, 4)
        loss = ((z + bias - target) ** 2).mean()
        feats.append(Features(hidden=z, mask=torch.ones(3, 5), shared=z))
        losses.append(((z - target) ** 2).mean())
        expected.append(torch.autograd.grad(loss, bias, retain_graph=True)[0])
    K = task_gram(losses, "representation", feats)
    G = torch.stack(expected)
    assert torch.allclose(K, G @ G.T, atol=1e-6)


def test_parameter_gram_and_cosines():
    a = torch.nn.Parameter(torch.tensor([1.0, 2.0]))
    b = torch.nn.Parameter(torch.tensor([0.5]))
    losses = [(a * torch.tensor([3.0, 0.0])).sum() + 2 * b.sum(), (a * torch.tensor([0.0, -1.0])).sum()]
    K = task_gram(losses, "shared", [None, None], [a, b])
    # g1 = [3, 0, 2], g2 = [0, -1, 0]
    assert torch.allclose(K, torch.tensor([[13.0, 0.0], [0.0, 1.0]]))
    assert torch.allclose(cosines(torch.tensor([[4.0, -2.0], [-2.0, 1.0]])), torch.tensor([[1.0, -1.0], [-1.0, 1.0]]))


@pytest.mark.parametrize("space", ["representation", "last_layers", "shared"])
@pytest.mark.parametrize("method", ["pcgrad", "mgda"])
def test_gradient_methods_train_in_every_space(tiny_backbone, tmp_path, space, method):
    raw = tiny_config(tiny_backbone, tmp_path, max_steps=4, eval_every=4, log_every=2, grad_space=space)
    raw["tasks"] = raw["tasks"][1:3]
    raw["weighting"] = {"name": method}
    run_dir = train(from_dict(raw), progress=False)
    logs = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    steps = [e for e in logs if e["kind"] == "train"]
    assert len(steps) == 2
    for e in steps:
        assert set(e["weights"]) == {"topic", "similarity"} and all(map(torch.isfinite, map(torch.tensor, e["weights"].values())))
        assert -1.0 - 1e-6 <= e["cosine"]["topic|similarity"] <= 1.0 + 1e-6
        assert all(v > 0 for v in e["grad_norm"].values())


def test_bad_method_arguments_fail_at_config_time(tmp_path, tiny_backbone):
    raw = tiny_config(tiny_backbone, tmp_path)
    raw["weighting"] = {"name": "pcgrad", "args": {"sed": 1}}
    with pytest.raises(ConfigError, match="weighting.args: .*sed"):
        build_components(from_dict(raw), ["a", "b"], [10, 10])
    raw["weighting"] = {"name": "equal"}
    raw["sampling"] = {"name": "temperature", "args": {"T": -1}}
    with pytest.raises(ConfigError, match="sampling.args: T: the temperature must be a positive finite number, got -1"):
        build_components(from_dict(raw), ["a", "b"], [10, 10])


def test_probe_due_fires_once_per_interval_on_a_log_step():
    from polytask.steps import probe_due

    assert [s for s in range(1, 61) if probe_due(s, 5, 20)] == [20, 40, 60]
    assert [s for s in range(1, 61) if probe_due(s, 10, 25)] == [30, 50]  # first log step at/after 25, 50
    assert not any(probe_due(s, 5, 0) for s in range(1, 61))


def _log(run_dir):
    return [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_cosine_probe_logs_cosines_for_single_task_steps_without_changing_training(tiny_backbone, tmp_path):
    """Loss-based methods train one task per step; the probe measures cosines every N steps,
    and the run's losses are exactly those of a run without probes."""
    runs = {}
    for every in (4, 0):
        raw = tiny_config(tiny_backbone, tmp_path / str(every), max_steps=8, eval_every=8, log_every=2,
                          cosine_every=every)
        raw["weighting"] = {"name": "uw"}
        runs[every] = [e for e in _log(train(from_dict(raw), progress=False)) if e["kind"] == "train"]
    probed = {e["step"]: e for e in runs[4]}
    assert [s for s, e in probed.items() if "cosine" in e] == [4, 8]
    tasks = [t["name"] for t in tiny_config(tiny_backbone, tmp_path)["tasks"]]
    pairs = {f"{a}|{b}" for i, a in enumerate(tasks) for b in tasks[i + 1:]}
    for step in (4, 8):
        assert set(probed[step]["cosine"]) == pairs
        assert all(-1 - 1e-6 <= c <= 1 + 1e-6 for c in probed[step]["cosine"].values())
        assert all(v > 0 for v in probed[step]["probe_grad_norm"].values())
    assert not any("cosine" in e for e in runs[0])
    assert [e["loss"] for e in runs[4]] == [e["loss"] for e in runs[0]]


def test_adapter_grad_space_needs_a_shared_adapter(tiny_backbone, tmp_path):
    raw = tiny_config(tiny_backbone, tmp_path, grad_space="adapters")
    with pytest.raises(ConfigError, match="train.grad_space: 'adapters' needs an adapter shared by all tasks"):
        from_dict(raw)
