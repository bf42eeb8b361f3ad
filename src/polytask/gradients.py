"""Task gradients for the gradient-based weighting methods, as a (T, T) Gram matrix.

Where the gradients are taken is the run's ``train.grad_space``:

- ``representation``: the gradient of each task's loss with respect to the shared encoder
  output, one backward pass per task through its head only (cheap; Sener & Koltun 2018,
  MGDA-UB). Text tasks see different inputs in one step, so per-example gradients are not
  comparable across tasks; polytask compares ``∂L_t/∂b`` for a virtual bias ``b`` added to
  every shared feature vector, i.e. the representation gradient summed over examples and
  positions, an (H,) vector per task: the direction in which task t pulls the shared features.
- ``last_layers``: the gradient with respect to the parameters of the top ``grad_layers``
  shared transformer blocks (parameter space: sees real conflicts; memory T x those params).
- ``shared``: all shared parameters (T x P memory: only when asked for).
- ``adapters``: the parameters of an adapter that all tasks share (``causal_lm`` with
  ``peft: shared_lora``): the whole trainable shared model of a frozen-LLM run, at T x
  adapter-size memory. Per-task adapters have disjoint gradients, so they are refused.

Only the Gram matrix ``K = G G^T`` leaves this module; ``G`` is freed at once.

Several processes (data parallel, each on its slice of the global batch): each process's row
``g_t`` is the gradient of its share of the global mean loss, so the global ``G`` is the mean of
the processes' ``G`` (``reduce``: one all-reduce of the (T, d) matrix) and ``K`` is formed after
it, identically everywhere. In representation space this is a (T, H) matrix; summing the local
(T, T) Gram matrices instead would drop the cross-process products ``g_t^(r) . g_u^(s)`` of
these summed gradients and is not exact (docs/distributed.md).
"""

from __future__ import annotations

import torch
from typing import Callable

from torch import Tensor, nn

from polytask.architectures import Features


def task_gram(losses: list[Tensor], space: str, feats: list[Features],
              params: list[nn.Parameter] | None = None,
              reduce: Callable[[Tensor], Tensor] | None = None) -> Tensor:
    """(T, T) inner products of the task gradients in ``space``; the graph is retained.

    ``reduce`` (several processes): averages the (T, d) task gradients over the processes
    before the inner products are taken.
    """
    rows = []
    for loss, f in zip(losses, feats):
        if space == "representation":
            (g,) = torch.autograd.grad(loss, f.shared, retain_graph=True, allow_unused=True)
            g = torch.zeros(f.shared.shape[-1], device=f.shared.device) if g is None else g.reshape(-1, g.shape[-1]).sum(0)
        else:
            grads = torch.autograd.grad(loss, params, retain_graph=True, allow_unused=True)
            g = torch.cat([(torch.zeros_like(p) if gp is None else gp).reshape(-1) for p, gp in zip(params, grads)])
        rows.append(g.detach().float())
    G = torch.stack(rows)  # (T, d)
    if reduce is not None:
        G = reduce(G)  # (T, d), the global batch's
    return G @ G.T  # (T, T)


def cosines(gram: Tensor) -> Tensor:
    """Pairwise cosine similarity of the task gradients from their Gram matrix (T, T)."""
    norms = gram.diagonal().clamp(min=1e-20).sqrt()
    return gram / norms[:, None] / norms[None, :]


def balance_params(model, space: str, layers: int) -> list[nn.Parameter] | None:
    if space == "last_layers":
        return model.arch.balance_parameters(layers)
    if space == "shared":
        return model.arch.shared_parameters()
    if space == "adapters":
        return model.arch.shared_adapter_parameters()
    return None
