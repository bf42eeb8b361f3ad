"""Known answers of the loss-based methods (and GradNorm / DB-MTL, which read only K's diagonal)."""

from __future__ import annotations

import math

import torch

from polytask.weighting import build_weighting

TASKS = ["a", "b"]


def close(actual, expected, tol=1e-6):
    torch.testing.assert_close(
        torch.as_tensor(actual, dtype=torch.float64),
        torch.as_tensor(expected, dtype=torch.float64),
        rtol=tol,
        atol=tol,
    )


# --- uncertainty weighting -------------------------------------------------------------------


def test_uw_gradient_sign_follows_the_loss():
    method = build_weighting("uw", TASKS)
    losses = torch.tensor([4.0, 0.1], requires_grad=True)
    total, weights = method.combine(losses, TASKS)
    total.backward()
    # d/ds [0.5 exp(-s) L + 0.5 s] = 0.5 (1 - exp(-s) L) at s = 0
    close(method.log_vars.grad, [0.5 * (1 - 4.0), 0.5 * (1 - 0.1)])
    assert method.log_vars.grad[0] < 0 < method.log_vars.grad[1]  # large loss -> s grows
    close(losses.grad, [0.5, 0.5])
    close(weights, [0.5, 0.5])
    close(total, 0.5 * 4.1)


def test_uw_converges_to_log_loss():
    method = build_weighting("uw", TASKS, {"init": 1.0})
    opt = torch.optim.SGD(method.parameters(), lr=0.5)
    losses = torch.tensor([4.0, 0.1])
    for _ in range(300):
        opt.zero_grad()
        method.combine(losses, TASKS)[0].backward()
        opt.step()
    close(method.log_vars.detach(), [math.log(4.0), math.log(0.1)], tol=1e-4)


def test_uw_subset_only_touches_present_tasks():
    method = build_weighting("uw", ["a", "b", "c"])
    total, w = method.combine(torch.tensor([2.0]), ["b"])
    total.backward()
    close(method.log_vars.grad, [0.0, 0.5 * (1 - 2.0), 0.0])


# --- DWA -------------------------------------------------------------------------------------


def test_dwa_follows_its_formula():
    method = build_weighting("dwa", TASKS, {"window": 2, "temperature": 2.0})
    history = [(1.0, 2.0), (3.0, 2.0), (1.0, 3.0), (1.0, 1.0), (0.25, 4.0), (0.75, 4.0), (1, 1)]
    got = [method.combine(torch.tensor(l, dtype=torch.float64), TASKS)[1] for l in history]
    for w in got[:4]:  # fewer than two complete windows: equal weights
        close(w, [1.0, 1.0])
    # windows: mean (2, 2), then (1, 2): r = (0.5, 1.0); w = 2 softmax(r / 2)
    #   e^0.25 = 1.2840254, e^0.5 = 1.6487213 -> w = (0.8756470, 1.1243530)
    close(got[4], [0.8756470, 1.1243530])
    close(got[5], [0.8756470, 1.1243530])  # same windows until the third one completes
    # third window mean (0.5, 4): r = (0.5 / 1, 4 / 2) = (0.5, 2); e^0.25, e^1 = 2.7182818
    close(got[6], [0.6416426, 1.3583574])
    for w in got:
        close(w.sum(), 2.0)


# --- RLW -------------------------------------------------------------------------------------


def test_rlw_weights_sum_to_one_and_are_seeded():
    tasks = ["a", "b", "c", "d"]
    losses = torch.ones(4)

    def draws(seed, n=5):
        m = build_weighting("rlw", tasks, {"seed": seed})
        return torch.stack([m.combine(losses, tasks)[1] for _ in range(n)])

    first, again, other = draws(3), draws(3), draws(4)
    close(first.sum(1), torch.ones(5))
    assert (first > 0).all()
    assert torch.equal(first, again)
    assert not torch.allclose(first, other)
    assert not torch.allclose(first[0], first[1])  # fresh weights every step


def test_rlw_subset_sums_to_one():
    m = build_weighting("rlw", ["a", "b", "c"])
    total, w = m.combine(torch.tensor([1.0, 2.0]), ["c", "a"])
    close(w.sum(), 1.0)
    close(total, w[0] * 1.0 + w[1] * 2.0)


# --- FAMO ------------------------------------------------------------------------------------


