"""Each gradient method computes its paper's definition at every scale (issue 17).

Property-based: hypothesis draws task-gradient matrices G (T x P) from families that reach the
edges real training reaches (Gaussian, strongly conflicting, exact opposites, duplicated rows,
all-zero rows, more tasks than dimensions), T from 2 to 32, per-task scales and an overall scale
from 1e-8 to 1e8, and passes K = G G^T as float64 or float32. Each test checks the method's
defining property against an independent reference: a QP / SOCP solver (qpsolvers with
Clarabel) for UPGrad's projections, MGDA's min-norm point and CAGrad's conflict-averse
problem; the paper's procedure written on explicit vectors for PCGrad and GradVac; the
equations themselves for IMTL-G and Nash-MTL.

Tolerances are relative: to each task's own norm where a method is invariant to rescaling each
gradient (UPGrad, PCGrad, GradVac, IMTL-G, Nash-MTL), to the largest norm where it is not
(MGDA, CAGrad), and looser for float32 Gram matrices (the method then computes the definition
for the matrix it received, which is 1e-7 away from the exact one).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from polytask.weighting import REGISTRY, build_weighting
from polytask.weighting._utils import psd_sqrt_factor
from polytask.weighting.gradvac import gradvac_coefficients
from polytask.weighting.pcgrad import pcgrad_coefficients

from .bounds import dot_bound

qpsolvers = pytest.importorskip("qpsolvers")
clarabel = pytest.importorskip("clarabel")
from scipy import sparse  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore:Clarabel.rs terminated:UserWarning")

GRADIENT_METHODS = sorted(n for n, c in REGISTRY.items() if c.needs_grads)
FAMILIES = ("gaussian", "conflicting", "opposites", "duplicates", "zero_rows", "rank_deficient")
SETTINGS = settings(max_examples=30, deadline=None, database=None,
                    suppress_health_check=list(HealthCheck))


def make_gradients(family: str, T: int, rng: np.random.Generator) -> np.ndarray:
    """(T, P) gradients of one family, unit scale."""
    if family == "rank_deficient":
        return rng.standard_normal((T, max(1, T // 3)))
    P = T + int(rng.integers(0, 6))
    if family == "gaussian":
        return rng.standard_normal((T, P))
    if family == "conflicting":  # every pair nearly (anti-)parallel to one axis
        base = rng.standard_normal(P)
        signs = np.where(np.arange(T) % 2 == 0, 1.0, -1.0)[:, None]
        return signs * base[None, :] + 0.2 * rng.standard_normal((T, P))
    if family == "opposites":
        G = rng.standard_normal((T, P))
        half = T // 2
        G[half : 2 * half] = -G[:half]
        return G
    if family == "duplicates":
        k = max(1, T // 2)
        return rng.standard_normal((k, P))[rng.integers(0, k, T)]
    if family == "zero_rows":
        G = rng.standard_normal((T, P))
        G[rng.choice(T, size=int(rng.integers(1, T // 2 + 1)), replace=False)] = 0.0
        return G
    raise ValueError(family)


@st.composite
def cases(draw, families=FAMILIES, min_tasks=2, max_tasks=32, dtypes=("float64", "float32"),
          task_scale=8.0):
    """(G float64 (T, P), K as passed (T, T) float64 or float32, family)."""
    family = draw(st.sampled_from(families))
    T = draw(st.integers(min_tasks, max_tasks))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    G = make_gradients(family, T, rng)
    if draw(st.booleans()):  # per-task scales 1e-8 .. 1e8
        G = G * 10.0 ** rng.uniform(-task_scale, task_scale, size=(T, 1))
    G = G * 10.0 ** draw(st.floats(-8, 8))  # overall scale
    dtype = draw(st.sampled_from(dtypes))
    Gt = torch.as_tensor(G, dtype=torch.float64)
    K = (Gt @ Gt.T).to(getattr(torch, dtype))
    return Gt, K, family


def tasks_of(T):
    return [f"t{i}" for i in range(T)]


def weights(name, K, losses=None, **kwargs):
    T = K.shape[0]
    method = build_weighting(name, tasks_of(T), kwargs)
    losses = torch.ones(T, dtype=torch.float64) if losses is None else losses
    _, alpha = method.combine(losses, tasks_of(T), K)
    return alpha.to(torch.float64)


def seen(K):
    """The Gram matrix as the method sees it (float64, symmetric)."""
    K = K.to(torch.float64)
    return 0.5 * (K + K.T)


def rel_tol(K):
    return 1e-8 if K.dtype == torch.float64 else 1e-3


def bounded(alpha, K, factor):
    """sum_t |alpha_t| ||g_t|| <= factor * max ||g_t||: no exploding coefficient."""
    n = seen(K).diagonal().clamp(min=0).sqrt()
    return float((alpha.abs() * n).sum()) <= factor * max(float(n.max()), 1e-300)


# --- every method: finite and bounded ---------------------------------------------------------


@pytest.mark.parametrize("name", GRADIENT_METHODS)
@settings(max_examples=15, deadline=None, database=None, suppress_health_check=list(HealthCheck))
@given(case=cases())
def test_all_finite(name, case):
    G, K, _ = case
    alpha = weights(name, K)
    assert torch.isfinite(alpha).all(), (name, alpha)


# --- UPGrad ------------------------------------------------------------------------------------


def clarabel_qp(P, q, **kwargs):
    """qpsolvers + Clarabel at tight tolerances, loosened if Clarabel stops at AlmostSolved."""
    for tol in (1e-12, 1e-10, 1e-8):
        x = qpsolvers.solve_qp(P, q, solver="clarabel", tol_gap_abs=tol, tol_gap_rel=tol,
                               tol_feas=tol, **kwargs)
        if x is not None:
            return x
    raise AssertionError("the reference QP failed")


def dual_cone_reference(C: np.ndarray, w0: np.ndarray) -> np.ndarray:
    """argmin_{w >= w0} w^T C w by Clarabel (a tiny ridge picks one solution on a singular C)."""
    k = len(w0)
    P = sparse.csc_matrix(C + 1e-12 * np.eye(k))
    return clarabel_qp(P, np.zeros(k), G=-sparse.eye(k, format="csc"), h=-w0)


@SETTINGS
@given(case=cases())
def test_upgrad_never_conflicts_and_is_the_exact_projection(case):
    G, K, _ = case
    Ks = seen(K)
    T = K.shape[0]
    alpha = weights("upgrad", K)
    n = Ks.diagonal().clamp(min=0).sqrt()
    tol = rel_tol(K)
    # g_t . d >= 0 for every task, to the rounding of (K alpha)_t, relative to ||g_t||
    Ka = Ks @ alpha
    scale_t = n * float((n * alpha.abs()).sum())
    assert bool((Ka >= -tol * scale_t - 1e-300).all()), (Ka / scale_t).min()
    # zero gradients keep their preference 1/T; no coefficient explodes
    zero = n == 0
    assert torch.allclose(alpha[zero], torch.full_like(alpha[zero], 1.0 / T))
    assert bounded(alpha, K, 1e3 * T)
    if K.dtype != torch.float64:
        return
    # equals the mean of the exact projections (Clarabel on the cosine matrix)
    on = (~zero).nonzero()[:, 0]
    if len(on) == 0:
        return
    Kon = Ks[on][:, on]
    non = n[on]
    Cm = ((Kon / non[:, None]) / non[None, :]).numpy()
    ref = np.zeros(len(on))  # D v_ref summed over i
    for i in range(len(on)):
        w0 = np.zeros(len(on))
        w0[i] = 1.0
        w = dual_cone_reference(Cm, w0)
        ref += (non[i].item() / T) * w
    mine = (non * alpha[on]).numpy()
    diff = mine - ref  # coordinates of d - d_ref over the unit gradients
    err = math.sqrt(max(float(diff @ Cm @ diff), 0.0))
    assert err <= 1e-5 * float(non.max()), err / float(non.max())


def test_upgrad_issue_reproducer_zero_row():
    J = torch.tensor([[2.1, 0.6, 0.4], [0, 0, 0], [0.2, -0.8, -1.8], [0.4, 0.3, 0.1]],
                     dtype=torch.float64)
    alpha = weights("upgrad", J @ J.T)
    d = alpha @ J
    torch.testing.assert_close(d, torch.tensor([0.82, 0.066, -0.42], dtype=torch.float64),
                               atol=5e-3, rtol=0)
    assert float((J @ d).min()) >= -1e-12 and float(alpha.max()) < 1.0


def test_upgrad_exact_opposites_float32():
    g = torch.tensor([[0.3, -1.7, 2.2], [-0.3, 1.7, -2.2]], dtype=torch.float64) * 1e3
    alpha = weights("upgrad", (g @ g.T).float())
    assert float(alpha.abs().max()) < 2.0  # (1, 1): both projections are 0


# --- MGDA --------------------------------------------------------------------------------------


def min_norm_reference(K: np.ndarray) -> float:
    T = K.shape[0]
    a = clarabel_qp(sparse.csc_matrix(K), np.zeros(T), A=np.ones((1, T)), b=np.ones(1),
                    lb=np.zeros(T))
    return float(a @ K @ a)


@SETTINGS
@given(case=cases())
def test_mgda_is_the_min_norm_point(case):
    G, K, _ = case
    Ks = seen(K)
    s = float(Ks.diagonal().max())
    alpha = weights("mgda", K)
    assert float(alpha.min()) >= 0.0 and abs(float(alpha.sum()) - 1.0) < 1e-12
    if s == 0.0:
        return
    A = Ks / s
    tol = 1e-10 if K.dtype == torch.float64 else 1e-5
    f = float(alpha @ A @ alpha)
    # optimality on the simplex: the Frank-Wolfe gap a^T A a - min_t (A a)_t is (almost) 0
    assert f - float((A @ alpha).min()) <= tol
    # and the value is the QP solver's
    assert f <= min_norm_reference(A.numpy()) + tol


@pytest.mark.parametrize("norm", [1e-8, 4e-8, 1.0, 1e3, 1e4, 1e8])
def test_mgda_orthogonal_pair_at_any_scale(norm):
    G = norm * torch.eye(2, dtype=torch.float64)
    torch.testing.assert_close(weights("mgda", G @ G.T), torch.tensor([0.5, 0.5]).double())


def test_mgda_loss_normalization_small_losses():
    G = 10.0 * torch.eye(2, dtype=torch.float64)
    losses = torch.full((2,), 1e-3, dtype=torch.float64)
    alpha = weights("mgda", G @ G.T, losses=losses, normalization="loss")
    torch.testing.assert_close(alpha, torch.tensor([500.0, 500.0]).double())


# --- CAGrad ------------------------------------------------------------------------------------


def cagrad_reference(A: np.ndarray, c: float) -> float:
    """max_d min_t g_t . d s.t. ||d - g_0|| <= c ||g_0||, by Clarabel's SOCP (A = K / max K_tt)."""
    T = A.shape[0]
    R = psd_sqrt_factor(torch.as_tensor(A)).numpy()  # R^T R = A: columns of R are the g_t
    Gm = R.T  # (T, T) rows g_t
    g0 = Gm.mean(0)
    r = c * math.sqrt(max(float(g0 @ g0), 0.0))
    # variables x = (d (T,), s); minimise -s
    q = np.zeros(T + 1)
    q[-1] = -1.0
    rows = np.hstack([-Gm, np.ones((T, 1))])  # s - g_t . d <= 0
    soc = np.zeros((T + 1, T + 1))
    soc[1:, :T] = -np.eye(T)  # slack = (r, d - g0)
    Amat = sparse.csc_matrix(np.vstack([rows, soc]))
    b = np.concatenate([np.zeros(T), [r], -g0])
    cones = [clarabel.NonnegativeConeT(T), clarabel.SecondOrderConeT(T + 1)]
    settings_ = clarabel.DefaultSettings()
    settings_.verbose = False
    settings_.tol_gap_abs = settings_.tol_gap_rel = settings_.tol_feas = 1e-12
    sol = clarabel.DefaultSolver(sparse.csc_matrix((T + 1, T + 1)), q, Amat, b, cones,
                                 settings_).solve()
    return float(sol.x[-1])


