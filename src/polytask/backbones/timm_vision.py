"""The timm family of vision backbones (``model.backbone: timm:<name>`` or ``timm/<hub repo>``), optional.

``timm:<name>`` is any name ``timm.create_model`` takes: a model of ``timm.list_models()``
(``timm:resnet18``, ``timm:convnext_atto``, with or without a pretrained tag such as
``resnet18.a1_in1k``), ``timm:hf-hub:<org>/<repo>`` or ``timm:local-dir:<folder>`` (a folder
written by ``timm.models.save_for_hf``, in timm versions that read one; tested with timm 1.0.31);
``timm/<repo>`` is short for ``timm:hf-hub:timm/<repo>``
(``timm/resnet18.a1_in1k``). The network is ``timm.create_model(name, pretrained=True,
features_only=True)``: timm's own feature extractor, whose maps are the pyramid, finest first,
without those of stride under 4 (a ResNet's stem at stride 2), so the CNNs give strides 4..32 as the
other families do. Preprocessing: ``timm.data.resolve_data_config`` of the model's pretrained
config (what it gives for the built network too): the input size's height, mean and std.

The saved ``VisionConfig`` keeps timm's model config in ``hf_config`` (``architecture``,
``model_args``, ``pretrained_cfg``: what timm's hub ``config.json`` holds) and ``hf_class``
``"timm"``; the run rebuilds ``create_model(architecture, pretrained=False, features_only=True,
pretrained_cfg=..., **model_args)`` offline.

Limits: timm needs torchvision (``timm/layers`` imports ``torchvision.ops``), which does not import
beside polytask's torch 2.13.0 CPU wheel (docs/vision.md, the stack decision), so this family works
only where a matching torch/torchvision pair is installed (``pip install torch==2.14.1
torchvision==0.29.1 timm``); elsewhere its names are still claimed and loading raises a
ConfigError that says so. The weights come from timm's sources (the Hugging Face hub for most),
on first use: ``check`` verifies the name and config, not the weights. timm's ``out_indices`` and
other ``create_model`` arguments are not exposed; preprocessing ignores ``crop_pct`` and
``interpolation`` (polytask's own resize and centre crop at ``model.image.size``); gradient
checkpointing is not supported.

A family module of :data:`polytask.backbones.vision.FAMILIES`: ``claims``, ``preprocessing``,
``pretrained``, ``rebuild``, ``stages`` and ``reachable``; ``export_format`` and ``usage_code`` for
``polytask export --format hf``.
"""

from __future__ import annotations

import json
from types import ModuleType

from torch import Tensor, nn

from polytask.errors import ConfigError

FAMILY = "timm"
INSTALL = "pip install torch==2.14.1 torchvision==0.29.1 timm"
MIN_STRIDE = 4  # finer maps (a stem at stride 2) are left out of the pyramid


def claims(name: str) -> bool:
    return name.startswith(("timm:", "timm/"))


def timm_name(name: str) -> str:
    """The name timm's ``create_model`` takes: ``timm:x`` -> ``x``, ``timm/x`` -> ``hf-hub:timm/x``."""
    return name[len("timm:"):] if name.startswith("timm:") else "hf-hub:" + name


def _timm() -> ModuleType:
    """The timm module, or a ConfigError saying what to install (timm, or a torchvision that imports)."""
    try:
        import timm
        import timm.data
    except (ImportError, RuntimeError, OSError) as exc:  # torchvision built for another torch: RuntimeError
        raise ConfigError(f"model.backbone: timm models need timm, and timm needs torchvision, which does not "
                          f"import beside the torch 2.13.0 CPU wheel ({type(exc).__name__}: {exc}); use a "
                          f"torch/torchvision pair that imports together: {INSTALL} (see docs/vision.md, "
                          f"'Backbones')") from None
    return timm


