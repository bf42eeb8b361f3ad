"""polytask: multi-task learning with pretrained language models.

One shared backbone, one head per task, trained jointly with task sampling and loss balancing.
The Python API mirrors the CLI: ``train(config)``, ``load(run_dir).predict(task, inputs)``.
"""

from polytask._version import __version__  # noqa: E402

import sys  # noqa: E402
import types  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import TYPE_CHECKING, Any, Sequence  # noqa: E402

from polytask.errors import ConfigError, DataError, PolytaskError  # noqa: E402

if TYPE_CHECKING:  # imported lazily at run time: ``import polytask`` does not load torch
    from polytask.config import Config
    from polytask.predict import AllPredictions, Predictor


def load(run_dir: str | Path, allow_code: bool = False) -> "Predictor":
    """Load a trained run folder (offline, from the folder alone) and return its :class:`Predictor`.

    Example: ``polytask.load("runs/demo").predict("topic", ["the chef burned the pasta"])``.
    ``allow_code``: build ``module:Class`` components named in the folder's config (imports
    that code; only for run folders you trust). By default only registered components load.
    """
    from polytask.predict import Predictor

    return Predictor.load(run_dir, allow_code=allow_code)


def train(config: "Config | str | Path | None", overrides: Sequence[str] | None = None, *,
          progress: bool | None = None, resume: str | Path | None = None, overwrite: bool = False) -> Path:
    """Train one multi-task model and return its run folder.

    Args:
        config: a :class:`polytask.config.Config`, or the path of a YAML config file (``None``
            with ``resume``: the run's own config).
        overrides: ``key=value`` overrides as on the command line, e.g. ``["train.max_steps=100"]``
            (a bare string is one override).
        progress: show a progress bar (default: when stderr is a terminal; a log gets a line per
            evaluation and no carriage returns).
        resume: a run folder to continue from its last good checkpoint.
        overwrite: start over in a run folder that holds another run (clears its files), as the
            CLI's ``--overwrite``; without it such a folder is refused.
    """
    from polytask.train import train as _train

    if isinstance(overrides, str):
        overrides = [overrides]
    if progress is None:
        progress = sys.stderr.isatty()
    return _train(config, list(overrides or []), progress=progress, resume=resume, overwrite=overwrite)


_train_api = train


class _TrainModule(types.ModuleType):
    """The submodule ``polytask.train``, callable as the API function :func:`polytask.train`.

    Importing a submodule sets it as an attribute of its package, which would replace the
    function ``polytask.train`` with the module ``polytask.train`` as soon as anything imports
    it; the module is made callable instead, so both ``polytask.train(config)`` and
    ``import polytask.train as module`` keep working."""

    def __call__(self, config: Any, overrides: Sequence[str] | None = None, **kwargs: Any) -> Path:
        return _train_api(config, overrides, **kwargs)


class _Package(types.ModuleType):
    def __setattr__(self, name: str, value: Any) -> None:
        if name == "train" and isinstance(value, types.ModuleType) and type(value) is types.ModuleType:
            value.__class__ = _TrainModule
        super().__setattr__(name, value)

    def __getattr__(self, name: str) -> Any:
        if name in ("Predictor", "AllPredictions"):
            from polytask import predict

            return getattr(predict, name)
        raise AttributeError(f"module 'polytask' has no attribute {name!r}")


sys.modules[__name__].__class__ = _Package

__all__ = ["AllPredictions", "ConfigError", "DataError", "PolytaskError", "Predictor", "load", "train",
           "__version__"]
