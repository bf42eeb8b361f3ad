"""Atomic file writes and content hashes: a crash never leaves a half-written file.

Every file polytask writes goes to a temporary name in the same folder, is flushed to disk, and
is renamed into place (``os.replace`` is atomic on POSIX and Windows).
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any

import yaml


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


UMASK = _current_umask()
FILE_MODE = 0o666 & ~UMASK  # what open() would give: temporary files are owner-only (0600) otherwise
DIR_MODE = 0o777 & ~UMASK


def temp_file(directory: Path, name: str) -> str:
    """A new temporary file for ``name`` in ``directory`` (hidden, ``.tmp``), with the user's
    normal permissions (teammates can read the run folder, as with any file they create)."""
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=f".{name}.", suffix=".tmp")
    os.fchmod(fd, FILE_MODE)
    os.close(fd)
    return tmp


def temp_dir(directory: Path, prefix: str) -> Path:
    """A new temporary folder in ``directory`` with the user's normal permissions."""
    tmp = Path(tempfile.mkdtemp(dir=directory, prefix=prefix))
    tmp.chmod(DIR_MODE)
    return tmp


def atomic_write(path: Path, data: bytes) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_file(path.parent, path.name)
    try:
        with open(tmp, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_json(path: Path, obj: Any) -> None:
    atomic_write(path, json.dumps(obj, indent=2, sort_keys=True).encode())


def read_json(path: Path) -> Any:
    return json.loads(Path(path).read_text())


def write_yaml(path: Path, obj: Any) -> None:
    atomic_write(path, yaml.safe_dump(obj, sort_keys=False).encode())


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()
