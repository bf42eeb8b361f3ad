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
    report.html        the run's report, one self-contained page (open it in a browser)
    summary.json       final dev (and test) metrics of the best weights
    predictions/       dev.json, test.json: those weights' predictions and the references, per task
    resources.json     wall time and peak memory (written by ``polytask compare`` only)
    checkpoints/       step-NNNNNNN/ folders for ``--resume``, each with a manifest of hashes

Train, resume, predict, evaluate, export and compare all go through :class:`RunFolder`; no
other module parses ``config.yaml`` or ``metrics.jsonl`` of a run. Every file is written to a
temporary name and renamed (:mod:`polytask.files`), so a crash never leaves a half file.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import uuid
from pathlib import Path
from typing import Any, Callable, Iterator

import yaml
from safetensors import SafetensorError
from safetensors.torch import load_model, save_model
from torch import nn

from polytask._version import __version__
from polytask.config import Config, apply_override, from_dict, to_dict
from polytask.errors import CheckpointError, PolytaskError
from polytask.files import (FILE_MODE, atomic_write, exclusive_lock, read_json, regular_file, sha256, temp_dir, temp_file, write_json,
                            write_yaml)
from polytask.registry import refuse_remote_code, trust_remote_code
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
    REPORT = "report.html"
    SUMMARY = "summary.json"
    RESOURCES = "resources.json"
    PREDICTIONS = "predictions"
    CHECKPOINTS = "checkpoints"
    LOCK = ".lock"
    # every file a run writes (what ``--overwrite`` removes)
    RUN_FILES = (MARKER, CONFIG, VOCAB, TOKENIZER, BACKBONE, WEIGHTS, "model.json", EVENTS, PLOT, REPORT, SUMMARY,
                 RESOURCES, PREDICTIONS, CHECKPOINTS)
    # what a finished run folder holds (what ``load`` needs)
    COMPLETE = (CONFIG, VOCAB, WEIGHTS, TOKENIZER, BACKBONE)
    # ``polytask affinity``: the affinity estimate and its heatmaps (docs/affinity.md)
    AFFINITY = "affinity.json"
    AFFINITY_PLOTS = {"tag": "affinity_tag.png", "cosine": "affinity_cosine.png"}
    RUN_FILES += (AFFINITY, *AFFINITY_PLOTS.values())

    def __init__(self, path: str | Path):
        self.path = Path(path)

    def __repr__(self) -> str:
        return f"RunFolder({str(self.path)!r})"

    @property
    def backbone_dir(self) -> Path:
        return self.path / self.BACKBONE

    @property
    def weights_path(self) -> Path:
        return self.path / self.WEIGHTS

    @property
    def plot_path(self) -> Path:
        return self.path / self.PLOT

    @property
    def report_path(self) -> Path:
        return self.path / self.REPORT

    # -- format and completeness ---------------------------------------------------------------
    def create(self) -> None:
        self.path.mkdir(parents=True, exist_ok=True)

    def write_marker(self) -> str:
        """Mark the folder as this run's (format, version, a new run id); returns the run id."""
        run_id = uuid.uuid4().hex
        write_json(self.path / self.MARKER, {"format": FORMAT_VERSION, "polytask": __version__, "run_id": run_id})
        return run_id

    def marker(self) -> dict:
        path = self.path / self.MARKER
        return read_checked_json(path, "a damaged run folder; train again or restore it") if path.exists() else {}

    @property
    def run_id(self) -> str | None:
        """The identity of the run that owns this folder (None for folders of older versions)."""
        return self.marker().get("run_id")

    def check_format(self) -> None:
        found = self.marker().get("format", FORMAT_VERSION)
        if found > FORMAT_VERSION:
            raise CheckpointError(
                f"{self.path} was written by a newer polytask (run format {found}, this version reads "
                f"{FORMAT_VERSION}); upgrade polytask to load it"
            )

    def holds_a_run(self) -> bool:
        """Any file a run writes is here already (a new run would mix with it)."""
        return any((self.path / f).exists() for f in (self.MARKER, self.CONFIG, self.EVENTS, self.WEIGHTS,
                                                      self.CHECKPOINTS))

    def clear(self) -> None:
        """Remove the files a run writes (``--overwrite``); nothing else in the folder is touched."""
        for name in self.RUN_FILES:
            path = self.path / name
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)
            else:
                path.unlink(missing_ok=True)

    @contextlib.contextmanager
    def lock(self) -> Iterator[None]:
        """Hold the folder for one writer: a second run (or resume) into it fails at once.

        An advisory ``flock`` on ``.lock``: released by the kernel however the process ends, so
        a lock left by a killed run is never stale; the file records the holder's pid. A folder
        this call created is removed again if nothing was written into it (a failed start leaves
        no empty run folder behind).
        """
        created = not self.path.exists()
        self.create()
        busy = (f"{self.path} is in use by a running training (pid {{pid}}); wait for it, "
                "or train into another folder (name=...)")
        try:
            with exclusive_lock(self.path / self.LOCK, busy):
                yield
        finally:
            if created and not self.holds_a_run():
                (self.path / self.LOCK).unlink(missing_ok=True)
                with contextlib.suppress(OSError):
                    self.path.rmdir()

    def remove_stale_temp_files(self) -> list[Path]:
        """Temporary files and folders that a killed writer left (``.NAME.*.tmp``, ``.tmp-*``)."""
        found = [p for p in self.path.glob(".*.tmp")]
        root = self.path / self.CHECKPOINTS
        if root.is_dir():
            found += [p for p in root.iterdir() if p.name.startswith(".tmp-")]
        for p in found:
            shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)
        return found

    def require_complete(self) -> None:
        """A run folder that ``load`` can rebuild a model from (format checked too); every file it
        reads is a regular file (a link to ``/dev/zero`` or a FIFO is refused, never read)."""
        self.check_format()
        for name in self.COMPLETE:
            path = self.path / name
            if not path.exists():
                raise CheckpointError(f"{self.path} is not a complete run folder: {name} is missing")
            for f in sorted(path.rglob("*")) if path.is_dir() else [path]:
                if not f.is_dir():
                    regular_file(f)

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
        return read_checked_json(self.path / self.VOCAB, "a damaged run folder; train again or restore it")

    def save_tokenizer(self, tokenizer) -> None:
        tokenizer.save_pretrained(self.path / self.TOKENIZER)

    def load_tokenizer(self):
        from transformers import AutoTokenizer

        try:
            return AutoTokenizer.from_pretrained(self.path / self.TOKENIZER, trust_remote_code=trust_remote_code())
        except (OSError, ValueError) as exc:
            refuse_remote_code(exc, str(self.path / self.TOKENIZER))
            raise CheckpointError(f"{self.path / self.TOKENIZER} cannot be loaded as a tokenizer "
                                  f"(a damaged run folder; train again or restore it): {exc}") from None

    def save_backbone_config(self, backbone: nn.Module) -> None:
        backbone.config.save_pretrained(self.backbone_dir)

    # -- the best weights ----------------------------------------------------------------------
    def save_best(self, model: nn.Module, meta: dict) -> None:
        save_weights(model, self.weights_path, meta)

    def load_best(self, model: nn.Module) -> dict:
        return load_weights(model, self.weights_path)

    def verify_best(self) -> None:
        """The best weights, where there are any, match the hash in ``model.json`` (what a resumed
        run loads at its end: checked before it trains, not after)."""
        if self.weights_path.exists() or os.path.lexists(self.weights_path):
            check_weights(self.weights_path)

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
        events = parse_events(path)
        return events if kind is None else [e for e in events if e.get("kind") == kind]

    def truncate_events_after(self, step: int) -> None:
        """Drop events logged after ``step`` (they are replayed by a resumed run)."""
        path = self.path / self.EVENTS
        if not path.exists():
            return
        keep = [json.dumps(e) for e in parse_events(path) if e["step"] <= step]
        atomic_write(path, ("\n".join(keep) + "\n" if keep else "").encode())

    # -- summary and resources -----------------------------------------------------------------
    def write_summary(self, summary: dict) -> None:
        write_json(self.path / self.SUMMARY, summary)

    def read_summary(self) -> dict:
        return read_checked_json(self.path / self.SUMMARY, "train the run again to write it")

    def write_predictions(self, split: str, predictions: dict) -> None:
        """``predictions/<split>.json``: per task, the best weights' predictions and the references."""
        write_json(self.path / self.PREDICTIONS / f"{split}.json", predictions)

    def read_predictions(self, split: str) -> dict | None:
        path = self.path / self.PREDICTIONS / f"{split}.json"
        return read_checked_json(path, "train the run again to write it") if path.exists() else None

    def write_resources(self, resources: dict) -> None:
        write_json(self.path / self.RESOURCES, resources)

    def read_resources(self) -> dict:
        path = self.path / self.RESOURCES
        return read_json(path) if path.exists() else {}

    # -- task affinity (polytask affinity) ------------------------------------------------------
    def write_affinity(self, result: dict) -> None:
        write_json(self.path / self.AFFINITY, result)

    def read_affinity(self) -> dict | None:
        path = self.path / self.AFFINITY
        return read_checked_json(path, "run `polytask affinity` again to write it") if path.exists() else None

    def write_affinity_plot(self, kind: str, png: bytes) -> None:
        """``affinity_<kind>.png`` (kind: tag or cosine)."""
        atomic_write(self.path / self.AFFINITY_PLOTS[kind], png)

    def affinity_plots(self) -> dict[str, bytes]:
        """The affinity heatmaps that exist, by kind."""
        return {k: (self.path / f).read_bytes() for k, f in self.AFFINITY_PLOTS.items() if (self.path / f).is_file()}

    # -- training checkpoints (for --resume) ---------------------------------------------------
    def has_checkpoints(self) -> bool:
        return (self.path / self.CHECKPOINTS).is_dir()

    def drop_checkpoints(self) -> int:
        """Remove a finished run's checkpoints (its best weights, summary and events stay);
        returns the bytes freed. Refused for an unfinished run: they are what it resumes from."""
        root = self.path / self.CHECKPOINTS
        if not self.is_finished():
            raise CheckpointError(f"{self.path} is not finished: its checkpoints are kept to resume from")
        if not root.is_dir():
            return 0
        freed = sum(f.stat().st_size for f in root.rglob("*") if f.is_file())
        shutil.rmtree(root)
        return freed

    def save_checkpoint(self, step: int, model: nn.Module, state: Any, keep: int, config: dict | None = None) -> Path:
        """``checkpoints/step-N`` with the model's weights and ``state`` (a tree of tensors and
        plain values, see :mod:`polytask.state_io`), and in its manifest the ``config`` it was
        trained with; keeps the newest ``keep`` of this run."""

        def write(directory: Path) -> None:
            save_model(model, str(directory / self.WEIGHTS))
            save_state(directory, "state", state)

        return save_checkpoint(self.path, step, write, keep, run_id=self.run_id, extra={"config": config})

    def latest_checkpoint_manifest(self) -> dict | None:
        """The manifest of this run's newest good checkpoint (its step, file hashes and the config
        it was trained with), or None when there is none."""
        path = latest_good_checkpoint(self.path, warn=lambda *a: None, run_id=self.run_id)
        return read_json(path / "manifest.json") if path is not None else None

    def load_checkpoint(self, model: nn.Module, warn: Callable[[str], None] = print) -> Any:
        """Load the newest checkpoint of this run that verifies into ``model``; returns its state."""
        path = latest_good_checkpoint(self.path, warn=warn, run_id=self.run_id)
        if path is None:
            raise CheckpointError(f"no usable checkpoint under {self.path / self.CHECKPOINTS} to resume from")
        load_model_file(model, path / self.WEIGHTS)
        return load_state(path, "state")


