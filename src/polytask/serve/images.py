"""Image requests for a vision run's server: base64 images in JSON, multipart uploads, and the
checks every image passes before the model sees it.

A server never reads an image path from its own disk: in JSON, an image task's input is the
encoded file as base64 (bare, or a ``data:image/...;base64,`` URI), as the whole input or as
the task's image field of an object (``{"image": "<base64>"}``); ``POST /v1/upload`` takes the
files themselves as ``multipart/form-data`` (field ``images``, one part per image). Each image is
checked in this order, and the first problem is a 4xx naming the input (``inputs[1].image`` or
``images[1] (cat.png)``):

1. base64 that does not decode: 422;
2. more than ``max_image_bytes`` encoded bytes: 413;
3. not an image PIL can identify: 422;
4. more than ``max_image_pixels`` pixels (width x height, read from the header before the pixels
   are decoded, so a decompression bomb costs nothing): 413;
5. truncated or corrupt pixel data: 422;
6. a mode other than RGB (grey, RGBA, palette) when the run was trained with
   ``model.image.convert: false`` (the training data's own rule): 422; with ``convert: true`` it
   is converted to RGB.

A good image becomes a uint8 ``(H, W, 3)`` array, which the run's tasks read as they read a
``.npz`` row. Limits: the whole body is also bounded by ``max_body_bytes`` (413 before parsing).
"""

from __future__ import annotations

import base64
import binascii
import io
import re
from typing import Any

import numpy as np

from polytask.data.images import RGB_MODES

DATA_URI = re.compile(r"^data:image/[\w.+-]+;base64,", re.IGNORECASE)


class ImageProblem(Exception):
    """One image's problem: the HTTP status and a message naming where it is."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status, self.message = status, message


def image_tasks(pred) -> list[str]:
    """The run's tasks that read an image field (all of them for a vision run)."""
    return [n for n, t in pred.tasks.items() if t.inputs is not None]


def image_keys(pred, names: list[str]) -> set[str]:
    """The keys under which an input object may hold an image: the tasks' field names and columns."""
    keys = set()
    for n in names:
        t = pred.tasks[n]
        keys.update(f for f in t.input_fields)
        keys.update(t.column(f) for f in t.input_fields)
    return keys


def from_base64(value: Any, where: str) -> bytes:
    """The encoded file inside a base64 string (422 for anything else: never a path)."""
    if not isinstance(value, str):
        raise ImageProblem(422, f"{where}: expected an image as a base64 string, got {type(value).__name__}")
    text = DATA_URI.sub("", value.strip(), count=1)
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise ImageProblem(422, f"{where}: not base64 (send the image file's bytes base64-encoded, optionally as a "
                                f"data:image/...;base64, URI; the server reads no paths)") from None


def decode(data: bytes, where: str, settings, convert: bool) -> np.ndarray:
    """Encoded image bytes -> uint8 (H, W, 3), or the :class:`ImageProblem` (see the module)."""
    from PIL import Image, UnidentifiedImageError

    if len(data) > settings.max_image_bytes:
        raise ImageProblem(413, f"{where}: {len(data)} bytes; at most {settings.max_image_bytes} per image "
                                f"(polytask serve --max-image-bytes)")
    try:
        with Image.open(io.BytesIO(data)) as img:
            pixels = img.width * img.height
            if pixels > settings.max_image_pixels:
                raise ImageProblem(413, f"{where}: {img.width} x {img.height} = {pixels} pixels; at most "
                                        f"{settings.max_image_pixels} per image (polytask serve --max-image-pixels)")
            img.load()  # a truncated file fails here
            if img.mode not in RGB_MODES and not convert:
                raise ImageProblem(422, f"{where}: image mode {img.mode} ({'grey' if img.mode in ('L', 'LA', 'I', '1') else 'not RGB'}); "
                                        f"this run reads RGB images (it was trained with model.image.convert: false): "
                                        f"convert it to RGB before sending")
            return np.asarray(img.convert("RGB"))  # (H, W, 3)
    except Image.DecompressionBombError as exc:  # over twice PIL's own limit: refused at open
        raise ImageProblem(413, f"{where}: {exc}") from None
    except UnidentifiedImageError:
        raise ImageProblem(422, f"{where}: undecodable image (not an image file PIL can identify)") from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise ImageProblem(422, f"{where}: undecodable image: truncated or corrupt ({exc})") from None


def json_images(pred, names: list[str], inputs: list, settings) -> list:
    """JSON inputs with every image (a bare input, or an image field of an object) decoded to an
    array; raises the first :class:`ImageProblem` of each input, all inputs checked."""
    convert, keys = bool(getattr(pred.tokenizer, "convert", False)), image_keys(pred, names)
    out, problems = [], []
    for i, item in enumerate(inputs):
        try:
            if isinstance(item, dict):
                out.append({k: (decode(from_base64(v, f"inputs[{i}].{k}"), f"inputs[{i}].{k}", settings, convert)
                                if k in keys else v) for k, v in item.items()})
            else:
                out.append(decode(from_base64(item, f"inputs[{i}]"), f"inputs[{i}]", settings, convert))
        except ImageProblem as exc:
            problems.append(exc)
    if problems:
        raise ImageProblems(problems)
    return out


class ImageProblems(Exception):
    """Every input's problem; ``status`` is 413 when any image was too large, else 422."""

    def __init__(self, problems: list[ImageProblem]):
        self.messages = [p.message for p in problems]
        self.status = 413 if any(p.status == 413 for p in problems) else 422
        super().__init__("; ".join(self.messages[:5]))


def uploaded_images(files: list[tuple[str, bytes]], pred, settings) -> list[np.ndarray]:
    """Multipart parts ``(file name, bytes)`` decoded to arrays, or :class:`ImageProblems`."""
    convert = bool(getattr(pred.tokenizer, "convert", False))
    out, problems = [], []
    for i, (name, data) in enumerate(files):
        try:
            out.append(decode(data, f"images[{i}] ({name})", settings, convert))
        except ImageProblem as exc:
            problems.append(exc)
    if problems:
        raise ImageProblems(problems)
    return out


__all__ = ["ImageProblem", "ImageProblems", "from_base64", "decode", "image_tasks", "json_images", "uploaded_images"]
