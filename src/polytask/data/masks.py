"""Segmentation masks as data: PNG files of class ids (or colours), read and checked.

A mask is a PNG of the image's size whose pixel values are class ids: mode ``L`` (grey), ``P``
(palette: the indices are the ids, the Pascal VOC convention) or ``I;16``/``I``. A colour mask
(mode ``RGB``) is read through a palette (``"#rrggbb" -> class name``, the task's ``palette``).
:func:`check_mask` finds what training would trip on later (a missing or unreadable file, a size
other than the image's, a mode the task cannot read, values it does not know) with messages that
name the kind of problem only, so that the rows it hits group into one line.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

ID_MODES = ("L", "P", "I;16", "I")


def image_size(path: Path | str | np.ndarray) -> tuple[int, int] | None:
    """(width, height) of an image file or array, None if it cannot be opened."""
    if isinstance(path, np.ndarray):
        return path.shape[1], path.shape[0]
    from PIL import Image

    try:
        with Image.open(path) as img:
            return img.size
    except (OSError, ValueError, SyntaxError):
        return None


def parse_palette(palette: dict[str, str]) -> dict[tuple[int, int, int], str]:
    """``{"#rrggbb": name}`` -> ``{(r, g, b): name}``; raises ValueError naming a bad colour."""
    out = {}
    for colour, name in palette.items():
        text = str(colour).lstrip("#")
        if len(text) != 6:
            raise ValueError(f"colour {colour!r} is not #rrggbb")
        out[tuple(int(text[i:i + 2], 16) for i in (0, 2, 4))] = str(name)
    return out


def read_mask(path: str | Path, palette: dict[tuple[int, int, int], str] | None = None) -> np.ndarray:
    """The mask as an array (H, W): class ids (int64), or with a palette colour codes
    ``r * 65536 + g * 256 + b`` (mapped to classes by the task)."""
    from PIL import Image

    with Image.open(path) as img:
        if palette is not None:
            rgb = np.asarray(img.convert("RGB")).astype(np.int64)  # (H, W, 3)
            return rgb[..., 0] * 65536 + rgb[..., 1] * 256 + rgb[..., 2]
        return np.asarray(img).astype(np.int64)  # (H, W)


def colour_code(rgb: tuple[int, int, int]) -> int:
    return rgb[0] * 65536 + rgb[1] * 256 + rgb[2]


def check_mask(path: Path, image: Path | str | np.ndarray | None, palette: bool) -> tuple[np.ndarray | None, str | None]:
    """The distinct values of the mask at ``path`` and its problem (None: readable, ``image``'s size)."""
    from PIL import Image, UnidentifiedImageError

    if not path.is_file():
        return None, "mask file not found"
    try:
        with Image.open(path) as img:
            mode, size = img.mode, img.size
            img.load()
    except UnidentifiedImageError:
        return None, "unreadable mask (not an image file PIL can identify)"
    except (OSError, SyntaxError, ValueError) as exc:
        return None, f"truncated or corrupt mask ({exc})"
    if not palette and mode not in ID_MODES:
        return None, (f"mask mode {mode}: class-id masks are L, P or I;16 PNGs; colour masks need the "
                      f"task's palette (\"#rrggbb\": class)")
    wanted = image_size(image) if image is not None else None
    if wanted is not None and wanted != size:
        return None, "mask size differs from its image's"
    return np.unique(read_mask(path, {} if palette else None)), None
