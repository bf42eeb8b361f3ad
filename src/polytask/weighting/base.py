"""The weighting interface: how per-task losses become one loss to back-propagate.

Every method, loss-based or gradient-based, answers one question: *with which coefficient does
each task's loss enter this step's backward pass?* Gradient methods (MGDA, PCGrad, CAGrad, ...)
compute a combined direction ``d = sum_t alpha_t g_t`` from the task gradients ``g_t``; since
every such direction is a linear combination of the task gradients, the method returns the
coefficients ``alpha`` and the trainer back-propagates ``sum_t alpha_t L_t`` once. In the space
where the gradients were taken this reproduces ``d`` exactly; below it (shared layers under the
balance point) the same coefficients are applied, which is the usual representation-level
approximation (Sener & Koltun 2018, MGDA-UB).

Gradient methods see only the Gram matrix ``K = G G^T`` of the task gradients, shape (T, T):
every method in the catalogue is defined by inner products between task gradients, so the
trainer never needs to hold a tasks x parameters matrix longer than it takes to form K, and
the methods are testable on hand-built gradients (``K = G @ G.T``).

Contract for a method (see tests/weighting/test_contract.py):
- hyper-parameters are ``__init__`` keyword arguments (after ``tasks``), stored as attributes;
- all state lives in parameters, buffers or ``get_extra_state``, so ``state_dict`` round-trips;
- ``combine(losses, tasks, gram)`` returns ``(total_loss, weights)``; ``weights`` (T,) are the
  effective coefficients, for logging; ``total_loss`` is what the trainer back-propagates
  (usually ``sum(weights * losses)``, plus a method's own term, e.g. uncertainty weighting's
  log-variance penalty, or GradNorm's loss on its weights);
- it never reads attributes set on it from outside, and keeps its per-task state keyed by name,
  so a step with a subset of tasks (``needs_all_tasks = False``) is handled.
"""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import Tensor, nn


class Weighting(nn.Module):
    """Base class. Subclasses set the class flags and implement :meth:`combine`.

    Class flags:
        needs_grads: the trainer must pass the Gram matrix of the task gradients.
        needs_all_tasks: every task must be present in every step (the trainer then draws one
            batch per task each step, whatever the sampler says).
        has_parameters: the method learns parameters (they join the optimizer in their own
            group with ``optim.weighting_lr``).
    """

    needs_grads: ClassVar[bool] = False
    needs_all_tasks: ClassVar[bool] = False
    has_parameters: ClassVar[bool] = False

    def __init__(self, tasks: list[str]):
        super().__init__()
        if len(set(tasks)) != len(tasks):
            raise ValueError(f"duplicate task names: {tasks}")
        self.tasks = list(tasks)

    def index(self, tasks: list[str]) -> Tensor:
        """Positions of ``tasks`` in ``self.tasks``, to index per-task state (T_step,)."""
        return torch.tensor([self.tasks.index(t) for t in tasks], dtype=torch.long)

    def combine(
        self, losses: Tensor, tasks: list[str], gram: Tensor | None = None
    ) -> tuple[Tensor, Tensor]:
        """Return ``(total_loss, weights)`` for this step.

        Args:
            losses: (T,) the step's task losses, in the order of ``tasks``, attached to the graph.
            tasks: the names of the tasks in this step (a subset of ``self.tasks`` unless
                ``needs_all_tasks``).
            gram: (T, T) ``G G^T`` of the task gradients in the balance space, detached;
                ``None`` unless ``needs_grads``.
        """
        raise NotImplementedError

    def weighted_sum(self, losses: Tensor, weights: Tensor) -> Tensor:
        """``sum_t w_t L_t`` with the weights detached (they are coefficients, not parameters)."""
        return (weights.detach().to(losses.dtype) * losses).sum()
