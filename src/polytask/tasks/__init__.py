"""Task types, one file each; the registry maps the YAML ``type`` to the class."""

from __future__ import annotations

from polytask.config import TaskConfig
from polytask.registry import resolve
from polytask.tasks.base import Example, Task
from polytask.tasks.classification import ClassificationTask
from polytask.tasks.detection import DetectionTask
from polytask.tasks.extractive_qa import ExtractiveQATask
from polytask.tasks.generation import GenerationTask
from polytask.tasks.multilabel import MultiLabelTask
from polytask.tasks.regression import RegressionTask
from polytask.tasks.segmentation import SegmentationTask
from polytask.tasks.tagging import TaggingTask

REGISTRY: dict[str, type[Task]] = {
    cls.type_name: cls for cls in (ClassificationTask, MultiLabelTask, RegressionTask, TaggingTask,
                                   GenerationTask, ExtractiveQATask, SegmentationTask, DetectionTask)
}


def build_task(cfg: TaskConfig) -> Task:
    return resolve(REGISTRY, cfg.type, "task type")(cfg)


__all__ = ["REGISTRY", "Example", "Task", "build_task"]
