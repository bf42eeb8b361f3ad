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
- torchjd's CAGrad and Nash-MTL need cvxpy (not installed for the tests); not cross-checked.
"""

from __future__ import annotations

import pytest
import torch

tj = pytest.importorskip("torchjd.aggregation")
pytest.importorskip("quadprog")
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
