"""The Hugging Face family of vision backbones: any model by hub name or local folder.

``AutoBackbone`` when the model's family has a backbone class (ResNet, ConvNeXt, DINOv2, Swin,
...: every stage's map after the stem, finest first), else ``AutoModel`` (its last map, or a
ViT's token states ``(B, 1 + N, H)``, which then feed the heads as they are and leave the pyramid
empty). Preprocessing from the model's ``preprocessor_config.json`` when present, else 224 px
with the ImageNet mean and std. No hyperparameters of its own; limits: the model's own pooler or
classifier is not used (polytask's heads pool; a ViT is built without its pooler), and a model
needing ``trust_remote_code`` is not supported.

A family module of :data:`polytask.backbones.vision.FAMILIES`: ``claims``, ``preprocessing``,
``pretrained``, ``rebuild``, ``stages`` and ``reachable``.
"""

from __future__ import annotations

from pathlib import Path

from torch import Tensor, nn

from polytask.errors import ConfigError

FAMILY = "hf"
IMAGENET_MEAN, IMAGENET_STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]


def claims(name: str) -> bool:
    """Every name no other family claims: a hub name or a local folder."""
    return True


def network(source: str | Path, config=None) -> tuple[nn.Module, str]:
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
    kwargs = _without_pooler(cfg)
    net = AutoModel.from_config(cfg, **kwargs) if config else AutoModel.from_pretrained(source, config=cfg, **kwargs)
    return net, "AutoModel"


def _without_pooler(cfg) -> dict:
    """``add_pooling_layer=False`` for a base model that takes it (ViT): its pooler is never used
    (polytask's heads pool), so its weights would be trained by nothing."""
    import inspect

    from transformers.models.auto.modeling_auto import MODEL_MAPPING

    klass = MODEL_MAPPING.get(type(cfg), None)
    takes = klass is not None and "add_pooling_layer" in inspect.signature(klass.__init__).parameters
    return {"add_pooling_layer": False} if takes else {}


def _source(name: str) -> str:
    from polytask.backbones.encoder import resolve_backbone

    return resolve_backbone(name)


def preprocessing(name: str) -> tuple[int, list[float], list[float]]:
    """``(size, mean, std)`` from the model's image processor config, else 224 px and ImageNet's."""
    try:
        from transformers import AutoImageProcessor

        proc = AutoImageProcessor.from_pretrained(_source(name))
    except (OSError, ValueError, ImportError):
        return 224, IMAGENET_MEAN, IMAGENET_STD
    size = getattr(proc, "size", None) or {}
    side = size.get("shortest_edge") or size.get("height") or 224 if isinstance(size, dict) else int(size)
    return int(side), list(proc.image_mean or IMAGENET_MEAN), list(proc.image_std or IMAGENET_STD)


def pretrained(name: str) -> tuple[nn.Module, dict]:
    """The pretrained model and what :class:`VisionConfig` keeps to rebuild it offline."""
    net, klass = network(_source(name))
    return net, {"hf_config": net.config.to_dict(), "hf_class": klass}


def rebuild(config) -> nn.Module:
    """A random model of the saved ``VisionConfig``'s Hugging Face config."""
    from transformers import AutoConfig

    raw = dict(config.hf_config)
    net, _ = network(config.source, AutoConfig.for_model(raw.pop("model_type"), **raw))
    return net


def stages(net: nn.Module, config, x: Tensor) -> list[Tensor]:  # x: (B, 3, S, S)
    """Every stage's map (AutoBackbone), else the one output (a map, or a ViT's token states)."""
    if config.hf_class == "AutoBackbone":
        return list(net(pixel_values=x).feature_maps)
    return [net(pixel_values=x).last_hidden_state]


def reachable(name: str):
    """The model's config loads offline (nothing is built): returns it."""
    from transformers import AutoConfig

    try:
        return AutoConfig.from_pretrained(_source(name))
    except (OSError, ValueError) as exc:
        raise ConfigError(f"model.backbone: cannot load '{name}': {exc}; without internet, use a local folder, "
                          f"or set HF_HUB_OFFLINE=1 to read the hub cache only") from None
