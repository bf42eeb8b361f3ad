"""The run folder: the one object that knows its layout and reads and writes its files.

Layout of ``RUN_DIR``::

    polytask.json      format marker (run-folder format version, polytask version)
    config.yaml        the resolved configuration (after overrides)
    vocab.json         per-task label vocabularies / target statistics
    tokenizer/         the tokenizer (save_pretrained)
    backbone/          the backbone's config.json (the model is rebuilt from it, offline)
    model.safetensors  the best weights (by the dev macro average), with model.json (hash, step)
    metrics.jsonl      one JSON object per log / evaluation event
    training.png       per-task loss and dev metric over steps
    summary.json       final dev (and test) metrics of the best weights
    resources.json     wall time and peak memory (written by ``polytask compare`` only)
    checkpoints/       step-NNNNNNN/ folders for ``--resume``, each with a manifest of hashes

Train, resume, predict, evaluate, export and compare all go through :class:`RunFolder`; no
other module parses ``config.yaml`` or ``metrics.jsonl`` of a run. Every file is written to a
temporary name and renamed (:mod:`polytask.files`), so a crash never leaves a half file.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable

import yaml
from safetensors.torch import load_model, save_model
from torch import nn

from polytask._version import __version__
from polytask.config import Config, apply_override, from_dict, to_dict
from polytask.errors import CheckpointError
from polytask.files import atomic_write, read_json, sha256, write_json, write_yaml
from polytask.state_io import load_state, save_state

FORMAT_VERSION = 1


class RunFolder:
    """A run folder on disk (it need not exist yet). ``RunFolder(path).events()`` etc."""

    MARKER = "polytask.json"
    CONFIG = "config.yaml"
    VOCAB = "vocab.json"
    TOKENIZER = "tokenizer"
    BACKBONE = "backbone"
    WEIGHTS = "model.safetensors"
    EVENTS = "metrics.jsonl"
    PLOT = "training.png"
    SUMMARY = "summary.json"
    RESOURCES = "resources.json"
    CHECKPOINTS = "checkpoints"
    # what a finished run folder holds (what ``load`` needs)
    COMPLETE = (CONFIG, VOCAB, WEIGHTS, TOKENIZER, BACKBONE)

    def __init__(self, path: str | Path):
        self.path = Path(path)

    def __repr__(self) -> str:
        return f"RunFolder({str(self.path)!r})"

    def __truediv__(self, name: str) -> Path:
        return self.path / name

    @property
    def backbone_dir(self) -> Path:
        return self.path / self.BACKBONE

    @property
    def weights_path(self) -> Path:
        return self.path / self.WEIGHTS

    @property
    def plot_path(self) -> Path:
        return self.path / self.PLOT

    # -- format and completeness ---------------------------------------------------------------
    def create(self) -> None:
        self.path.mkdir(parents=True, exist_ok=True)

    def write_marker(self) -> None:
        write_json(self.path / self.MARKER, {"format": FORMAT_VERSION, "polytask": __version__})

    def check_format(self) -> None:
        marker = self.path / self.MARKER
        if marker.exists():
            found = read_json(marker).get("format", FORMAT_VERSION)
            if found > FORMAT_VERSION:
                raise CheckpointError(
                    f"{self.path} was written by a newer polytask (run format {found}, this version reads "
                    f"{FORMAT_VERSION}); upgrade polytask to load it"
                )

    def require_complete(self) -> None:
        """A run folder that ``load`` can rebuild a model from (format checked too)."""
        self.check_format()
        for name in self.COMPLETE:
            if not (self.path / name).exists():
                raise CheckpointError(f"{self.path} is not a complete run folder: {name} is missing")

    def is_finished(self) -> bool:
        """Training wrote its summary (last, atomically) and the files a model needs exist."""
        return all((self.path / f).exists() for f in (self.SUMMARY, self.CONFIG, self.WEIGHTS))

    # -- configuration (the one place a run's config.yaml is parsed) ---------------------------
    def has_config(self) -> bool:
        return (self.path / self.CONFIG).exists()

    def read_config(self, overrides: list[str] | None = None) -> Config:
        """The run's resolved config; ``overrides`` (``a.b=c``) are applied on top."""
        path = self.path / self.CONFIG
        if not path.exists():
            raise CheckpointError(f"{self.path} is not a run folder (no {self.CONFIG})")
        raw = yaml.safe_load(path.read_text())
        for item in overrides or []:
            apply_override(raw, item)
        return from_dict(raw, source=str(path))

    def write_config(self, cfg: Config) -> None:
        write_yaml(self.path / self.CONFIG, to_dict(cfg))

    # -- vocabularies, tokenizer, backbone config ----------------------------------------------
    def write_vocab(self, vocab: dict[str, dict]) -> None:
        write_json(self.path / self.VOCAB, vocab)

    def read_vocab(self) -> dict[str, dict]:
        return read_json(self.path / self.VOCAB)

    def save_tokenizer(self, tokenizer) -> None:
        tokenizer.save_pretrained(self.path / self.TOKENIZER)

    def load_tokenizer(self):
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(self.path / self.TOKENIZER)

    def save_backbone_config(self, backbone: nn.Module) -> None:
        backbone.config.save_pretrained(self.backbone_dir)

    # -- the best weights ----------------------------------------------------------------------
    def save_best(self, model: nn.Module, meta: dict) -> None:
        save_weights(model, self.weights_path, meta)

    def load_best(self, model: nn.Module) -> dict:
        return load_weights(model, self.weights_path)

    def weights_bytes(self) -> int:
        return self.weights_path.stat().st_size

    # -- events (the one place metrics.jsonl is parsed) ----------------------------------------
    def reset_events(self) -> None:
        atomic_write(self.path / self.EVENTS, b"")

    def append_event(self, event: dict) -> None:
        with open(self.path / self.EVENTS, "a") as fh:
            fh.write(json.dumps(event) + "\n")

    def events(self, kind: str | None = None) -> list[dict]:
        path = self.path / self.EVENTS
        if not path.exists():
            return []
        events = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        return events if kind is None else [e for e in events if e.get("kind") == kind]

    def truncate_events_after(self, step: int) -> None:
        """Drop events logged after ``step`` (they are replayed by a resumed run)."""
        path = self.path / self.EVENTS
        if not path.exists():
            return
        keep = [line for line in path.read_text().splitlines() if line.strip() and json.loads(line)["step"] <= step]
        atomic_write(path, ("\n".join(keep) + "\n" if keep else "").encode())

    # -- summary and resources -----------------------------------------------------------------
    def write_summary(self, summary: dict) -> None:
        write_json(self.path / self.SUMMARY, summary)

    def read_summary(self) -> dict:
        return read_json(self.path / self.SUMMARY)

    def write_resources(self, resources: dict) -> None:
        write_json(self.path / self.RESOURCES, resources)

    def read_resources(self) -> dict:
        path = self.path / self.RESOURCES
        return read_json(path) if path.exists() else {}

    # -- training checkpoints (for --resume) ---------------------------------------------------
    def has_checkpoints(self) -> bool:
        return (self.path / self.CHECKPOINTS).is_dir()

    def save_checkpoint(self, step: int, model: nn.Module, state: Any, keep: int) -> Path:
        """``checkpoints/step-N`` with the model's weights and ``state`` (a tree of tensors and
        plain values, see :mod:`polytask.state_io`); keeps the newest ``keep``."""

        def write(directory: Path) -> None:
            save_model(model, str(directory / self.WEIGHTS))
            save_state(directory, "state", state)

        return save_checkpoint(self.path, step, write, keep)

    def load_checkpoint(self, model: nn.Module, warn: Callable[[str], None] = print) -> Any:
        """Load the newest checkpoint that verifies into ``model``; returns its saved state."""
        path = latest_good_checkpoint(self.path, warn=warn)
        if path is None:
            raise CheckpointError(f"no usable checkpoint under {self.path / self.CHECKPOINTS} to resume from")
        load_model_file(model, path / self.WEIGHTS)
        return load_state(path, "state")


