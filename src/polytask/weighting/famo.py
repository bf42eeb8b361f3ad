"""FAMO: fast adaptive multitask optimisation.

Liu, Liang, Lin, Zhang, Stone & Liu, "FAMO: Fast Adaptive Multitask Optimization",
NeurIPS 2023.

Task logits ``xi`` (T,) give ``z = softmax(xi)``; the model follows the gradient of
``sum_t z_t log L_t`` normalised by ``c = sum_t z_t / L_t``, i.e. coefficients on the raw losses

    alpha_t = z_t / (c * L_t)          (sum_t alpha_t = 1).

The logits are updated from the observed decrease of the log-losses,
``delta_t = log L_t(prev) - log L_t(now)``, with gradient ``J_softmax(xi)^T delta`` and an
explicit Adam step with L2 weight decay, all in buffers (not the outer optimizer). This is the
"next step's loss" variant: the update for the step taken with ``z(k-1)`` is made at the start
of step k from step k's losses (a new batch), so no extra forward pass is needed; the authors'
code instead re-evaluates the same batch after the step, which costs one more forward. A task
whose loss falls fast gets a lower ``z_t``.

Hyper-parameters:
    lr: learning rate of the logits' Adam (default 0.025).
    gamma: weight decay on the logits (default 1e-3).
    betas: Adam betas (default (0.9, 0.999)); eps: Adam epsilon (default 1e-8).
    min_losses: optional mapping task -> lower bound of its loss, subtracted before the log
        (default 0 for every task).

Limits: needs every task every step; losses should be > min_loss (they are floored at 1e-8 above
it). Cost O(T).
"""

from __future__ import annotations

import torch
from torch import Tensor

from polytask.weighting._utils import check_all_tasks
from polytask.weighting.base import Weighting


class FAMO(Weighting):
    needs_all_tasks = True

    def __init__(
        self,
        tasks: list[str],
        *,
        lr: float = 0.025,
        gamma: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        min_losses: dict[str, float] | None = None,
    ):
        super().__init__(tasks)
        self.lr, self.gamma, self.eps = float(lr), float(gamma), float(eps)
        self.betas = (float(betas[0]), float(betas[1]))
        self.min_losses = dict(min_losses or {})
        unknown = set(self.min_losses) - set(tasks)
        if unknown:
            raise ValueError(f"famo: min_losses given for unknown tasks: {sorted(unknown)}")
        T = len(tasks)
        f64 = torch.float64
        self.register_buffer(
            "floor", torch.tensor([float(self.min_losses.get(t, 0.0)) for t in tasks], dtype=f64)
        )
        self.register_buffer("logits", torch.zeros(T, dtype=f64))  # xi
        self.register_buffer("exp_avg", torch.zeros(T, dtype=f64))  # Adam m
        self.register_buffer("exp_avg_sq", torch.zeros(T, dtype=f64))  # Adam v
        self.register_buffer("adam_steps", torch.zeros((), dtype=torch.long))
        self.register_buffer("prev_log_losses", torch.zeros(T, dtype=f64))
        self.register_buffer("has_prev", torch.zeros((), dtype=torch.bool))

    def probabilities(self) -> Tensor:
        """``z = softmax(xi)`` (T_all,), in the order of ``self.tasks``."""
        return torch.softmax(self.logits, dim=0)

    def _update_logits(self, delta: Tensor) -> None:
        z = torch.softmax(self.logits, dim=0)  # (T,)
        grad = z * (delta - (z * delta).sum())  # J_softmax^T delta
        grad = grad + self.gamma * self.logits  # weight decay (L2, like torch.optim.Adam)
        b1, b2 = self.betas
        self.adam_steps += 1
        k = int(self.adam_steps)
        self.exp_avg.mul_(b1).add_((1 - b1) * grad)
        self.exp_avg_sq.mul_(b2).add_((1 - b2) * grad * grad)
        m_hat = self.exp_avg / (1 - b1**k)
        v_hat = self.exp_avg_sq / (1 - b2**k)
        self.logits.sub_(self.lr * m_hat / (v_hat.sqrt() + self.eps))

    def combine(self, losses: Tensor, tasks: list[str], gram: Tensor | None = None):
        check_all_tasks(self, tasks)
        idx = self.index(tasks).to(self.logits.device)
        D = (losses.detach().to(self.logits) - self.floor[idx]).clamp(min=1e-8)  # (T,)
        log_now = torch.zeros_like(self.prev_log_losses)
        log_now[idx] = D.log()  # (T_all,) in self.tasks order
        if bool(self.has_prev):
            self._update_logits(self.prev_log_losses - log_now)
        self.prev_log_losses.copy_(log_now)
        self.has_prev.fill_(True)
        z = torch.softmax(self.logits, dim=0)[idx]  # (T,)
        alpha = z / D
        alpha = alpha / alpha.sum()  # z_t / (c L_t)
        alpha = alpha.to(device=losses.device, dtype=losses.dtype)
        return self.weighted_sum(losses, alpha), alpha
