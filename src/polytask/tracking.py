"""Experiment trackers (``train.report_to: [tensorboard, mlflow, wandb]``), fed with the events the
trainer writes to ``metrics.jsonl``.

:class:`Trackers` is built from the config and the run folder (``Trackers.from_config(cfg,
run_dir)``); ``log(event)`` takes one event dict exactly as appended to ``metrics.jsonl`` and
``close(summary)`` logs the final dev/test metrics and ends every tracker. With an empty
``report_to`` it does nothing and imports nothing. Names (docs/tracking.md): ``loss/<task>``,
``weight/<task>``, ``grad_norm/<task>``, ``probe_grad_norm/<task>``, ``cosine/<a>/<b>``, ``lr``,
``examples/<task>``, ``tokens/<task>``, ``dev/<task>/<metric>``, ``dev/macro``; at the end
``best/<split>/<task>/<metric>`` and ``best/<split>_macro``.

Each tracker writes into the run folder unless told otherwise: ``tensorboard/`` (event files),
``mlflow.db`` (a local MLflow store in SQLite: MLflow's file store is deprecated;
``MLFLOW_TRACKING_URI`` overrides it), ``wandb/`` (offline
unless ``WANDB_MODE`` says otherwise; ``wandb sync`` uploads it later).
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

from polytask.config import Config, to_dict
from polytask.errors import ConfigError

TRACKERS = ("tensorboard", "mlflow", "wandb")
INSTALL = {"tensorboard": "tensorboard", "mlflow": "mlflow", "wandb": "wandb"}
PER_TASK = {"loss": "loss", "weights": "weight", "grad_norm": "grad_norm", "probe_grad_norm": "probe_grad_norm",
            "examples": "examples", "tokens": "tokens"}


def scalars(event: dict) -> dict[str, float]:
    """The numbers of one ``metrics.jsonl`` event under their tracker names (none for other kinds)."""
    out: dict[str, float] = {}
    if event.get("kind") == "train":
        for key, prefix in PER_TASK.items():
            for task, value in (event.get(key) or {}).items():
                out[f"{prefix}/{task}"] = value
        for pair, value in (event.get("cosine") or {}).items():
            out["cosine/" + pair.replace("|", "/")] = value
        if "lr" in event:
            out["lr"] = event["lr"]
    elif event.get("kind") == "eval":
        split = event.get("split", "dev")
        for task, metrics in event.get("metrics", {}).items():
            for name, value in metrics.items():
                out[f"{split}/{task}/{name}"] = value
        if "macro" in event:
            out[f"{split}/macro"] = event["macro"]
    return {k: float(v) for k, v in out.items() if isinstance(v, (int, float)) and math.isfinite(v)}


def summary_scalars(summary: dict) -> dict[str, float]:
    out = {}
    for split in ("dev", "test"):
        for task, metrics in (summary.get(split) or {}).items():
            out.update({f"best/{split}/{task}/{m}": v for m, v in metrics.items()})
        if f"{split}_macro" in summary:
            out[f"best/{split}_macro"] = summary[f"{split}_macro"]
    return {k: float(v) for k, v in out.items() if isinstance(v, (int, float)) and math.isfinite(v)}


def flat_params(cfg: Config) -> dict[str, str]:
    """The config as ``a.b.c -> value`` strings (lists indexed: ``tasks.0.name``)."""
    out: dict[str, str] = {}

    def walk(prefix: str, value: Any) -> None:
        if isinstance(value, dict):
            for k, v in value.items():
                walk(f"{prefix}.{k}" if prefix else str(k), v)
        elif isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
            for i, v in enumerate(value):
                walk(f"{prefix}.{i}", v)
        else:
            out[prefix] = str(value)[:500]
    walk("", to_dict(cfg))
    return out


class TensorBoard:
    def __init__(self, cfg: Config, run_dir: Path):
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(log_dir=str(run_dir / "tensorboard"))
        self.writer.add_text("config", "\n".join(f"    {k}: {v}" for k, v in flat_params(cfg).items()), 0)

    def log(self, values: dict[str, float], step: int) -> None:
        for key, value in values.items():
            self.writer.add_scalar(key, value, step)

    def close(self) -> None:
        self.writer.close()


class MLflow:
    """One MLflow run per training run, in experiment ``cfg.name``, through ``MlflowClient`` (no
    global active run, so it works next to other MLflow code)."""

    def __init__(self, cfg: Config, run_dir: Path):
        from mlflow.tracking import MlflowClient

        uri = os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{(run_dir / 'mlflow.db').resolve()}"
        self.client = MlflowClient(tracking_uri=uri)
        found = self.client.get_experiment_by_name(cfg.name)
        experiment = found.experiment_id if found else self.client.create_experiment(cfg.name)
        self.run_id = self.client.create_run(experiment, run_name=run_dir.name).info.run_id
        from mlflow.entities import Param

        params = [Param(k, v) for k, v in flat_params(cfg).items()]
        for i in range(0, len(params), 100):  # MLflow takes at most 100 params per batch
            self.client.log_batch(self.run_id, params=params[i:i + 100])

    def log(self, values: dict[str, float], step: int) -> None:
        import time

        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        metrics = [Metric(k, v, now, step) for k, v in values.items()]
        for i in range(0, len(metrics), 1000):
            self.client.log_batch(self.run_id, metrics=metrics[i:i + 1000])

    def close(self) -> None:
        self.client.set_terminated(self.run_id)


class WandB:
    def __init__(self, cfg: Config, run_dir: Path):
        import wandb

        self.run = wandb.init(project=os.environ.get("WANDB_PROJECT", "polytask"), name=run_dir.name,
                              dir=str(run_dir), config=to_dict(cfg), mode=os.environ.get("WANDB_MODE", "offline"),
                              reinit="create_new")

    def log(self, values: dict[str, float], step: int) -> None:
        self.run.log(values, step=step)

    def close(self) -> None:
        self.run.finish()


CLASSES = {"tensorboard": TensorBoard, "mlflow": MLflow, "wandb": WandB}


class Trackers:
    """The trackers of ``train.report_to``; ``log(event)`` for every event, ``close(summary)`` once."""

    def __init__(self, trackers: list | None = None):
        self.trackers = list(trackers or [])
        self.last_step = 0

    @classmethod
    def from_config(cls, cfg: Config, run_dir: str | Path) -> "Trackers":
        made = []
        for name in cfg.train.report_to:
            try:
                made.append(CLASSES[name](cfg, Path(run_dir)))
            except ImportError as exc:
                for tracker in made:
                    tracker.close()
                raise ConfigError(f"train.report_to: {name} is not installed ({exc}); "
                                  f"pip install {INSTALL[name]} (or polytask[track])") from None
        return cls(made)

    def log(self, event: dict) -> None:
        step = int(event.get("step", self.last_step))
        self.last_step = max(self.last_step, step)
        values = scalars(event)
        if values:
            for tracker in self.trackers:
                tracker.log(values, step)

    def close(self, summary: dict | None = None) -> None:
        values = summary_scalars(summary or {})
        for tracker in self.trackers:
            if values:
                tracker.log(values, self.last_step)
            tracker.close()
        self.trackers = []

    def __enter__(self) -> "Trackers":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


__all__ = ["TRACKERS", "Trackers", "scalars"]
