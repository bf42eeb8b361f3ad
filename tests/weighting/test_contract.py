"""The contract every registered weighting method keeps (see polytask/weighting/base.py)."""

from __future__ import annotations

import io

import pytest
import torch

from polytask.weighting import REGISTRY, build_weighting
from polytask.weighting._utils import SeededGenerator

NAMES = sorted(REGISTRY)
P = 7  # parameters of the toy model


def tasks_of(T: int) -> list[str]:
    return [f"task{i}" for i in range(T)]


class Toy:
    """A linear model with quadratic task losses, so G is the real Jacobian of the losses."""

    def __init__(self, T: int, seed: int):
        g = torch.Generator().manual_seed(seed)
        self.theta = torch.randn(P, generator=g, dtype=torch.float64, requires_grad=True)
        self.A = torch.randn(T, 3, P, generator=g, dtype=torch.float64)
        self.b = torch.randn(T, 3, generator=g, dtype=torch.float64)

    def losses(self) -> torch.Tensor:
        r = torch.einsum("tkp,p->tk", self.A, self.theta) - self.b  # (T, 3)
        return 0.5 * (r**2).sum(1) + 0.1  # (T,) > 0

    def step_inputs(self, method):
        losses = self.losses()
        gram = None
        if method.needs_grads:
            G = torch.stack(
                [torch.autograd.grad(l, self.theta, retain_graph=True)[0] for l in losses]
            )  # (T, P)
            gram = G @ G.T
        return losses, gram


def fixed_inputs(T: int, seed: int):
    g = torch.Generator().manual_seed(seed)
    losses = torch.rand(T, generator=g, dtype=torch.float64) + 0.1
    G = torch.randn(T, P, generator=g, dtype=torch.float64)
    return losses, G @ G.T


def run(method, tasks, losses, gram):
    return method.combine(losses, tasks, gram if method.needs_grads else None)


def sgd_on_method_params(method, lr=0.1):
    with torch.no_grad():
        for p in method.parameters():
            if p.grad is not None:
                p -= lr * p.grad
                p.grad = None


@pytest.mark.parametrize("T", [1, 2, 6])
@pytest.mark.parametrize("name", NAMES)
def test_finite_and_backward(name, T):
    tasks = tasks_of(T)
    method = build_weighting(name, tasks)
    toy = Toy(T, seed=T)
    for _ in range(4):
        losses, gram = toy.step_inputs(method)
        total, weights = method.combine(losses, tasks, gram)
        assert total.dim() == 0 and torch.isfinite(total)
        assert weights.shape == (T,) and torch.isfinite(weights).all()
        assert not weights.requires_grad
        total.backward()
        assert toy.theta.grad is not None and torch.isfinite(toy.theta.grad).all()
        for p in method.parameters():
            assert p.grad is not None and torch.isfinite(p.grad).all()
        with torch.no_grad():
            toy.theta -= 0.05 * toy.theta.grad
        toy.theta.grad = None
        sgd_on_method_params(method)


@pytest.mark.parametrize("name", NAMES)
def test_flags_and_parameters(name):
    cls = REGISTRY[name]
    method = cls(tasks_of(3))
    assert method.has_parameters == bool(list(method.parameters()))
    if cls.needs_grads:
        assert cls.needs_all_tasks
        losses, _ = fixed_inputs(3, 0)
        with pytest.raises(ValueError):
            method.combine(losses, tasks_of(3), None)


