"""Images as data: the image-folder and ``.npz`` readers, and the checks of one image file.

Rows of JSON Lines / CSV files name an image by a path relative to the data file (or absolute);
an image folder is ``root/<label>/<file>`` (one record per file, its folder name in ``label``);
an ``.npz`` file holds an image array ``(N, H, W)`` or ``(N, H, W, 3)`` (uint8) and label arrays
``(N,)`` or ``(N, K)``, each array a column named by its key. ``check_image`` finds what a
training run would trip on later (unreadable, truncated, a GIF named ``.jpg``, not RGB) so that
``polytask check`` reports it with file and line, grouped, before any training.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from polytask.data.base import Record
from polytask.errors import DataProblem

IMAGE_EXTENSIONS = {".jpg": "JPEG", ".jpeg": "JPEG", ".png": "PNG", ".gif": "GIF", ".bmp": "BMP",
                    ".webp": "WEBP", ".tif": "TIFF", ".tiff": "TIFF"}
RGB_MODES = ("RGB",)


def resolve_image(value: str, record_file: str) -> Path:
    """An image path as written in a row: absolute, or relative to the data file's folder."""
    path = Path(value).expanduser()
    return path if path.is_absolute() else Path(record_file).parent / path


def check_image(path: Path, convert: bool) -> str | None:
    """What is wrong with the image file at ``path`` (None: it decodes to RGB). The message names
    the kind of problem only, so that the rows it hits group into one line."""
    from PIL import Image, UnidentifiedImageError

    if not path.is_file():
        return "image file not found"
    try:
        with Image.open(path) as img:
            fmt, mode = img.format, img.mode
            img.load()  # a truncated file fails here, not at open
    except UnidentifiedImageError:
        return "unreadable image (not an image file PIL can identify)"
    except (OSError, SyntaxError, ValueError) as exc:
        return f"truncated or corrupt image ({exc})"
    expected = IMAGE_EXTENSIONS.get(path.suffix.lower())
    if not convert and expected and fmt and fmt != expected:
        return f"a {fmt} file named {path.suffix} (set model.image.convert: true to read it anyway)"
    if not convert and mode not in RGB_MODES:
        return (f"image mode {mode} ({'grey' if mode in ('L', 'LA', 'I', 'I;16', '1') else 'not RGB'}), "
                f"not RGB: set model.image.convert: true to convert it, or data.on_invalid: skip")
    return None


def check_array(value: Any) -> str | None:
    """What is wrong with an image array (None: uint8 (H, W) grey or (H, W, 3) RGB)."""
    if not isinstance(value, np.ndarray):
        return f"expected an image path or array, got {type(value).__name__}"
    if value.dtype != np.uint8 or not (value.ndim == 2 or (value.ndim == 3 and value.shape[2] == 3)):
        return f"image array must be uint8 (H, W) or (H, W, 3), got {value.dtype} {tuple(value.shape)}"
    return None


def load_rgb(source: Any, draft: int | None = None) -> np.ndarray:
    """An image as a uint8 array (H, W, 3): a file (decoded by PIL and converted to RGB, which
    ``check_image`` made sure is intended; ``draft``: let JPEG decode at a reduced scale no smaller
    than that side) or an array (grey repeated to three channels)."""
    if isinstance(source, np.ndarray):
        return np.repeat(source[:, :, None], 3, axis=2) if source.ndim == 2 else source  # (H, W, 3)
    from PIL import Image

    with Image.open(source) as img:
        if draft:
            img.draft("RGB", (draft, draft))
        return np.asarray(img.convert("RGB"))  # (H, W, 3)


def read_image_folder(root: str | Path, max_examples: int | None = None) -> tuple[list[Record], list[DataProblem]]:
    """``root/<label>/<file>``: one record per image file, ``{"image": file name, "label": folder}``.
    Each record's file is the image's own path (line 1), so problems name the image."""
    root = Path(root)
    records: list[Record] = []
    for folder in sorted(p for p in root.iterdir() if p.is_dir()):
        for path in sorted(folder.iterdir()):
            if path.is_file() and not path.name.startswith("."):
                records.append(Record({"image": path.name, "label": folder.name}, str(path), 1))
    if not records:
        return [], [DataProblem(str(root), None, None, "no images found (expected root/<label>/<file>)")]
    return records[:max_examples] if max_examples else records, []


def read_npz(path: str | Path, max_examples: int | None = None) -> tuple[list[Record], list[DataProblem]]:
    """Arrays of one ``.npz`` file as records: row i has every array's i-th item, by key; the row
    number is the line (1-based)."""
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
    except (OSError, ValueError) as exc:
        return [], [DataProblem(str(path), None, None, f"cannot read as .npz: {exc}")]
    sizes = {k: len(v) for k, v in arrays.items() if v.ndim >= 1}
    if not sizes or len(set(sizes.values())) != 1:
        return [], [DataProblem(str(path), None, None, f"arrays of different lengths: {sizes}")]
    n = next(iter(sizes.values()))
    n = min(n, max_examples) if max_examples else n
    records = [Record({k: _item(v[i]) for k, v in arrays.items()}, str(path), i + 1) for i in range(n)]
    return records, []


def _item(value: Any) -> Any:
    """A row's value: image arrays stay arrays; a scalar becomes a Python number; a 1-D vector a list."""
    if isinstance(value, np.ndarray) and value.ndim == 1:
        return value.tolist()
    if isinstance(value, np.ndarray) and value.ndim >= 2:
        return value
    return value.item() if hasattr(value, "item") else value