# ---------------------------------------------------------------------------------------------
# Small readers that fail with one clear line


def read_checked_json(path: Path, fix: str) -> Any:
    """JSON from ``path``; a damaged file is a CheckpointError naming it and the fix."""
    try:
        return read_json(path)
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"{path} cannot be read ({exc}): {fix}") from None


def parse_events(path: Path) -> list[dict]:
    """The events of ``metrics.jsonl``; a partial last line (a kill while appending) is dropped."""
    lines = [line for line in path.read_text().splitlines() if line.strip()]
    events = []
    for i, line in enumerate(lines):
        try:
            events.append(json.loads(line))
        except ValueError:
            if i == len(lines) - 1:
                break  # cut short by a kill: the event was not complete
            raise CheckpointError(f"{path}:{i + 1} is not valid JSON (a damaged run folder)") from None
    return events


# ---------------------------------------------------------------------------------------------
# Weights files and checkpoint folders (path-level; RunFolder uses them)


def save_weights(model: nn.Module, path: Path, meta: dict | None = None) -> None:
    """Write ``path`` (safetensors) and ``path.json`` (its hash and ``meta``) as one unit.

    The JSON is written first and lists the new weights' hash together with the hash (and
    metadata) of the weights still in place; the weights are then renamed into place. A kill
    between the two steps leaves intact old weights that the JSON still vouches for.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_file(path.parent, path.name)
    try:
        save_model(model, tmp)
        os.chmod(tmp, FILE_MODE)  # safetensors writes the file anew, owner-only
        entry = {"sha256": sha256(Path(tmp)), "format": FORMAT_VERSION, **(meta or {})}
        current = _current_entry(path)
        write_json(path.with_suffix(".json"), {**entry, "previous": current} if current else entry)
        os.replace(tmp, path)
    except WRITE_ERRORS as exc:  # a full disk: one line saying what survived, not a traceback
        Path(tmp).unlink(missing_ok=True)
        current = _current_entry(path)
        kept = (f"the best weights so far ({path.name}, step {current.get('step', '?')}) are intact" if current
                else "no earlier best weights were saved")
        raise write_failed(exc, path, kept, path.parent) from None
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


WRITE_ERRORS = (OSError, SafetensorError)  # safetensors reports a full disk as its own error type


def write_failed(exc: Exception, what: Path, kept: str, run_dir: Path) -> CheckpointError:
    """A failed write of weights or a checkpoint (a full disk, a lost mount) as one line: the reason,
    what is still intact, and how to go on."""
    text = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
    reason = "No space left on device" if "No space left on device" in text else text
    return CheckpointError(f"cannot write {what}: {reason}; {kept} (nothing half-written is left); free space, "
                           f"then continue with: polytask train --resume {run_dir}")


def _current_entry(path: Path) -> dict | None:
    """The metadata of the weights now at ``path`` (None when there are none or none verify)."""
    meta_path = path.with_suffix(".json")
    if not path.exists() or not meta_path.exists():
        return None
    try:
        meta = read_json(meta_path)
    except ValueError:
        return None
    digest = sha256(path)
    for entry in (meta, meta.get("previous") or {}):
        if entry.get("sha256") == digest:
            return {k: v for k, v in entry.items() if k != "previous"}
    return None


def load_model_file(model: nn.Module, path: Path) -> None:
    try:
        missing, unexpected = load_model(model, str(path), strict=False)
    except Exception as exc:  # safetensors raises several types for a damaged header
        raise CheckpointError(f"{path} cannot be read as safetensors: {exc}") from exc
    if missing or unexpected:
        raise CheckpointError(f"{path} does not fit the model (weights of another run, or a changed "
                              f"config.yaml?): missing {sorted(missing)[:5]}, unexpected {sorted(unexpected)[:5]}")


def load_weights(model: nn.Module, path: Path) -> dict:
    """Load weights after checking the hash and format version; returns their metadata."""
    meta = check_weights(path)
    load_model_file(model, path)
    return meta


def check_weights(path: Path) -> dict:
    """The metadata of the weights at ``path`` once their hash matches ``path.json`` (``model.json``);
    a missing or hashless ``model.json`` is an error (another run's weights would load unchecked)
    unless the user vouched for the weights with :func:`trust_weights`."""
    meta_path = path.with_suffix(".json")
    if not path.exists():
        raise CheckpointError(f"no weights at {path}")
    regular_file(path)
    if not meta_path.exists():
        raise CheckpointError(f"{meta_path} is missing, so {path.name} cannot be checked against its hash (they may "
                              f"be another run's weights); restore {meta_path.name} from where the run came from, "
                              f"or vouch for weights you trust: python -m polytask.run_folder trust-weights {path}")
    meta = read_checked_json(meta_path, "a damaged run folder; train again or restore it")
    if not isinstance(meta, dict) or "sha256" not in meta:
        raise CheckpointError(f"{meta_path} holds no sha256 for {path.name}: a damaged run folder; restore it, or "
                              f"vouch for weights you trust: python -m polytask.run_folder trust-weights {path}")
    if meta.get("format", FORMAT_VERSION) > FORMAT_VERSION:
        raise CheckpointError(
            f"{path} was written by a newer polytask (format {meta['format']} > {FORMAT_VERSION}); upgrade polytask"
        )
    found = _current_entry(path)
    if found is None:
        raise CheckpointError(f"{path} is corrupted or truncated (content hash does not match {meta_path.name})")
    return found


def trust_weights(path: Path) -> None:
    """Write ``path.json`` vouching for the weights now at ``path`` (the user's explicit word, recorded
    as ``vouched: true``): for a run folder whose ``model.json`` was lost."""
    path = Path(path) / RunFolder.WEIGHTS if Path(path).is_dir() else Path(path)
    regular_file(path)
    write_json(path.with_suffix(".json"), {"sha256": sha256(path), "format": FORMAT_VERSION, "vouched": True})


def save_checkpoint(run_dir: Path, step: int, write_files, keep: int, run_id: str | None = None,
                    extra: dict | None = None) -> Path:
    """Create ``checkpoints/step-N`` atomically: ``write_files(tmp_dir)`` writes the files, a
    manifest with their SHA-256 (and the run's id) is added, and the folder is renamed into
    place. Keeps the newest ``keep`` checkpoints of this run; never touches another run's."""
    root = Path(run_dir) / RunFolder.CHECKPOINTS
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"step-{step:07d}"
    tmp = temp_dir(root, ".tmp-")
    try:
        write_files(tmp)
        files = {p.name: sha256(p) for p in sorted(tmp.iterdir()) if p.is_file()}
        write_json(tmp / "manifest.json", {"step": step, "format": FORMAT_VERSION, "sha256": files, "run_id": run_id,
                                           **(extra or {})})
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
    except WRITE_ERRORS as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        earlier = _checkpoints(root, run_id)
        kept = (f"the earlier checkpoint {earlier[-1].name} and the best weights are intact" if earlier
                else "the best weights are intact (no earlier checkpoint)")
        raise write_failed(exc, final, kept, Path(run_dir)) from None
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    for old in _checkpoints(root, run_id)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def _checkpoints(root: Path, run_id: str | None) -> list[Path]:
    """``step-N`` folders of the run ``run_id`` (every one when None), oldest first."""
    out = []
    for p in sorted(q for q in root.iterdir() if q.name.startswith("step-")):
        if run_id is not None:
            try:
                if read_json(p / "manifest.json").get("run_id") != run_id:
                    continue
            except (OSError, ValueError, CheckpointError):
                pass  # damaged: reported by verify_checkpoint, never pruned as another run's
        out.append(p)
    return out


def verify_checkpoint(path: Path) -> str | None:
    """None if every file matches the manifest, else what is wrong."""
    manifest = path / "manifest.json"
    if not manifest.exists():
        return "no manifest.json"
    try:
        info = read_json(manifest)
    except ValueError:
        return "manifest.json is not valid JSON"
    except CheckpointError as exc:
        return str(exc)
    if info.get("format", FORMAT_VERSION) > FORMAT_VERSION:
        return f"written by a newer polytask (format {info['format']})"
    for name, digest in info.get("sha256", {}).items():
        f = path / name
        if not f.exists():
            return f"{name} is missing"
        try:
            if sha256(f) != digest:
                return f"{name} is corrupted or truncated (hash mismatch)"
        except CheckpointError as exc:
            return str(exc)
    return None


def latest_good_checkpoint(run_dir: Path, warn=print, run_id: str | None = None) -> Path | None:
    """The newest checkpoint (of run ``run_id``, when given) that verifies; damaged ones are
    reported and skipped."""
    root = Path(run_dir) / RunFolder.CHECKPOINTS
    if not root.exists():
        return None
    for path in reversed(_checkpoints(root, run_id)):
        problem = verify_checkpoint(path)
        if problem is None:
            return path
        warn(f"warning: skipping checkpoint {path}: {problem}; trying the previous one")
    return None


__all__ = ["FORMAT_VERSION", "RunFolder", "check_weights", "latest_good_checkpoint", "load_weights", "save_checkpoint",
           "save_weights", "trust_weights", "verify_checkpoint"]


if __name__ == "__main__":  # python -m polytask.run_folder trust-weights RUN/model.safetensors
    import sys

    if len(sys.argv) != 3 or sys.argv[1] != "trust-weights":
        sys.exit("usage: python -m polytask.run_folder trust-weights RUN_DIR/model.safetensors")
    trust_weights(Path(sys.argv[2]))
    print(f"vouched for the weights of {sys.argv[2]} (model.json written): they now load as they are")