@SETTINGS
@given(case=cases(), c=st.sampled_from([0.1, 0.4, 0.9]))
def test_cagrad_solves_its_problem(case, c):
    """Per-task scales 1e-8..1e8 (norm ratios up to 1e16)."""
    G, K, _ = case
    Ks = seen(K)
    T = K.shape[0]
    s = float(Ks.diagonal().max())
    alpha = weights("cagrad", K, c=c, rescale=0)
    if s == 0.0:
        return
    A = Ks / s
    tol = 1e-7 if K.dtype == torch.float64 else 1e-3
    mean = torch.full((T,), 1.0 / T, dtype=torch.float64)
    g0_sq = float(mean @ A @ mean)
    r = c * math.sqrt(max(g0_sq, 0.0))
    step = alpha - mean  # d - g_0 in coefficients
    # feasible: d in the ball around g_0
    assert math.sqrt(max(float(step @ A @ step), 0.0)) <= r * (1 + 1e-9) + tol
    # optimal: its worst inner product is the optimum of the SOCP
    value = float((A @ alpha).min())
    assert value >= cagrad_reference(A.numpy(), c) - tol
    # nothing explodes: ||d - g_0|| <= r bounds the step; the coefficients stay moderate
    assert bounded(alpha, K, 1e4 * T)


