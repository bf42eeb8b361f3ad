"""Atomic file writes and content hashes: a crash never leaves a half-written file.

Every file polytask writes goes to a temporary name in the same folder, is flushed to disk, and
is renamed into place (``os.replace`` is atomic on POSIX and Windows).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import stat
import tempfile
from pathlib import Path
from typing import Any, Iterator

import yaml

from polytask.errors import CheckpointError, PolytaskError


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


def cache_root() -> Path:
    """polytask's own cache folder: ``$POLYTASK_CACHE``, default ``~/.cache/polytask`` (the
    dequantized GGUF copies, the bf16 speed probe's results)."""
    return Path(os.environ.get("POLYTASK_CACHE", Path.home() / ".cache" / "polytask"))


def write_json(path: Path, obj: Any) -> None:
    atomic_write(path, json.dumps(obj, indent=2, sort_keys=True).encode())


def regular_file(path: Path) -> int:
    """``path``'s size, after checking that it is a regular file once links are resolved: a link to
    ``/dev/zero``, a FIFO or a device would make a read hang or never end, so it is refused
    (CheckpointError) before it is opened."""
    try:
        info = os.stat(path)
    except OSError as exc:
        if not os.path.lexists(path):
            raise
        raise CheckpointError(f"{path} cannot be read ({exc.strerror or exc})") from None
    if not stat.S_ISREG(info.st_mode):
        target = os.path.realpath(path)
        via = f" (a link to {target})" if target != os.path.abspath(path) else ""
        raise CheckpointError(f"{path} is not a regular file{via}: a device, a FIFO or a folder is refused, "
                              f"never read (a damaged or tampered folder)")
    return info.st_size


def read_bytes(path: Path) -> bytes:
    """The bytes of the regular file ``path``, at most its size when it was checked (bounded)."""
    size = regular_file(path)
    with open(path, "rb") as fh:
        return fh.read(size)


def read_json(path: Path) -> Any:
    return json.loads(read_bytes(path).decode())


def write_yaml(path: Path, obj: Any) -> None:
    atomic_write(path, yaml.safe_dump(obj, sort_keys=False).encode())


@contextlib.contextmanager
def exclusive_lock(path: Path, busy: str) -> Iterator[None]:
    """Hold an advisory ``flock`` on the file ``path`` (with this process's pid in it) for the
    block; when another process holds it, raise PolytaskError ``busy`` (``{pid}`` filled in) at
    once. The kernel releases it however the process ends, so it is never stale."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fh = open(path, "a+")
    try:
        fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        fh.seek(0)
        holder = fh.read().strip() or "unknown"
        fh.close()
        raise PolytaskError(busy.format(pid=holder)) from None
    try:
        fh.seek(0)
        fh.truncate()
        fh.write(str(os.getpid()))
        fh.flush()
        yield
    finally:
        fh.close()


def sha256(path: Path) -> str:
    """The SHA-256 of the regular file ``path`` (bounded: at most its size is read)."""
    left = regular_file(path)
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while left > 0:
            chunk = fh.read(min(left, 1 << 20))
            if not chunk:
                break
            h.update(chunk)
            left -= len(chunk)
    return h.hexdigest()
