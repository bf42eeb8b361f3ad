"""Cross-check against torchjd (Quinton & Rey's library: independent implementations).

Same direction (cosine > 0.999) where the conventions agree; the differences are documented
in docs/weighting.md ("Compared with torchjd"):
- torchjd's UPGrad regularises the Gram matrix (``reg_eps = 1e-4`` on a normalised K) before
  its QP; here the QP is exact. With gradients of similar norms the defaults agree; with norms
  100x apart the regularisation moves the short gradients' projections, so the check uses
  torchjd's projector with ``reg_eps = 1e-12``.
- torchjd's MGDA is the paper's Frank-Wolfe (stops when the step is < epsilon = 1e-3); run
  here with a tight epsilon, it converges to the same min-norm point as Wolfe's algorithm.
- torchjd's PCGrad uses torch's global random order; with two tasks the order does not matter.
- torchjd's IMTL-G is ``pinv(K) ||g|| / sum``, the same equations as the paper's closed form.
- torchjd's Aligned-MTL applies the balance matrix to mean preferences (1/T); here to unit
  preferences (the paper's sum): the same direction, T times longer.
- torchjd's CAGrad solves the same dual with cvxpy/Clarabel and leaves ``rescale`` to the caller:
  compared with ``rescale: 0``, same direction.
- torchjd's Nash-MTL is the authors' sequential convex procedure, whose constraints are
  ``alpha_t (K alpha)_t >= 1`` rather than the bargaining equations ``alpha_t (K alpha)_t = 1``.
  Where its solution makes every constraint tight it is the bargaining solution, and the
  directions agree; where it leaves a constraint slack (its residual is far from 1) it is not,
  and this method is checked to solve the equations instead (docs/weighting.md).
"""

from __future__ import annotations

import pytest
import torch

tj = pytest.importorskip("torchjd.aggregation")
pytest.importorskip("quadprog")
pytest.importorskip("cvxpy")  # torchjd's CAGrad and Nash-MTL (the torchjd[cagrad,nash-mtl] extras)
pytest.importorskip("ecos")
from torchjd.linalg import QuadprogProjector  # noqa: E402

from polytask.weighting import build_weighting  # noqa: E402


def tasks_of(T):
    return [f"t{i}" for i in range(T)]


def ours(name, K, **kwargs):
    T = K.shape[0]
    method = build_weighting(name, tasks_of(T), kwargs)
    _, alpha = method.combine(torch.ones(T, dtype=torch.float64), tasks_of(T), K)
    return alpha.to(torch.float64)


def cosine(G, a, b):
    """Cosine of the two directions; 1 when both are zero (below 1e-6 of the longest gradient:
    e.g. T > P, where the dual cone and the hull's min-norm point are often just {0}, and the
    cosine of two rounding residues means nothing)."""
    d1, d2 = a @ G, b @ G
    n1, n2 = float(d1.norm()), float(d2.norm())
    if max(n1, n2) <= 1e-6 * float(G.norm(dim=1).max()):
        return 1.0
    return float(d1 @ d2) / (n1 * n2)