def test_famo_first_update_is_one_adam_step():
    m = build_weighting("famo", TASKS, {"lr": 0.025, "gamma": 0.0})
    _, w0 = m.combine(torch.tensor([1.0, 1.0], dtype=torch.float64), TASKS)
    close(w0, [0.5, 0.5])
    m.combine(torch.tensor([0.9, 1.0], dtype=torch.float64), TASKS)
    # delta = (log 1/0.9, 0); grad = z (delta - z.delta) = (+, -); Adam's first step: -lr sign
    close(m.logits, [-0.025, 0.025], tol=1e-6)


def test_famo_decreasing_loss_gets_lower_weight():
    m = build_weighting("famo", TASKS)
    shares = []
    for k in range(30):
        losses = torch.tensor([0.9**k, 1.0], dtype=torch.float64)  # task a improves, b does not
        _, alpha = m.combine(losses, TASKS)
        close(alpha.sum(), 1.0)
        z = m.probabilities()
        # FAMO's weights on the log-losses: alpha_t L_t is proportional to z_t
        share = alpha * losses
        close(share / share.sum(), z)
        shares.append(float(z[0]))
    assert all(b < a for a, b in zip(shares[1:], shares[2:]))
    assert shares[-1] < 0.4


# --- GradNorm --------------------------------------------------------------------------------


def run_gradnorm(norms, loss_seq, steps=800, lr=0.002, alpha=1.0):
    m = build_weighting("gradnorm", TASKS, {"alpha": alpha})
    opt = torch.optim.SGD(m.parameters(), lr=lr)
    K = torch.diag(torch.tensor(norms, dtype=torch.float64) ** 2)
    gaps = []
    for k in range(steps):
        losses = torch.tensor(loss_seq(k), dtype=torch.float64, requires_grad=True)
        opt.zero_grad()
        total, w = m.combine(losses, TASKS, K)
        total.backward()
        close(losses.grad, w)  # the model sees w_t, the GradNorm term only moves w
        opt.step()
        gaps.append(w.to(torch.float64) * torch.tensor(norms, dtype=torch.float64))
    return m, gaps


def test_gradnorm_equalises_weighted_gradient_norms():
    m, gaps = run_gradnorm([1.0, 4.0], lambda k: [1.0, 1.0])
    first, last = gaps[0], gaps[-1]
    assert abs(float(first[0] - first[1])) == 3.0
    assert abs(float(last[0] - last[1])) < 0.1
    # w sums to T = 2 and w_a * 1 = w_b * 4  ->  w = (1.6, 0.4)
    w = m.loss_weights.detach()
    w = w * 2 / w.sum()
    close(w, [1.6, 0.4], tol=0.03)


def test_gradnorm_follows_training_rates():
    # equal gradient norms, task b trains 4x faster: r = (1.6, 0.4), alpha = 1 -> w = (1.6, 0.4)
    m, _ = run_gradnorm([1.0, 1.0], lambda k: [1.0, 1.0] if k == 0 else [1.0, 0.25])
    w = m.loss_weights.detach()
    close(w * 2 / w.sum(), [1.6, 0.4], tol=0.03)


# --- DB-MTL ----------------------------------------------------------------------------------


def test_dbmtl_scaled_gradients_have_equal_norms():
    m = build_weighting("dbmtl", TASKS, {"beta": 0.5})
    norms1, norms2 = torch.tensor([1.0, 4.0]), torch.tensor([2.0, 1.0])
    _, a1 = m.combine(torch.tensor([2.0, 1.0]), TASKS, torch.diag(norms1**2))
    # log-gradient norms ||g||/L = (0.5, 4): EMA starts there, M = 4
    close(a1 * norms1, [4.0, 4.0])
    _, a2 = m.combine(torch.tensor([1.0, 1.0]), TASKS, torch.diag(norms2**2))
    # EMA = 0.5 (0.5, 4) + 0.5 (2, 1) = (1.25, 2.5) -> M = 2.5
    close(a2 * norms2, [2.5, 2.5])
    close(a2, [1.25, 2.5])


def test_dbmtl_direction_with_correlated_gradients():
    m = build_weighting("dbmtl", TASKS)
    G = torch.tensor([[3.0, 4.0], [0.0, 0.5]], dtype=torch.float64)
    _, a = m.combine(torch.tensor([1.0, 0.1], dtype=torch.float64), TASKS, G @ G.T)
    d = a.to(torch.float64) @ G
    M = max(5.0 / 1.0, 0.5 / 0.1)  # both log-gradients have norm 5
    close(d, M * (G[0] / 5.0 + G[1] / 0.5))
