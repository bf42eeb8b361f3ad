"""The multi-task model: an architecture (shared part) plus one head per task, keyed by name.

:func:`build_model` assembles it for training; :func:`rebuild_model` rebuilds a trained one
from its run folder, offline (the backbone from its saved config, or, for architectures whose
weights hold adapters only, from its pretrained source), and loads the best weights.
"""

from __future__ import annotations

from torch import Tensor, nn

from polytask.architectures import Architecture, Features, architecture_class, build_architecture
from polytask.backbones import backbone_from_config, load_backbone
from polytask.backbones.layout import hidden_size
from polytask.config import Config
from polytask.run_folder import RunFolder
from polytask.tasks import Task


class MultiTaskModel(nn.Module):
    def __init__(self, arch: Architecture, tasks: dict[str, Task]):
        super().__init__()
        self.arch = arch
        size = hidden_size(arch.backbone)
        for t in tasks.values():
            t.bind_backbone(arch.backbone.config)  # a dense task's head sizes itself to the pyramid
        self.heads = nn.ModuleDict({name: t.make_head(size) for name, t in tasks.items()})

    def forward(self, batch: dict[str, Tensor], task: str) -> tuple[Tensor, Features]:
        feats = self.arch(batch, task)
        return self.head_output(feats, task), feats

    def head_output(self, feats: Features, task: str) -> Tensor:
        """Task ``task``'s head on its features: a dense head reads them whole (the pyramid,
        ``Features.maps``), the others the hidden states and their mask."""
        head = self.heads[task]
        if getattr(head, "reads_features", False):
            return head(feats)
        return head(feats.hidden, feats.mask)

    def task_parameters(self, task: str) -> list[nn.Parameter]:
        return list(self.heads[task].parameters()) + self.arch.task_parameters(task)

    def head_parameter_names(self) -> set[str]:
        """Names (as in ``named_parameters``) of the task heads' parameters."""
        return {f"heads.{n}" for n, _ in self.heads.named_parameters()}

    def describe(self) -> dict[str, int]:
        info = self.arch.describe()
        for t, head in self.heads.items():
            info[f"task:{t}"] = info.get(f"task:{t}", 0) + sum(p.numel() for p in head.parameters())
        info["total"] += sum(p.numel() for p in self.heads.parameters())
        info["trainable"] += sum(p.numel() for p in self.heads.parameters() if p.requires_grad)
        return info


def build_model(cfg: Config, backbone: nn.Module, tasks: dict[str, Task]) -> MultiTaskModel:
    arch = build_architecture(cfg.architecture.name, backbone, list(tasks), cfg.architecture.args)
    return MultiTaskModel(arch, tasks)


def rebuild_model(cfg: Config, run: RunFolder, tasks: dict[str, Task]) -> MultiTaskModel:
    """The trained model of ``run`` with its best weights, in eval mode."""
    if architecture_class(cfg.architecture.name).saves_backbone(cfg.architecture.args):
        backbone = backbone_from_config(cfg.model, run.backbone_dir)
    else:  # the run holds adapters only: the base comes from its source
        backbone, _ = load_backbone(cfg.model)
    model = build_model(cfg, backbone, tasks)
    run.load_best(model)
    return model.eval()