# ---------------------------------------------------------------------------------------------
# Weights files and checkpoint folders (path-level; RunFolder uses them)


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
    meta = read_json(meta_path) if meta_path.exists() else {}
    if meta.get("format", FORMAT_VERSION) > FORMAT_VERSION:
        raise CheckpointError(
            f"{path} was written by a newer polytask (format {meta['format']} > {FORMAT_VERSION}); upgrade polytask"
        )
    if "sha256" in meta and sha256(path) != meta["sha256"]:
        raise CheckpointError(f"{path} is corrupted or truncated (content hash does not match {meta_path.name})")
    load_model_file(model, path)
    return meta


def save_checkpoint(run_dir: Path, step: int, write_files, keep: int) -> Path:
    """Create ``checkpoints/step-N`` atomically: ``write_files(tmp_dir)`` writes the files, a
    manifest with their SHA-256 is added, and the folder is renamed into place. Keeps the
    newest ``keep`` checkpoints."""
    root = Path(run_dir) / RunFolder.CHECKPOINTS
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
        info = read_json(manifest)
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
    root = Path(run_dir) / RunFolder.CHECKPOINTS
    if not root.exists():
        return None
    for path in sorted((p for p in root.iterdir() if p.name.startswith("step-")), reverse=True):
        problem = verify_checkpoint(path)
        if problem is None:
            return path
        warn(f"warning: skipping checkpoint {path}: {problem}; trying the previous one")
    return None


__all__ = ["FORMAT_VERSION", "RunFolder", "latest_good_checkpoint", "load_weights", "save_checkpoint",
           "save_weights", "verify_checkpoint"]
