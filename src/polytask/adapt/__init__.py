"""``polytask adapt``: a new task on a trained multi-task model, and few-shot learning curves.

- :func:`adapt`: train one new task on the run's encoder (``--tune head | lora | full``) and save
  the result as a run folder that ``polytask predict`` and ``serve`` load (docs/transfer.md).
- :func:`learning_curves`: K-shot curves (``--shots 16 64 256 1024 --seeds 3``), the multi-task
  encoder vs the plain pretrained backbone, as a table and a plot.
"""

from __future__ import annotations

from polytask.adapt.curves import learning_curves
from polytask.adapt.run import adapt
from polytask.adapt.shots import k_shot
from polytask.adapt.spec import AdaptError

__all__ = ["AdaptError", "adapt", "k_shot", "learning_curves"]