def test_cagrad_zero_in_hull_reproducer():
    J = torch.tensor([[1.0, 0, 0], [-1.0, 0, 0], [0.3, 1.0, 0]], dtype=torch.float64)
    alpha = weights("cagrad", J @ J.T, rescale=0)
    d = alpha @ J
    assert float((J @ d).min()) >= -1e-12  # the optimum is 0
    assert float(alpha.abs().max()) < 1.0


# --- PCGrad / GradVac: the paper's procedures on explicit vectors -------------------------------


def pcgrad_explicit(G: np.ndarray, orders) -> np.ndarray:
    out = G.copy()
    for i in range(len(G)):
        for j in orders[i]:
            gj = G[j]
            sq = gj @ gj
            if j == i or sq == 0.0:
                continue
            dot = out[i] @ gj
            if dot < 0:
                out[i] = out[i] - dot / sq * gj
    return out


@SETTINGS
@given(case=cases(dtypes=("float64",)), seed=st.integers(0, 1000))
def test_pcgrad_matches_the_procedure(case, seed):
    G, K, _ = case
    T = K.shape[0]
    gen = torch.Generator().manual_seed(seed)
    orders = [torch.randperm(T, generator=gen).tolist() for _ in range(T)]
    C = pcgrad_coefficients(seen(K), orders)
    assert torch.isfinite(C).all()
    mine = (C @ G).numpy()
    ref = pcgrad_explicit(G.numpy(), orders)
    norms = np.linalg.norm(G.numpy(), axis=1)
    err = np.linalg.norm(mine - ref, axis=1)
    assert np.all(err <= 1e-7 * norms + 1e-300), (err / np.maximum(norms, 1e-300)).max()


