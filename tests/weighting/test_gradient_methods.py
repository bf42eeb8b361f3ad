"""Known answers of the gradient methods on small hand-built gradients (K = G G^T, d = alpha G)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from polytask.weighting import REGISTRY, build_weighting
from polytask.weighting.gradvac import gradvac_coefficients
from polytask.weighting.pcgrad import pcgrad_coefficients

from .bounds import dot_bound

GRADIENT_METHODS = sorted(n for n, c in REGISTRY.items() if c.needs_grads)


def tasks_of(T):
    return [f"t{i}" for i in range(T)]


def direction(name, G, losses=None, method=None, **kwargs):
    """Run one step of ``name`` on gradients G (T, P); return (d, alpha, method)."""
    G = torch.as_tensor(G, dtype=torch.float64)
    T = G.shape[0]
    method = method or build_weighting(name, tasks_of(T), kwargs)
    if losses is None:
        losses = torch.ones(T, dtype=torch.float64)
    _, alpha = method.combine(torch.as_tensor(losses, dtype=torch.float64), tasks_of(T), G @ G.T)
    return alpha @ G, alpha, method


def assert_vec(actual, expected, tol=1e-9):
    torch.testing.assert_close(
        torch.as_tensor(actual, dtype=torch.float64),
        torch.as_tensor(expected, dtype=torch.float64),
        rtol=tol,
        atol=tol,
    )


@st.composite
def gradients(draw, min_tasks=1, max_tasks=6):
    T = draw(st.integers(min_tasks, max_tasks))
    P = draw(st.integers(1, 8))
    elems = st.floats(-10, 10, allow_nan=False, allow_infinity=False, width=64)
    G = draw(arrays(np.float64, (T, P), elements=elems))
    return torch.as_tensor(G)


# --- every gradient method -------------------------------------------------------------------


@pytest.mark.parametrize("name", GRADIENT_METHODS)
@settings(max_examples=25, deadline=None)
@given(G=gradients())
def test_finite_on_any_gradients(name, G):
    """Zero, duplicated, rank-deficient or tiny gradients never give non-finite weights."""
    d, alpha, _ = direction(name, G)
    assert torch.isfinite(alpha).all() and torch.isfinite(d).all()


@pytest.mark.parametrize("name", GRADIENT_METHODS)
def test_scaled_degenerate_cases(name):
    for G in ([[0.0, 0.0], [0.0, 0.0]], [[1e-30, 0.0], [0.0, 1e-30]], [[1e6, 0.0], [1e6, 0.0]],
              [[1.0, 0.0], [-1.0, 0.0]], [[1.0, 2.0], [0.0, 0.0], [3.0, -1.0]]):
        d, alpha, _ = direction(name, G)
        assert torch.isfinite(alpha).all(), (name, G, alpha)


# --- PCGrad ----------------------------------------------------------------------------------


def test_pcgrad_projects_conflicting_pair():
    G = torch.tensor([[1.0, 0.0], [-1.0, 1.0]], dtype=torch.float64)
    C = pcgrad_coefficients(G @ G.T, [[0, 1], [1, 0]])
    projected = C @ G  # (T, P)
    assert_vec(projected[0], [0.5, 0.5])  # g1 - (g1.g2 / |g2|^2) g2, orthogonal to g2
    assert_vec(projected[1], [0.0, 1.0])  # g2 - (g2.g1 / |g1|^2) g1, orthogonal to g1
    # orthogonal up to rounding: coefficient (2 dots), C @ G (1), the check's dot (1); Higham's bound
    n1, n2 = float(G[0].norm()), float(G[1].norm())
    assert abs(float(projected[0] @ G[1])) <= dot_bound(2, n1, n2, steps=4)
    assert abs(float(projected[1] @ G[0])) <= dot_bound(2, n1, n2, steps=4)
    d, _, _ = direction("pcgrad", G)
    assert_vec(d, [0.5, 1.5])


def test_pcgrad_leaves_agreeing_gradients():
    G = [[1.0, 0.0, 0.0], [1.0, 1.0, 0.0], [0.0, 1.0, 2.0]]
    d, alpha, _ = direction("pcgrad", G)
    assert_vec(alpha, [1.0, 1.0, 1.0])


def test_pcgrad_order_comes_from_seed():
    G = torch.randn(5, 4, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    runs = [direction("pcgrad", G, seed=s)[1] for s in (7, 7)]
    assert_vec(runs[0], runs[1], tol=0)


# --- MGDA ------------------------------------------------------------------------------------


def test_mgda_two_gradients_min_norm_point():
    g1, g2 = torch.tensor([1.0, 0.0]).double(), torch.tensor([0.0, 2.0]).double()
    d, alpha, _ = direction("mgda", torch.stack([g1, g2]))
    # gamma = (g2 - g1).g2 / |g1 - g2|^2 = 4/5 -> d = 0.8 g1 + 0.2 g2
    assert_vec(alpha, [0.8, 0.2])
    assert_vec(d, [0.8, 0.4])
    # the min-norm point is orthogonal to the edge; two tasks take the closed form (Wolfe's
    # exact path), a handful of length-2 inner products: 8 of them bound it with room
    assert abs(float(d @ (g1 - g2))) <= dot_bound(2, float(d.norm()), float((g1 - g2).norm()), steps=8)


def test_mgda_random_pairs_closed_form():
    gen = torch.Generator().manual_seed(0)
    for _ in range(20):
        g1, g2 = torch.randn(2, 5, generator=gen, dtype=torch.float64)
        gamma = float(((g2 - g1) @ g2) / ((g1 - g2) @ (g1 - g2)))
        gamma = min(max(gamma, 0.0), 1.0)
        d, _, _ = direction("mgda", torch.stack([g1, g2]))
        assert_vec(d, gamma * g1 + (1 - gamma) * g2)


def test_mgda_equal_gradients():
    g = [1.0, -2.0, 0.5]
    d, alpha, _ = direction("mgda", [g, g])
    assert_vec(d, g)
    assert_vec(alpha.sum(), 1.0)


def test_mgda_non_conflicting():
    d, _, _ = direction("mgda", [[1.0, 0.0], [1.0, 1.0]])
    assert_vec(d, [1.0, 0.0])  # the shorter gradient is the min-norm point


def test_mgda_many_tasks_kkt():
    """Optimality on the simplex: (K a)_t >= a^T K a, with equality on the support."""
    gen = torch.Generator().manual_seed(1)
    for T in (3, 5, 8):
        G = torch.randn(T, 4, generator=gen, dtype=torch.float64)
        d, a, _ = direction("mgda", G)
        K = G @ G.T
        Ka, aKa = K @ a, float(a @ K @ a)
        assert float(a.min()) >= 0 and abs(float(a.sum()) - 1) < 1e-12
        assert float(Ka.min()) >= aKa - 1e-10
        assert float((a * (Ka - aKa)).abs().max()) < 1e-10


def test_mgda_l2_normalization():
    d, alpha, _ = direction("mgda", [[1.0, 0.0], [0.0, 10.0]], normalization="l2")
    assert_vec(alpha, [0.5, 0.05])  # min-norm point of the unit gradients, mapped back
    assert_vec(d, [0.5, 0.5])


@pytest.mark.parametrize("normalization", ["none", "l2", "loss", "loss+"])
def test_mgda_common_descent(normalization):
    gen = torch.Generator().manual_seed(2)
    G = torch.randn(4, 6, generator=gen, dtype=torch.float64)
    losses = torch.tensor([0.5, 2.0, 1.0, 3.0], dtype=torch.float64)
    d, _, _ = direction("mgda", G, losses=losses, normalization=normalization)
    assert float((G @ d).min()) >= -1e-9


# --- UPGrad ----------------------------------------------------------------------------------


def test_upgrad_conflicting_pair():
    d, _, _ = direction("upgrad", [[1.0, 0.0], [-1.0, 1.0]])
    # projections onto the dual cone: (0.5, 0.5) and (0, 1); their mean
    assert_vec(d, [0.25, 0.75])


def test_upgrad_agreeing_gradients_give_mean():
    G = torch.tensor([[1.0, 0.0], [1.0, 1.0], [0.0, 3.0]], dtype=torch.float64)
    d, _, _ = direction("upgrad", G)
    assert_vec(d, G.mean(0))


@settings(max_examples=60, deadline=None)
@given(G=gradients(min_tasks=2))
def test_upgrad_never_conflicts(G):
    d, alpha, _ = direction("upgrad", G)
    K = G @ G.T
    tol = 1e-7 * (1.0 + float(K.abs().max())) * (1.0 + float(alpha.abs().max()))
    assert float((G @ d).min()) >= -tol


# --- CAGrad ----------------------------------------------------------------------------------


def test_cagrad_c0_is_average():
    G = torch.tensor([[1.0, 0.0], [-1.0, 1.0], [0.5, -2.0]], dtype=torch.float64)
    d, alpha, _ = direction("cagrad", G, c=0.0)
    assert_vec(d, G.mean(0))


def test_cagrad_matches_brute_force_dual():
    G = torch.tensor([[1.0, 0.2], [-0.8, 1.0]], dtype=torch.float64)
    c = 0.4
    g0 = G.mean(0)
    phi = c * float(g0.norm())
    grid = torch.linspace(0, 1, 100001, dtype=torch.float64)
    gw = grid[:, None] * G[0] + (1 - grid[:, None]) * G[1]  # (N, P)
    obj = gw @ g0 + phi * gw.norm(dim=1)
    gw_star = gw[int(torch.argmin(obj))]
    expected = (g0 + phi / float(gw_star.norm()) * gw_star) / (1 + c**2)
    d, _, _ = direction("cagrad", G, c=c)
    assert_vec(d, expected, tol=1e-4)
    # conflict-averse: the worst task improves at least as fast as with the average gradient
    assert float((G @ d).min()) > float((G @ g0).min()) / (1 + c**2)


# --- IMTL-G ----------------------------------------------------------------------------------


@pytest.mark.parametrize("T", [2, 3, 5])
def test_imtl_equal_projections(T):
    G = torch.randn(T, 6, generator=torch.Generator().manual_seed(T), dtype=torch.float64)
    G = G * torch.tensor([0.1, 3.0, 1.0, 10.0, 0.5][:T], dtype=torch.float64)[:, None]
    d, alpha, _ = direction("imtl", G)
    proj = G @ d / G.norm(dim=1)  # d . u_t
    assert_vec(proj, proj.mean().expand(T), tol=1e-8)
    assert_vec(alpha.sum(), 1.0)


def test_imtl_zero_gradient_task():
    d, alpha, _ = direction("imtl", [[1.0, 0.0], [0.0, 0.0], [0.0, 4.0]])
    assert float(alpha[1]) == 0.0
    G = torch.tensor([[1.0, 0.0], [0.0, 4.0]], dtype=torch.float64)
    assert_vec((G @ d) / G.norm(dim=1), [0.8, 0.8])  # alpha = (0.8, 0.2) on the live tasks


# --- Nash-MTL --------------------------------------------------------------------------------


@pytest.mark.parametrize("T", [1, 2, 4, 6])
def test_nashmtl_bargaining_equations(T):
    G = torch.randn(T, 8, generator=torch.Generator().manual_seed(10 + T), dtype=torch.float64)
    G[0] *= 20.0
    _, alpha, _ = direction("nashmtl", G)
    K = G @ G.T
    assert float(alpha.min()) > 0
    assert_vec((K @ alpha) * alpha, torch.ones(T), tol=1e-6)


def test_nashmtl_orthogonal_gradients():
    # K = diag(n^2): alpha_t = 1 / n_t, every task gets a unit-norm contribution
    d, alpha, _ = direction("nashmtl", [[2.0, 0.0], [0.0, 0.5]])
    assert_vec(alpha, [0.5, 2.0], tol=1e-6)
    assert_vec(d, [1.0, 1.0], tol=1e-6)


# --- Aligned-MTL -----------------------------------------------------------------------------


def test_alignedmtl_orthogonal_equal_norm_is_sum():
    G = 3.0 * torch.eye(3, 5, dtype=torch.float64)
    d, alpha, _ = direction("alignedmtl", G)
    assert_vec(alpha, [1.0, 1.0, 1.0])
    assert_vec(d, G.sum(0))


def test_alignedmtl_aligned_gradients_are_orthonormal():
    G = torch.randn(4, 6, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    K = G @ G.T
    lam, V = torch.linalg.eigh(K)
    B = lam.min().sqrt() * (V / lam.sqrt()) @ V.T  # the paper's balance matrix
    aligned = B @ G
    assert_vec(aligned @ aligned.T, lam.min() * torch.eye(4), tol=1e-8)
    d, _, _ = direction("alignedmtl", G)
    assert_vec(d, aligned.sum(0), tol=1e-8)


# --- GradVac ---------------------------------------------------------------------------------


def test_gradvac_nothing_to_do_above_target():
    G = [[1.0, 0.0, 0.0], [1.0, 1.0, 0.0], [0.0, 1.0, 2.0]]  # all cosines >= 0 = initial target
    _, alpha, _ = direction("gradvac", G)
    assert_vec(alpha, [1.0, 1.0, 1.0])


def test_gradvac_first_step_with_zero_targets_is_pcgrad():
    G = torch.randn(4, 5, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    _, a_vac, _ = direction("gradvac", G, seed=11)
    _, a_pc, _ = direction("pcgrad", G, seed=11)
    assert_vec(a_vac, a_pc, tol=1e-9)


def test_gradvac_raises_cosine_to_target_and_tracks_ema():
    theta = math.radians(80.0)
    G = torch.tensor([[1.0, 0.0], [2.0 * math.cos(theta), 2.0 * math.sin(theta)]])
    G = G.to(torch.float64)
    targets = torch.full((2, 2), 0.5, dtype=torch.float64)
    C = gradvac_coefficients(G @ G.T, targets, [[1], [0]], beta=0.1)
    new = C @ G
    for i, j in ((0, 1), (1, 0)):
        cos = float(new[i] @ G[j] / (new[i].norm() * G[j].norm()))
        assert abs(cos - 0.5) < 1e-12
    # EMA of the observed cosine: 0.9 * 0.5 + 0.1 * cos(80 deg)
    assert_vec(targets[0, 1], 0.45 + 0.1 * math.cos(theta))


def test_gradvac_targets_are_kept_by_task_name():
    method = build_weighting("gradvac", ["a", "b", "c"], {"beta": 0.5})
    G = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]], dtype=torch.float64)
    method.combine(torch.ones(3, dtype=torch.float64), ["a", "b", "c"], G @ G.T)
    first = method.targets.clone()
    m2 = build_weighting("gradvac", ["a", "b", "c"], {"beta": 0.5})
    perm = [2, 0, 1]
    Gp = G[perm]
    m2.combine(torch.ones(3, dtype=torch.float64), ["c", "a", "b"], Gp @ Gp.T)
    assert_vec(m2.targets, first)


def test_mgda_frank_wolfe_solver():
    g1, g2 = [1.0, 0.0], [0.0, 2.0]
    _, alpha, _ = direction("mgda", [g1, g2], solver="frank-wolfe")
    assert_vec(alpha, [0.8, 0.2])  # exact for two tasks
    G = torch.randn(5, 4, generator=torch.Generator().manual_seed(6), dtype=torch.float64)
    _, a_fw, _ = direction("mgda", G, solver="frank-wolfe", max_iter=2000, tol=1e-12)
    _, a_exact, _ = direction("mgda", G)
    K = G @ G.T
    # Frank-Wolfe zig-zags towards an optimum on a face: close, never better than exact
    assert float(a_exact @ K @ a_exact) <= float(a_fw @ K @ a_fw) + 1e-12
    assert float(a_fw @ K @ a_fw) <= float(a_exact @ K @ a_exact) * 1.02
