"""polytask: multi-task learning with pretrained language models.

One shared backbone, one head per task, trained jointly with task sampling and loss balancing.
The Python API mirrors the CLI: ``train(config)``, ``load(run_dir).predict(task, inputs)``.
"""

from polytask._version import __version__  # noqa: E402

from polytask.errors import ConfigError, DataError, PolytaskError  # noqa: E402


def load(run_dir):
    """Load a trained run folder and return a :class:`polytask.predict.Predictor`."""
    from polytask.predict import Predictor

    return Predictor.load(run_dir)


def train(config, **kwargs):
    """Train from a :class:`polytask.config.Config` (or a YAML path); returns the run folder."""
    from polytask.train import train as _train

    return _train(config, **kwargs)


__all__ = ["ConfigError", "DataError", "PolytaskError", "load", "train", "__version__"]
