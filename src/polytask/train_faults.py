"""Faults and interruptions of training: a non-finite loss or gradient (the ``train.on_nonfinite``
policy, :class:`NonFiniteError`, the batch's culprit examples) and a signal (:class:`Interrupted`,
raised once the checkpoint is written). The loop that meets them is :mod:`polytask.train`."""

from __future__ import annotations

import signal

import torch

from polytask.errors import PolytaskError
from polytask.steps import train_batch
from polytask.train_state import LoopState, Session


class NonFiniteError(PolytaskError):
    """A NaN or infinite loss/gradient that the run's policy does not skip."""


class Interrupted(PolytaskError):
    """SIGINT/SIGTERM during training; a checkpoint was written first."""


def interrupted(s: Session, state: LoopState, signum: int) -> Interrupted:
    name = signal.Signals(signum).name
    if s.main:
        s.run.append_event({"kind": "interrupted", "step": state.step, "signal": name})
    return Interrupted(f"{name} at step {state.step}: checkpoint saved; "
                       f"continue with: polytask train --resume {s.run.path}")


# ---------------------------------------------------------------------------------------------
# Faults: a non-finite loss or gradient


def handle_fault(s: Session, state: LoopState, fault, bar) -> None:
    """Apply the non-finite policy: count and skip the batch, or stop with a report."""
    cfg = s.cfg
    kind, task, indices = fault
    examples = s.data[task.split(",")[0]].examples["train"]
    first = examples[indices[0]].source
    culprits = nonfinite_examples(s, task, indices) if "," not in task else []
    where = (f"non-finite for: {', '.join(culprits[:5])}" if culprits
             else f"first: {first}; no single example is non-finite alone")
    report = f"non-finite {kind} in task '{task}' at step {state.step} (batch of {len(indices)} examples, {where})"
    if s.main:
        s.run.append_event({"kind": "nonfinite", "step": state.step, "what": kind, "task": task,
                            "first_example": first, "examples": culprits})
    if cfg.train.on_nonfinite == "stop":
        raise NonFiniteError(report + "; set train.on_nonfinite=skip to skip such batches")
    state.skipped_steps = [s for s in state.skipped_steps if s > state.step - cfg.train.skip_window] + [state.step]
    if s.main:
        bar.write(f"skipped: {report}")
    if len(state.skipped_steps) > cfg.train.max_skips:
        raise NonFiniteError(f"{len(state.skipped_steps)} batches skipped within {cfg.train.skip_window} steps "
                             f"(train.max_skips={cfg.train.max_skips}); last: {report}")


@torch.no_grad()
def nonfinite_examples(s: Session, task: str, indices: list[int]) -> list[str]:
    """The examples of a faulty batch whose loss is non-finite on their own (eval mode, one at a
    time: no dropout, no RNG drawn, nothing trained), as ``file:line``."""
    was_training = s.model.training
    s.model.eval()
    try:
        found = []
        for i in sorted(indices):  # in file order
            batch = train_batch(s.data[task], [i], s.pad_id, s.device)
            out, _ = s.model(batch, task)
            if not torch.isfinite(s.tasks[task].loss(out, batch)):
                found.append(s.data[task].examples["train"][i].source)
        return found
    finally:
        s.model.train(was_training)
