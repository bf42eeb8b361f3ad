"""One TAG lookahead: how a step on task i's gradient alone changes every task's loss.

Task Affinity Grouping (Fifty, Amid, Zhao, Yu, Anil & Finn, "Efficiently Identifying Task
Groupings for Multi-Task Learning", NeurIPS 2021), eq. 3: with ``theta_s`` the shared
parameters and ``theta_s'(i) = theta_s - step_i`` the shared parameters after a lookahead step
on task i's loss alone,

    Z[i -> j] = 1 - L_j(batch_j; theta_s'(i), theta_j) / L_j(batch_j; theta_s, theta_j)

positive: the step for task i lowered task j's loss (i helps j); negative: it raised it.

The lookahead step. The paper's reference code (google-research ``tag/``, CelebA) applies the
run's own optimizer update to the shared parameters (SGD with momentum: the momentum buffer
plus ``lr * grad_i``). polytask fine-tunes with AdamW at ~2e-5, where a plain SGD step
``lr * grad_i`` moves the loss by ~1e-6 (below the noise). So the lookahead takes the step
AdamW would take on task i's gradient with the run's own second-moment estimate and without
the shared momentum (beta1 = 0; the momentum is the same for every task i and would dominate
and blur the differences)::

    v_i   = beta2 * v + (1 - beta2) * g_i**2          (v: the optimizer's exp_avg_sq; 0 at step 0)
    step_i = lr * g_i / (sqrt(v_i / (1 - beta2**(k + 1))) + eps)

with ``lr`` the lookahead learning rate (default: the run's ``train.lr``, not the warmed-up
scheduled value, which is 0 at step 0) and AdamW's ``beta2``/``eps``. Weight decay is left out
(it is the same for every task). Heads (task-specific parameters) are not moved.

Side effects: none. The model runs in eval mode (no dropout: no RNG is drawn),
``autograd.grad`` leaves ``.grad`` untouched, the optimizer state is only read, and every shared
parameter is copied back bit-exactly afterwards.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from polytask.gradients import cosines
from polytask.steps import task_losses


@dataclass
class Lookahead:
    """One measurement over the tasks ``names`` (all (T, T), row i = the task stepped on)."""

    names: list[str]
    affinity: Tensor  # (T, T) Z[i -> j]
    cosine: Tensor  # (T, T) cosine of the shared-parameter gradients g_i, g_j
    before: list[float]  # (T,) L_j before any step


def lookahead(model: nn.Module, tasks: dict, batches: dict[str, dict], params: list[nn.Parameter],
              optimizer: torch.optim.Optimizer | None, lr: float) -> Lookahead:
    """Z[i -> j] for every ordered pair of the tasks in ``batches`` (one batch each)."""
    names = list(batches)
    was_training = model.training
    model.eval()
    try:
        before, grads = task_gradients(model, tasks, batches, params)  # (T,), T x [P]
        saved = [p.detach().clone() for p in params]
        rows = []
        for g in grads:
            with torch.no_grad():
                for p, d in zip(params, adam_step(params, g, optimizer, lr)):
                    p.sub_(d)
                after = [float(loss) for loss in task_losses(model, tasks, batches)[0]]
                for p, s in zip(params, saved):
                    p.copy_(s)
            rows.append([1.0 - a / b if b != 0 else 0.0 for a, b in zip(after, before)])
    finally:
        model.train(was_training)
    flat = torch.stack([torch.cat([x.reshape(-1) for x in g]).float() for g in grads])  # (T, P)
    return Lookahead(names, torch.tensor(rows, dtype=torch.float64), cosines(flat @ flat.T).double(), before)


def task_gradients(model: nn.Module, tasks: dict, batches: dict[str, dict],
                   params: list[nn.Parameter]) -> tuple[list[float], list[list[Tensor]]]:
    """Each task's loss on its batch and its gradient w.r.t. ``params`` (zeros where unused)."""
    before, grads = [], []
    for name, batch in batches.items():
        out, _ = model(batch, name)
        loss = tasks[name].loss(out, batch)
        g = torch.autograd.grad(loss, params, allow_unused=True)
        grads.append([torch.zeros_like(p) if gp is None else gp.detach() for p, gp in zip(params, g)])
        before.append(float(loss.detach()))
    return before, grads


def adam_step(params: list[nn.Parameter], grad: list[Tensor], optimizer, lr: float) -> list[Tensor]:
    """The step (to subtract) AdamW would take on ``grad`` with its own second moment, beta1 = 0."""
    inner = getattr(optimizer, "optimizer", optimizer)  # accelerate wraps the optimizer
    groups = {}
    if inner is not None:
        groups = {id(p): grp for grp in inner.param_groups for p in grp["params"]}
    out = []
    for p, g in zip(params, grad):
        grp = groups.get(id(p), {})
        beta2, eps = grp.get("betas", (0.9, 0.999))[1], grp.get("eps", 1e-8)
        state = inner.state.get(p, {}) if inner is not None else {}
        v, k = state.get("exp_avg_sq"), float(state.get("step", 0))
        v_i = g * g if v is None else beta2 * v + (1 - beta2) * g * g
        v_hat = v_i if v is None else v_i / (1 - beta2 ** (k + 1))
        out.append(lr * g / (v_hat.sqrt() + eps))
    return out