def gradvac_explicit(G: np.ndarray, targets: np.ndarray, orders, beta: float):
    out = G.copy()
    targets = targets.copy()
    for i in range(len(G)):
        if G[i] @ G[i] == 0.0:
            continue
        for j in orders[i]:
            gj = G[j]
            if j == i or gj @ gj == 0.0:
                continue
            ni, nj = np.linalg.norm(out[i]), np.linalg.norm(gj)
            if ni == 0.0:
                break
            cos = float(np.clip(out[i] @ gj / (ni * nj), -1.0, 1.0))
            phi = targets[i, j]
            if cos < phi:
                out[i] = out[i] + ni * (phi * math.sqrt(1 - cos**2) - cos * math.sqrt(1 - phi**2)) / (
                    nj * math.sqrt(1 - phi**2)) * gj
            targets[i, j] = (1 - beta) * phi + beta * cos
    return out, targets


@SETTINGS
@given(case=cases(dtypes=("float64",)), seed=st.integers(0, 1000))
def test_gradvac_matches_the_procedure(case, seed):
    G, K, _ = case
    T = K.shape[0]
    rng = np.random.default_rng(seed)
    targets = rng.uniform(-0.8, 0.8, size=(T, T))
    gen = torch.Generator().manual_seed(seed)
    orders = [torch.randperm(T, generator=gen).tolist() for _ in range(T)]
    tt = torch.as_tensor(targets.copy())
    C = gradvac_coefficients(seen(K), tt, orders, 0.1)
    mine = (C @ G).numpy()
    ref, ref_targets = gradvac_explicit(G.numpy(), targets, orders, 0.1)
    norms = np.linalg.norm(G.numpy(), axis=1)
    err = np.linalg.norm(mine - ref, axis=1)
    # GradVac grows g_i' (by at most 1 / sqrt(1 - phi^2) per step): relative to ||g_i'||
    scale = np.maximum(norms, np.linalg.norm(ref, axis=1))
    assert np.all(err <= 1e-6 * scale + 1e-300), (err / np.maximum(scale, 1e-300)).max()
    Gn = G.numpy() / np.maximum(norms, 1e-300)[:, None]
    cosines = np.abs(Gn @ Gn.T)[~np.eye(T, dtype=bool)]
    if not np.any(cosines > 1 - 1e-9):
        # for (anti-)parallel pairs (cos = -1: exact opposites, P = 1) the update leaves a
        # vector of about 1e-8 |g_i| whose direction is rounding noise (the paper's formula is
        # ill-posed there), so its later cosines are too; the vectors themselves agree (above)
        np.testing.assert_allclose(tt.numpy(), ref_targets, atol=1e-6)


