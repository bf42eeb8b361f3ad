"""CAGrad: conflict-averse gradient descent.

Liu, Liu, Jin, Stone & Liu, "Conflict-Averse Gradient Descent for Multi-task Learning",
NeurIPS 2021.

With ``g_0`` the average gradient and ``g_w = sum_t w_t g_t``, solve the dual over the simplex

    w* = argmin_w  g_w . g_0 + c ||g_0|| ||g_w||

(SLSQP from scipy, as in the authors' code, on K scaled to unit mean diagonal, which leaves
``w*`` unchanged; tasks with a zero gradient are left out of the dual), then

    d = g_0 + (c ||g_0|| / ||g_w*||) g_w*,   divided by (1 + c^2) when ``rescale = 1``
    (by (1 + c) when ``rescale = 2``, not at all when 0), as in the authors' code.

So ``alpha = (1/T + lambda w*) / scale``; with ``c = 0`` it is the average gradient. If
``g_w* = 0`` (0 in the convex hull), ``d = g_0`` is kept (every point of the ball is optimal).

Hyper-parameters:
    c: radius of the conflict-averse ball, relative to ``||g_0||`` (default 0.4).
    rescale: 0, 1 (default) or 2, see above.

Limits: needs the gradients and every task every step. Cost: a small SLSQP solve, O(T^2) per
objective evaluation.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor

from polytask.weighting._utils import active_mask, check_all_tasks, check_gram
from polytask.weighting.base import Weighting


class CAGrad(Weighting):
    needs_grads = True
    needs_all_tasks = True

    def __init__(self, tasks: list[str], *, c: float = 0.4, rescale: int = 1):
        super().__init__(tasks)
        if c < 0 or rescale not in (0, 1, 2):
            raise ValueError("cagrad: c must be >= 0 and rescale one of 0, 1, 2")
        self.c, self.rescale = float(c), int(rescale)

    def combine(self, losses: Tensor, tasks: list[str], gram: Tensor | None = None):
        check_all_tasks(self, tasks)
        T = len(tasks)
        K = check_gram(gram, T, "cagrad")  # (T, T)
        mean = torch.full((T,), 1.0 / T, dtype=K.dtype, device=K.device)  # g_0 = G^T mean
        g0_norm = math.sqrt(max(float(mean @ K @ mean), 0.0))
        alpha = mean.clone()
        on = active_mask(K).nonzero()[:, 0]  # zero gradients would make g_w = 0 trivially
        if self.c > 0 and g0_norm > 0 and len(on) > 0:
            w = torch.zeros(T, dtype=K.dtype, device=K.device)
            w[on] = self._dual(K[on][:, on], (K @ mean)[on], g0_norm)
            gw_norm = math.sqrt(max(float(w @ K @ w), 0.0))
            if gw_norm > 1e-8 * math.sqrt(float(K.diagonal().max())):  # else d = g_0 is optimal
                alpha = mean + (self.c * g0_norm / gw_norm) * w
        alpha = alpha / {0: 1.0, 1: 1.0 + self.c**2, 2: 1.0 + self.c}[self.rescale]
        alpha = alpha.to(device=losses.device, dtype=losses.dtype)
        return self.weighted_sum(losses, alpha), alpha

    def _dual(self, K: Tensor, Kg0: Tensor, g0_norm: float) -> Tensor:
        """argmin over the simplex of ``w . (K 1/T) + c ||g_0|| sqrt(w^T K w)`` (n,)."""
        from scipy.optimize import minimize  # imported lazily: scipy is slow to import

        n = K.shape[0]
        scale = float(K.diagonal().mean())  # solve on K / scale: same minimiser
        A = (K / scale).cpu().numpy()  # (n, n)
        b = (Kg0 / scale).cpu().numpy()  # (n,) g_t . g_0, scaled
        radius = self.c * g0_norm / math.sqrt(scale)

        def objective(w: np.ndarray) -> float:
            return float(w @ b + radius * np.sqrt(max(w @ A @ w, 0.0) + 1e-12))

        res = minimize(
            objective,
            np.full(n, 1.0 / n),
            bounds=[(0.0, 1.0)] * n,
            constraints=({"type": "eq", "fun": lambda w: 1.0 - w.sum()},),
            method="SLSQP",
            options={"ftol": 1e-10, "maxiter": 200},
        )
        w = np.clip(res.x, 0.0, None) if np.all(np.isfinite(res.x)) else np.full(n, 1.0 / n)
        return torch.as_tensor(w / w.sum(), dtype=K.dtype, device=K.device)
