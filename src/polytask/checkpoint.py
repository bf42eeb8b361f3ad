"""The run folder: weights in safetensors, resolved config, vocabularies, tokenizer, logs.

Layout of ``RUN_DIR``::

    config.yaml        the resolved configuration (after overrides)
    vocab.json         per-task label vocabularies / target statistics
    tokenizer/         the tokenizer (save_pretrained)
    backbone/          the backbone's config.json (the model is rebuilt from it, offline)
    model.safetensors  the best weights (by the dev macro average), with model.json (hash, step)
    metrics.jsonl      one JSON object per log / evaluation event
    training.png       per-task loss and dev metric over steps
    summary.json       final dev (and test) metrics of the best weights

Every file is written to a temporary name and renamed, so a crash never leaves a half file.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any

import yaml
from safetensors.torch import load_model, save_model
from torch import nn

from polytask.errors import CheckpointError

FORMAT_VERSION = 1


def atomic_write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_json(path: Path, obj: Any) -> None:
    atomic_write(path, json.dumps(obj, indent=2, sort_keys=True).encode())


def write_yaml(path: Path, obj: Any) -> None:
    atomic_write(path, yaml.safe_dump(obj, sort_keys=False).encode())


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def save_weights(model: nn.Module, path: Path, meta: dict | None = None) -> None:
    """Write ``path`` (safetensors) atomically, and ``path.json`` with its hash and ``meta``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        save_model(model, tmp)
        digest = sha256(Path(tmp))
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    write_json(path.with_suffix(".json"), {"sha256": digest, "format": FORMAT_VERSION, **(meta or {})})


def load_weights(model: nn.Module, path: Path) -> dict:
    """Load weights after checking the hash and format version; returns the metadata."""
    meta_path = path.with_suffix(".json")
    if not path.exists():
        raise CheckpointError(f"no weights at {path}")
    meta = json.loads(meta_path.read_text()) if meta_path.exists() else {}
    if meta.get("format", FORMAT_VERSION) > FORMAT_VERSION:
        raise CheckpointError(
            f"{path} was written by a newer polytask (format {meta['format']} > {FORMAT_VERSION}); upgrade polytask"
        )
    if "sha256" in meta and sha256(path) != meta["sha256"]:
        raise CheckpointError(f"{path} is corrupted or truncated (content hash does not match {meta_path.name})")
    try:
        missing, unexpected = load_model(model, str(path), strict=False)
    except Exception as exc:  # safetensors raises several types for a damaged header
        raise CheckpointError(f"{path} cannot be read as safetensors: {exc}") from exc
    if missing or unexpected:
        raise CheckpointError(f"{path} does not fit the model: missing {missing[:5]}, unexpected {unexpected[:5]}")
    return meta