# --- IMTL-G ------------------------------------------------------------------------------------


@SETTINGS
@given(case=cases())
def test_imtl_equal_projections(case):
    G, K, family = case
    Ks = seen(K)
    alpha = weights("imtl", K)
    n = Ks.diagonal().clamp(min=0).sqrt()
    on = n > 0
    assert bool((alpha[~on] == 0).all())
    if not on.any():
        return
    assert abs(float(alpha[on].sum()) - 1.0) < 1e-9
    proj = (Ks @ alpha)[on] / n[on]  # d . u_t
    scale = float((n * alpha.abs()).sum())
    tol = 1e-7 if K.dtype == torch.float64 else 1e-2
    assert float((proj - proj.mean()).abs().max()) <= tol * scale


# --- Nash-MTL ----------------------------------------------------------------------------------


@SETTINGS
@given(case=cases(families=("gaussian", "duplicates", "zero_rows")))
def test_nashmtl_bargaining_condition(case):
    G, K, _ = case
    Ks = seen(K)
    alpha = weights("nashmtl", K)
    on = Ks.diagonal() > 0
    assert bool((alpha[~on] == 0).all())
    if not on.any():
        return
    assert float(alpha[on].min()) > 0
    product = (Ks @ alpha)[on] * alpha[on]  # (K alpha)_t alpha_t = 1
    tol = 1e-6 if K.dtype == torch.float64 else 1e-2
    torch.testing.assert_close(product, torch.ones_like(product), atol=tol, rtol=0)


def test_small_but_real_gradients_are_kept():
    """A gradient 1e-9 times the largest is projected onto, weighted and balanced (issue 17, 4)."""
    G = torch.tensor([[1.0, 0.0], [-1e-9, 1e-9]], dtype=torch.float64)
    K = G @ G.T
    C = pcgrad_coefficients(K, [[0, 1], [1, 0]])
    # g_1 projected onto the normal plane of g_2, dotted with g_2: zero but for rounding. The
    # projection takes the coefficient K_01 / K_11 (2 inner products of length 2 and a division),
    # C @ G (one more) and the final dot (one more): 4 chained length-2 inner products over
    # ||g_1|| ||g_2|| = 1.4e-9, a bound of 1.4e-24. The test's point is the scale: a method that
    # dropped g_2 as "numerically zero" leaves g_1 . g_2 = -1e-9, 15 orders of magnitude above it.
    n1, n2 = float(G[0].norm()), float(G[1].norm())
    assert abs(float((C[0] @ G) @ G[1])) <= dot_bound(2, n1, n2, steps=4)
    a = weights("imtl", K)
    proj = (K @ a) / K.diagonal().sqrt()
    assert float(a[1]) != 0.0 and abs(float(proj[0] - proj[1])) < 1e-9 * float(proj.abs().max())
    a = weights("nashmtl", K)
    torch.testing.assert_close((K @ a) * a, torch.ones(2, dtype=torch.float64))
