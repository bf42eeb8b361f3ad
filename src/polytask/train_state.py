"""The training run's state: :class:`Session`, what a run trains with (built once by
:func:`polytask.train.set_up`), and :class:`LoopState`, the loop's own counters (saved in every
checkpoint). Apart from :mod:`polytask.train` so that :mod:`polytask.train_folder` and
:mod:`polytask.train_faults` can use them without importing the loop."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from polytask.config import Config
from polytask.dataset import TaskData
from polytask.draws import StepDraws
from polytask.model import MultiTaskModel
from polytask.prefetch import Lookahead
from polytask.run_folder import RunFolder
from polytask.tracking import Trackers
from polytask.weighting import Weighting


@dataclass
class LoopState:
    """The loop's own counters: saved in every checkpoint."""

    step: int = 0
    best: float = -math.inf
    best_step: int = 0
    stale: int = 0
    skipped_steps: list[int] = field(default_factory=list)
    running: dict[str, float] = field(default_factory=dict)
    elapsed: float = 0.0
    data_wait: float = 0.0  # seconds of elapsed the loop waited for its batches (Lookahead.waited)

    def update_loss(self, task: str, loss: float, beta: float = 0.9) -> None:
        prev = self.running.get(task)
        self.running[task] = loss if prev is None else beta * prev + (1 - beta) * loss


@dataclass
class Session:
    """Everything a run trains with, built once by :func:`set_up`."""

    cfg: Config
    run: RunFolder
    data: dict[str, TaskData]
    tasks: dict
    model: MultiTaskModel
    weighting: Weighting
    draws: StepDraws
    optimizer: torch.optim.Optimizer
    scheduler: object
    grad_params: list | None
    pad_id: int
    accelerator: object  # accelerate.Accelerator: device, autocast, backward, gradient scaler
    trackers: Trackers | None = None  # experiment trackers fed with the logged events
    progress: bool = True  # progress bars (training and evaluation)
    feed: Lookahead | None = None  # the loop's batches, made ahead (train.prefetch); None: made in the step
    best_dev: tuple | None = None  # (step, dev metrics, dev predictions) of the best evaluation in this process

    @property
    def device(self) -> torch.device:
        return self.accelerator.device

    @property
    def main(self) -> bool:
        """The process that writes the run folder (the only one, without torchrun)."""
        return self.accelerator.is_main_process

    @property
    def stateful(self) -> dict:
        """What a checkpoint saves besides the model (each has state_dict/load_state_dict)."""
        out = {"optimizer": self.optimizer, "scheduler": self.scheduler, "weighting": self.weighting,
               "draws": self.draws}
        if self.accelerator.scaler is not None:  # fp16: the loss scale is part of the trajectory
            out["scaler"] = self.accelerator.scaler
        return out