def gradients(seed, T, P, conflict):
    gen = torch.Generator().manual_seed(seed)
    G = torch.randn(T, P, generator=gen, dtype=torch.float64)
    if conflict:  # push half the tasks against the others
        G[: T // 2] -= 1.5 * G[T // 2 :].mean(0)
    return G * torch.logspace(-1, 1, T, dtype=torch.float64)[:, None]


CASES = [(seed, T, P, conflict) for seed, (T, P) in enumerate([(2, 5), (3, 4), (5, 8), (8, 12),
                                                                (16, 20), (6, 3)])
         for conflict in (False, True)]


@pytest.mark.parametrize("seed,T,P,conflict", CASES)
def test_upgrad_matches_torchjd(seed, T, P, conflict):
    G = gradients(seed, T, P, conflict)
    K = G @ G.T
    # torchjd's default projector regularises the normalised K with reg_eps = 1e-4, which moves
    # the projections of gradients 100x shorter than the longest; without it, the same QP
    exact = QuadprogProjector(norm_eps=0.0, reg_eps=1e-12)
    theirs = tj.UPGradWeighting(projector=exact)(K)
    assert cosine(G, ours("upgrad", K), theirs) > 0.999


def test_upgrad_torchjd_default_agrees_on_similar_norms():
    gen = torch.Generator().manual_seed(0)
    G = torch.randn(5, 7, generator=gen, dtype=torch.float64)
    G[:2] -= 1.5 * G[2:].mean(0)
    K = G @ G.T
    assert cosine(G, ours("upgrad", K), tj.UPGradWeighting()(K)) > 0.999


@pytest.mark.parametrize("seed,T,P,conflict", CASES)
def test_mgda_matches_torchjd(seed, T, P, conflict):
    G = gradients(seed, T, P, conflict)
    K = G @ G.T
    theirs = tj.MGDAWeighting(epsilon=1e-9, max_iters=20000)(K)
    mine = ours("mgda", K)
    assert cosine(G, mine, theirs) > 0.999
    # Wolfe's exact point is never longer than Frank-Wolfe's
    assert float(mine @ K @ mine) <= float(theirs @ K @ theirs) * (1 + 1e-9) + 1e-15


@pytest.mark.parametrize("seed,T,P,conflict", [c for c in CASES if c[1] <= 8])
def test_imtl_matches_torchjd(seed, T, P, conflict):
    G = gradients(seed, T, P, conflict)
    if T > P:
        pytest.skip("IMTL-G's projections are all 0 when T > P: any direction in the null set")
    K = G @ G.T
    theirs = tj.IMTLGWeighting()(K)
    mine = ours("imtl", K)
    assert cosine(G, mine, theirs) > 0.999
    torch.testing.assert_close(mine, theirs, rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize("seed", range(6))
def test_pcgrad_matches_torchjd_two_tasks(seed):
    G = gradients(seed, 2, 5, conflict=True)
    K = G @ G.T
    theirs = tj.PCGradWeighting()(K)  # with two tasks the random order does not matter
    torch.testing.assert_close(ours("pcgrad", K), theirs, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("seed,T,P,conflict", CASES)
def test_alignedmtl_matches_torchjd(seed, T, P, conflict):
    G = gradients(seed, T, P, conflict)
    K = G @ G.T
    theirs = tj.AlignedMTLWeighting()(K)  # B (1/T) 1
    mine = ours("alignedmtl", K)  # B 1
    assert cosine(G, mine, theirs) > 0.999
    torch.testing.assert_close(mine / T, theirs, rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize("c", [0.1, 0.4, 0.9])
@pytest.mark.parametrize("seed,T,P,conflict", CASES)
def test_cagrad_matches_torchjd(seed, T, P, conflict, c):
    G = gradients(seed, T, P, conflict)
    K = G @ G.T
    theirs = tj.CAGradWeighting(c=c, norm_eps=1e-12)(K)  # no rescale division there
    assert cosine(G, ours("cagrad", K, c=c, rescale=0), theirs) > 0.999


def nash_theirs(G):
    """torchjd's Nash-MTL weights for the gradients G (T, P), fresh state, no norm clipping."""
    from torchjd.aggregation._nash_mtl import _NashMTLWeighting

    return _NashMTLWeighting(n_tasks=G.shape[0], max_norm=0.0, update_weights_every=1, optim_niter=20)(G)


@pytest.mark.filterwarnings("ignore::UserWarning")
@pytest.mark.parametrize("seed,T,P,conflict", [c for c in CASES if c[1] <= c[2]])
def test_nashmtl_agrees_with_torchjd_where_its_constraints_are_tight(seed, T, P, conflict):
    """Where torchjd's solution satisfies the bargaining equations (every ``alpha_t (K alpha)_t``
    within 1e-3 of 1), the directions agree; where it leaves a constraint slack, this method's
    weights satisfy the equations that torchjd's do not."""
    G = gradients(seed, T, P, conflict)
    K = G @ G.T
    theirs = nash_theirs(G).to(torch.float64)
    mine = ours("nashmtl", K)
    torch.testing.assert_close((K @ mine) * mine, torch.ones(T, dtype=torch.float64), rtol=0, atol=1e-5)
    residual = (K @ theirs) * theirs  # (T,) the constraint values; 1 when tight
    if float((residual - 1).abs().max()) < 1e-3:
        assert cosine(G, mine, theirs) > 0.999
    else:
        assert float(residual.max()) > 1.5  # slack: a relaxation's solution, not the bargaining one


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_nashmtl_torchjd_cases_cover_both_outcomes():
    """The fixed cases above include some where torchjd's constraints are all tight (so the
    cross-check compares directions) and some where they are not."""
    tight = []
    for seed, T, P, conflict in CASES:
        if T <= P:
            G = gradients(seed, T, P, conflict)
            a = nash_theirs(G).to(torch.float64)
            tight.append(float(((G @ G.T @ a) * a - 1).abs().max()) < 1e-3)
    assert 3 <= sum(tight) < len(tight)
