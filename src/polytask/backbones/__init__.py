"""Backbones: loading pretrained models, and the one place that knows model-family layouts.

``model.kind`` is dispatched here and nowhere else: :data:`KINDS` maps each kind to how its
pretrained weights are loaded and how an untrained model of a saved architecture is built.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, NamedTuple


class Kind(NamedTuple):
    load: Callable  # (backbone name, dtype) -> (model, tokenizer)
    from_config: Callable  # (config folder, dtype) -> model with random weights
    load_model_cfg: Callable | None = None  # (ModelConfig) -> (model, processor), when load needs more than the name
    saved_processor: Callable | None = None  # (run's tokenizer folder) -> its input processor, when not a tokenizer
    processor: Callable | None = None  # (ModelConfig) -> its input processor without the weights, when not a tokenizer
    encoder: bool = True  # one task-independent encoder pass whose states a new head reads (polytask adapt)
    describe_input: Callable | None = None  # (ModelConfig) -> one input, for reports; default "max length N"
    tokens: bool = True  # inputs are token sequences: a throughput in tokens/s means something


def _encoder() -> Kind:
    from polytask.backbones.encoder import encoder_from_config, load_encoder

    return Kind(lambda name, dtype: load_encoder(name), encoder_from_config)


def _causal_lm() -> Kind:
    from polytask.backbones.causal_lm import causal_lm_from_config, load_causal_lm

    return Kind(load_causal_lm, causal_lm_from_config, encoder=False)


def _vision() -> Kind:
    from polytask.backbones.vision import load_vision, vision_from_config

    from polytask.preprocess import ImageProcessor

    from polytask.backbones.vision import processor_for

    return Kind(None, vision_from_config, load_vision, ImageProcessor.from_pretrained, processor_for,
                describe_input=lambda model_cfg: f"images of {processor_for(model_cfg).size} px", tokens=False)


KINDS: dict[str, Callable[[], Kind]] = {"encoder": _encoder, "causal_lm": _causal_lm, "vision": _vision}


def load_backbone(model_cfg):
    """``(model, tokenizer)`` of ``model.backbone`` for ``model.kind`` (a ModelConfig), with
    gradient checkpointing on when ``model.gradient_checkpointing`` asks for it."""
    kind = KINDS[model_cfg.kind]()
    if kind.load_model_cfg is not None:
        model, tokenizer = kind.load_model_cfg(model_cfg)
    else:
        model, tokenizer = kind.load(model_cfg.backbone, model_cfg.dtype)
    if getattr(model_cfg, "gradient_checkpointing", False):
        enable_gradient_checkpointing(model)
    return model, tokenizer


def describe_input(model_cfg) -> str:
    """What one input of ``model`` is, for reports: ``max length 128``, ``images of 224 px``."""
    kind = KINDS[model_cfg.kind]()
    return kind.describe_input(model_cfg) if kind.describe_input else f"max length {model_cfg.max_length}"


def counts_tokens(model_cfg) -> bool:
    """Whether ``model``'s inputs are token sequences (reports leave tokens/s out otherwise)."""
    return KINDS[model_cfg.kind]().tokens


def enable_gradient_checkpointing(model) -> None:
    """Recompute each transformer layer's activations during backward instead of keeping them
    (Hugging Face's ``gradient_checkpointing_enable``): activation memory per layer drops to its
    inputs, for about one more forward pass of compute. Non-reentrant checkpointing, so it works
    with frozen embeddings (LoRA), ``autograd.grad`` (the gradient methods) and dropout (the RNG
    state is replayed: the same gradients as without it). Applies in training mode only."""
    from polytask.errors import ConfigError

    if not getattr(model, "supports_gradient_checkpointing", False):
        raise ConfigError(f"model.gradient_checkpointing: {type(model).__name__} does not support it")
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})


def saved_processor(model_cfg, folder: str | Path):
    """A run's saved input processor when its kind has one that is not a tokenizer (images), else None."""
    load = KINDS[model_cfg.kind]().saved_processor
    return load(folder) if load is not None else None


def input_processor(model_cfg):
    """What encodes inputs for ``model_cfg`` without loading its weights: the pretrained tokenizer,
    or the kind's own processor (images: size, mean, std and augmentation)."""
    make = KINDS[model_cfg.kind]().processor
    if make is not None:
        return make(model_cfg)
    from transformers import AutoTokenizer

    from polytask.backbones.encoder import resolve_backbone
    from polytask.registry import trust_remote_code

    return AutoTokenizer.from_pretrained(resolve_backbone(model_cfg.backbone), trust_remote_code=trust_remote_code())


def has_encoder(model_cfg) -> bool:
    """Whether ``model.kind`` gives one task-independent encoder pass a new task head can read (a
    text encoder's token states, a CNN's feature maps; not a decoder LLM's next-token logits)."""
    return KINDS[model_cfg.kind]().encoder


def backbone_from_config(model_cfg, config_dir: str | Path):
    """An untrained backbone of the architecture saved in ``config_dir`` (weights come later)."""
    return KINDS[model_cfg.kind]().from_config(config_dir, model_cfg.dtype)


def pretrained_config(model_cfg):
    """The pretrained backbone's Hugging Face config, after loading its tokenizer too (no
    weights): ``polytask check`` fails here, before any training, on a backbone it cannot reach."""
    from transformers import AutoConfig, AutoTokenizer

    from polytask.errors import ConfigError

    if model_cfg.kind == "vision":
        from polytask.backbones.vision import check_reachable

        return check_reachable(model_cfg)
    if model_cfg.kind == "causal_lm":
        from polytask.backbones.causal_lm import resolve_source

        source = resolve_source(model_cfg.backbone)
        path, kwargs = source.path, ({"gguf_file": source.gguf_file} if source.gguf_file else {})
    else:
        from polytask.backbones.encoder import resolve_backbone

        path, kwargs = resolve_backbone(model_cfg.backbone), {}
    from polytask.registry import refuse_remote_code, trust_remote_code

    kwargs["trust_remote_code"] = trust_remote_code()
    try:
        config = AutoConfig.from_pretrained(path, **kwargs)
        AutoTokenizer.from_pretrained(path, **kwargs)
    except (OSError, ValueError) as exc:
        refuse_remote_code(exc, f"model.backbone '{model_cfg.backbone}' ({path})")
        raise ConfigError(f"model.backbone: cannot load '{model_cfg.backbone}' ({path}): {exc}; without internet, "
                          f"use a local folder, or set HF_HUB_OFFLINE=1 to read the hub cache only") from None
    return config


def check_max_length(max_length: int, config) -> None:
    """``model.max_length`` within the backbone's position embeddings (else it crashes mid-run)."""
    from polytask.errors import ConfigError

    limit = getattr(config, "max_position_embeddings", None)
    if limit is not None and max_length > limit:
        raise ConfigError(f"model.max_length: {max_length} is more than the backbone's {limit} position "
                          f"embeddings; use at most {limit}")


def pad_id(tokenizer) -> int:
    """The id that fills padding positions (always masked, so 0 when the tokenizer has none)."""
    return tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0


__all__ = ["KINDS", "backbone_from_config", "has_encoder", "input_processor", "saved_processor", "check_max_length", "load_backbone", "pad_id", "pretrained_config"]
