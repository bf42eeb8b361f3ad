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


def save_model_file(model: nn.Module, path: Path) -> None:
    """Plain safetensors write (inside a checkpoint folder that is itself renamed into place)."""
    save_model(model, str(path))


def load_model_file(model: nn.Module, path: Path) -> None:
    try:
        missing, unexpected = load_model(model, str(path), strict=False)
    except Exception as exc:  # safetensors raises several types for a damaged header
        raise CheckpointError(f"{path} cannot be read as safetensors: {exc}") from exc
    if missing or unexpected:
        raise CheckpointError(f"{path} does not fit the model: missing {missing[:5]}, unexpected {unexpected[:5]}")


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
    load_model_file(model, path)
    return meta


# ---------------------------------------------------------------------------------------------
# Training checkpoints (for --resume): checkpoints/step-NNNNNNN/ with a manifest of hashes.


def write_format_marker(run_dir: Path) -> None:
    from polytask import __version__

    write_json(run_dir / "polytask.json", {"format": FORMAT_VERSION, "polytask": __version__})


def check_format(run_dir: Path) -> None:
    marker = run_dir / "polytask.json"
    if marker.exists():
        found = json.loads(marker.read_text()).get("format", FORMAT_VERSION)
        if found > FORMAT_VERSION:
            raise CheckpointError(
                f"{run_dir} was written by a newer polytask (run format {found}, this version reads "
                f"{FORMAT_VERSION}); upgrade polytask to load it"
            )


def save_checkpoint(run_dir: Path, step: int, write_files, keep: int) -> Path:
    """Create ``checkpoints/step-N`` atomically: ``write_files(tmp_dir)`` writes the files, a
    manifest with their SHA-256 is added, and the folder is renamed into place. Keeps the
    newest ``keep`` checkpoints."""
    import shutil

    root = run_dir / "checkpoints"
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"step-{step:07d}"
    tmp = Path(tempfile.mkdtemp(dir=root, prefix=".tmp-"))
    try:
        write_files(tmp)
        files = {p.name: sha256(p) for p in sorted(tmp.iterdir()) if p.is_file()}
        write_json(tmp / "manifest.json", {"step": step, "format": FORMAT_VERSION, "sha256": files})
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    for old in sorted(p for p in root.iterdir() if p.name.startswith("step-"))[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def verify_checkpoint(path: Path) -> str | None:
    """None if every file matches the manifest, else what is wrong."""
    manifest = path / "manifest.json"
    if not manifest.exists():
        return "no manifest.json"
    try:
        info = json.loads(manifest.read_text())
    except ValueError:
        return "manifest.json is not valid JSON"
    if info.get("format", FORMAT_VERSION) > FORMAT_VERSION:
        return f"written by a newer polytask (format {info['format']})"
    for name, digest in info.get("sha256", {}).items():
        f = path / name
        if not f.exists():
            return f"{name} is missing"
        if sha256(f) != digest:
            return f"{name} is corrupted or truncated (hash mismatch)"
    return None


def latest_good_checkpoint(run_dir: Path, warn=print) -> Path | None:
    """The newest checkpoint that verifies; damaged ones are reported and skipped."""
    root = run_dir / "checkpoints"
    if not root.exists():
        return None
    for path in sorted((p for p in root.iterdir() if p.name.startswith("step-")), reverse=True):
        problem = verify_checkpoint(path)
        if problem is None:
            return path
        warn(f"warning: skipping checkpoint {path}: {problem}; trying the previous one")
    return None