@pytest.mark.parametrize("name", NAMES)
def test_state_dict_round_trip(name):
    T = 4
    tasks = tasks_of(T)
    a = build_weighting(name, tasks)
    for k in range(5):
        losses, gram = fixed_inputs(T, k)
        losses.requires_grad_(True)
        total, _ = run(a, tasks, losses, gram)
        total.backward()
        sgd_on_method_params(a)
    buf = io.BytesIO()
    torch.save(a.state_dict(), buf)
    buf.seek(0)
    b = build_weighting(name, tasks)
    b.load_state_dict(torch.load(buf))
    for k in range(5, 8):  # the resumed run continues identically
        losses, gram = fixed_inputs(T, k)
        ta, wa = run(a, tasks, losses.clone().requires_grad_(True), gram)
        tb, wb = run(b, tasks, losses.clone().requires_grad_(True), gram)
        torch.testing.assert_close(ta, tb, rtol=0, atol=0)
        torch.testing.assert_close(wa, wb, rtol=0, atol=0)
        ta.backward()
        tb.backward()
        sgd_on_method_params(a)
        sgd_on_method_params(b)


@pytest.mark.parametrize("name", [n for n in NAMES if issubclass(REGISTRY[n], SeededGenerator)])
def test_rng_state_matters(name):
    """Sanity check of the round-trip test: without the saved state the draws differ."""
    T = 5
    tasks = tasks_of(T)
    a, b = build_weighting(name, tasks), build_weighting(name, tasks)
    for k in range(3):
        run(a, tasks, *fixed_inputs(T, k))
    assert not torch.equal(a.generator.get_state(), b.generator.get_state())
    b.load_state_dict(a.state_dict())
    assert torch.equal(a.generator.get_state(), b.generator.get_state())


@pytest.mark.parametrize("name", NAMES)
def test_task_order_is_irrelevant(name):
    """Per-task state is keyed by name: permuting the tasks permutes the weights."""
    if issubclass(REGISTRY[name], SeededGenerator):
        pytest.skip("random task orders depend on the positions")
    T = 4
    tasks = tasks_of(T)
    perm = [2, 0, 3, 1]
    a, b = build_weighting(name, tasks), build_weighting(name, tasks)
    for k in range(3):
        losses, gram = fixed_inputs(T, k)
        _, wa = run(a, tasks, losses, gram)
        _, wb = run(b, [tasks[i] for i in perm], losses[perm], gram[perm][:, perm])
        torch.testing.assert_close(wb, wa[perm], rtol=1e-4, atol=1e-4)


def test_equal_is_plain_sum():
    tasks = tasks_of(3)
    losses = torch.tensor([0.3, 1.2, 2.5], requires_grad=True)
    total, weights = build_weighting("equal", tasks).combine(losses, tasks)
    torch.testing.assert_close(total, losses.sum())
    torch.testing.assert_close(weights, torch.ones(3))


@pytest.mark.parametrize("name", NAMES)
def test_subsets(name):
    T = 5
    tasks = tasks_of(T)
    method = build_weighting(name, tasks)
    subset = ["task3", "task0"]
    losses, gram = fixed_inputs(2, 1)
    if REGISTRY[name].needs_all_tasks:
        with pytest.raises(ValueError):
            run(method, subset, losses, gram)
        return
    for _ in range(3):
        total, weights = run(method, subset, losses.clone().requires_grad_(True), gram)
        assert weights.shape == (2,) and torch.isfinite(weights).all()
        total.backward()
    total, weights = run(method, tasks, *fixed_inputs(T, 2))  # then all tasks again
    assert weights.shape == (T,) and torch.isfinite(total)


DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("name", NAMES)
def test_on_device(name, device):
    """The module can be moved with ``.to(device)``; inputs on that device, float32 losses."""
    T = 3
    tasks = tasks_of(T)
    method = build_weighting(name, tasks).to(device)
    for k in range(3):
        losses, gram = fixed_inputs(T, k)
        losses = losses.float().to(device).requires_grad_(True)
        total, weights = run(method, tasks, losses, gram.to(device))
        assert total.device.type == device and weights.device.type == device
        assert torch.isfinite(weights).all()
        total.backward()
    state = method.state_dict()
    build_weighting(name, tasks).load_state_dict(state)


def test_unknown_name_lists_catalogue():
    from polytask.errors import ConfigError

    with pytest.raises(ConfigError, match="pcgrad"):
        build_weighting("no-such-method", tasks_of(2))
