"""Load a whole text file, turning every OS or decoding failure into a :class:`DataProblem`.

All readers go through here so that "file not found" and "wrong encoding" look the same for
every format. Decoding the whole file at once (instead of line by line through a text stream)
lets us report the exact line of the first undecodable byte: Python's buffered text reader
fails at a chunk boundary, not at a line.
"""

from __future__ import annotations

from pathlib import Path

from polytask.errors import DataProblem


def read_text(path: str | Path, encoding: str = "utf-8") -> tuple[str | None, DataProblem | None]:
    """Return ``(text, None)`` or ``(None, problem)``; a UTF-8 byte-order mark is dropped."""
    name = str(path)
    try:
        raw = Path(path).read_bytes()
    except FileNotFoundError:
        return None, DataProblem(name, None, None, "file not found")
    except IsADirectoryError:
        return None, DataProblem(name, None, None, "is a directory, expected a file")
    except OSError as exc:
        return None, DataProblem(name, None, None, f"cannot read file: {exc.strerror or exc}")
    try:
        text = raw.decode(encoding)
    except LookupError:
        return None, DataProblem(name, None, None, f"unknown encoding '{encoding}'")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        byte = raw[exc.start]
        hint = f"not valid {encoding} (byte 0x{byte:02x} at line {line}); "
        hint += f"re-save the file as {encoding} or set encoding (e.g. encoding: latin-1)"
        return None, DataProblem(name, line, None, hint)
    return text.removeprefix("\ufeff"), None


def split_lines(text: str) -> list[str]:
    """Split on ``\\n`` only (and drop a trailing ``\\r``), so line numbers match editors and
    ``grep -n``; ``str.splitlines`` would also split on form feeds and U+2028."""
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    return [line[:-1] if line.endswith("\r") else line for line in lines]