def model_config(name: str) -> dict:
    """timm's config of ``name`` (``architecture``, ``model_args``, ``pretrained_cfg``, as JSON), read
    from its registry, hub ``config.json`` or local folder: no network is built, no weights loaded."""
    timm = _timm()
    target = timm_name(name)
    source, _, rest = target.partition(":")
    try:
        if source == "hf-hub":
            cfg, arch, args = timm.models.load_model_config_from_hf(rest)
        elif source == "local-dir":
            from timm.models._hub import load_model_config_from_path

            cfg, arch, args = load_model_config_from_path(rest)
        else:
            arch, tag = timm.models.split_model_name_tag(target)
            if not timm.is_model(arch):
                raise ConfigError(f"model.backbone: timm has no model '{arch}' (timm.list_models() names them)")
            cfg, args = timm.models.resolve_pretrained_cfg(arch, tag or None).to_dict(), {}
    except (OSError, ValueError, RuntimeError, KeyError, ImportError) as exc:  # ImportError: a timm without local-dir
        raise ConfigError(f"model.backbone: cannot read timm's config of '{name}': {exc}; without internet, "
                          f"use a timm:local-dir:<folder>, or set HF_HUB_OFFLINE=1 to read the hub cache only") from None
    cfg = {k: v for k, v in dict(cfg).items() if k != "state_dict"}
    return json.loads(json.dumps({"architecture": arch, "model_args": dict(args or {}), "pretrained_cfg": cfg}))


def preprocessing(name: str) -> tuple[int, list[float], list[float]]:
    """``(size, mean, std)`` of timm's data config for the model (its input height), without loading it."""
    data = _timm().data.resolve_data_config({}, pretrained_cfg=model_config(name)["pretrained_cfg"])
    return int(data["input_size"][1]), [float(v) for v in data["mean"]], [float(v) for v in data["std"]]


def pretrained(name: str) -> tuple[nn.Module, dict]:
    """timm's pretrained feature extractor and what :class:`VisionConfig` keeps to rebuild it offline."""
    timm, config = _timm(), model_config(name)
    try:
        net = timm.create_model(timm_name(name), pretrained=True, features_only=True)
    except (OSError, ValueError, RuntimeError) as exc:
        raise ConfigError(f"model.backbone: timm cannot load '{name}': {exc}") from None
    return net, {"hf_config": config, "hf_class": "timm"}


def rebuild(config) -> nn.Module:
    """A random feature extractor of the saved ``VisionConfig``'s timm config (offline)."""
    spec = config.hf_config
    return _timm().create_model(spec["architecture"], pretrained=False, features_only=True,
                                pretrained_cfg=spec["pretrained_cfg"], **spec["model_args"])


def stages(net: nn.Module, config, x: Tensor) -> list[Tensor]:  # x: (B, 3, S, S)
    """timm's feature maps of stride 4 and more, finest first (all of them when none reaches 4)."""
    out = net(x)
    maps = list(out.values()) if isinstance(out, dict) else list(out)
    kept = [m for m, stride in zip(maps, net.feature_info.reduction()) if stride >= MIN_STRIDE]
    return kept or maps


def reachable(name: str):
    """timm imports and the model's config can be read (nothing is built); no Hugging Face config: None."""
    model_config(name)
    return None


def export_format(config) -> str:
    """How ``polytask export --format hf`` writes this family's encoder (its manifest's words)."""
    return (f"timm {config.hf_config['architecture']} feature extractor (create_model(..., features_only=True)) "
            f"state dict in model.safetensors; polytask config.json (timm's model config under hf_config); "
            f"polytask_image.json")


def usage_code(config) -> list[str]:
    """Python that loads the exported encoder folder (the model card's "Use")."""
    spec = config.hf_config
    args = "".join(f", {k}={v!r}" for k, v in spec["model_args"].items())
    return ["import json", "import timm", "from safetensors.torch import load_file", "",
            'spec = json.load(open("encoder/config.json"))["hf_config"]',
            f'encoder = timm.create_model("{spec["architecture"]}", pretrained=False, features_only=True, '
            f'pretrained_cfg=spec["pretrained_cfg"]{args})',
            'encoder.load_state_dict(load_file("encoder/model.safetensors"))',
            f"# polytask's pyramid: the maps of stride >= {MIN_STRIDE}; preprocessing: encoder/polytask_image.json"]
