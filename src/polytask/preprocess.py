"""Image preprocessing: decode, augment (training batches only), resize, normalise; and the image
input kind that tasks read through.

Written on torch, Pillow and NumPy (no torchvision: docs/vision.md gives the stack decision).
:class:`ImageProcessor` plays for images the part a tokenizer plays for text: the backbone
loader returns it, the run folder saves it (``tokenizer/polytask_image.json``), and it turns an
image into model input. :class:`ImageInput` is what a task reads through when the backbone
consumes pixels: the field it checks, the features it keeps (an image path or array, decoded
only when a batch is collated, i.e. on the trainer's prefetch thread) and the collation.

Augmentation (random resized crop, horizontal flip, colour jitter) is a pure function of the
batch's example indices: each collated training batch seeds its own generator from them, so a
batch is the same whether it is made on the prefetch thread or the main thread, before or after
a resume (the trainer's draws fix which indices a step trains on). Evaluation never augments:
the shorter side is resized to ``size`` and the centre cropped.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import zlib
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Hashable

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from polytask.backbones.io import PIXELS
from polytask.data.images import check_array, check_image, load_rgb, resolve_image
from polytask.prefetch import parallel_map

PROCESSOR_FILE = "polytask_image.json"


@dataclass
class ImageProcessor:
    size: int = 224
    mean: list[float] = field(default_factory=lambda: [0.485, 0.456, 0.406])
    std: list[float] = field(default_factory=lambda: [0.229, 0.224, 0.225])
    crop_scale: list[float] = field(default_factory=lambda: [0.8, 1.0])
    flip: bool = True
    jitter: float = 0.0
    convert: bool = False
    pad_token_id = 0  # not a field: images have no padding (polytask.backbones.pad_id reads it)

    @classmethod
    def for_backbone(cls, image_cfg, size: int, mean: list[float], std: list[float]) -> "ImageProcessor":
        """The backbone's own size/mean/std unless ``model.image`` overrides them."""
        return cls(size=image_cfg.size or size, mean=list(image_cfg.mean or mean), std=list(image_cfg.std or std),
                   crop_scale=list(image_cfg.crop_scale), flip=image_cfg.flip, jitter=image_cfg.jitter,
                   convert=image_cfg.convert)

    def save_pretrained(self, folder: str | Path) -> None:
        Path(folder).mkdir(parents=True, exist_ok=True)
        (Path(folder) / PROCESSOR_FILE).write_text(json.dumps(asdict(self), indent=1))

    @classmethod
    def from_pretrained(cls, folder: str | Path) -> "ImageProcessor":
        return cls(**json.loads((Path(folder) / PROCESSOR_FILE).read_text()))

    def pixels(self, image: np.ndarray, gen: torch.Generator | None) -> Tensor:
        """uint8 (H, W, 3) -> normalised float (3, size, size); ``gen``: augment with it."""
        x = torch.from_numpy(np.array(image, dtype=np.uint8)).permute(2, 0, 1).float().div_(255)  # (3, H, W)
        if gen is None:
            x = centre_crop(resize_short(x, self.size), self.size)
        else:
            x = resize(random_crop(x, self.crop_scale, gen), self.size)
            if self.flip and torch.rand((), generator=gen) < 0.5:
                x = x.flip(-1)
            if self.jitter > 0:
                x = colour_jitter(x, self.jitter, gen)
        mean = torch.tensor(self.mean).view(3, 1, 1)
        std = torch.tensor(self.std).view(3, 1, 1)
        return (x - mean) / std  # (3, size, size)


def resize(x: Tensor, size: int) -> Tensor:
    """(3, H, W) -> (3, size, size), bilinear with antialiasing when shrinking."""
    return F.interpolate(x[None], size=(size, size), mode="bilinear", antialias=True, align_corners=False)[0]


def resize_short(x: Tensor, size: int) -> Tensor:
    """(3, H, W) -> (3, H', W') with min(H', W') = size, the aspect ratio kept."""
    h, w = x.shape[-2:]
    scale = size / min(h, w)
    shape = (max(size, round(h * scale)), max(size, round(w * scale)))
    return F.interpolate(x[None], size=shape, mode="bilinear", antialias=True, align_corners=False)[0]


def centre_crop(x: Tensor, size: int) -> Tensor:
    h, w = x.shape[-2:]
    top, left = (h - size) // 2, (w - size) // 2
    return x[:, top:top + size, left:left + size]  # (3, size, size)


def random_crop(x: Tensor, scale: list[float], gen: torch.Generator) -> Tensor:
    """A crop of area fraction in ``scale`` and aspect ratio in [3/4, 4/3] (log-uniform), placed
    uniformly; the whole image when ``scale`` is [1, 1]."""
    top, left, ch, cw = crop_window(*x.shape[-2:], scale, gen)
    return x[:, top:top + ch, left:left + cw]


def crop_window(h: int, w: int, scale: list[float], gen: torch.Generator) -> tuple[int, int, int, int]:
    """``random_crop``'s window (top, left, height, width) in an h x w image (dense tasks crop
    their masks and boxes with the same window)."""
    u = torch.rand(4, generator=gen).tolist()
    area = (scale[0] + (scale[1] - scale[0]) * u[0]) * h * w
    ratio = math.exp(math.log(3 / 4) + (math.log(4 / 3) - math.log(3 / 4)) * u[1])
    ch = min(h, max(1, round(math.sqrt(area / ratio))))
    cw = min(w, max(1, round(math.sqrt(area * ratio))))
    top, left = int(u[2] * (h - ch + 1)), int(u[3] * (w - cw + 1))
    return top, left, ch, cw


def colour_jitter(x: Tensor, strength: float, gen: torch.Generator) -> Tensor:
    """Brightness, contrast and saturation factors each uniform in [1 - s, 1 + s]; (3, H, W) in [0, 1]."""
    b, c, s = (1 - strength + 2 * strength * torch.rand(3, generator=gen)).tolist()
    x = (x * b).clamp(0, 1)
    grey = (0.299 * x[0] + 0.587 * x[1] + 0.114 * x[2])[None]  # (1, H, W)
    x = ((x - grey.mean()) * c + grey.mean()).clamp(0, 1)
    return ((x - grey) * s + grey).clamp(0, 1)


def batch_seed(indices: list[int]) -> int:
    """A seed that is a pure function of a batch's example indices (the draws fix them)."""
    return zlib.crc32(np.asarray(indices, dtype=np.int64).tobytes())


class ImageInput:
    """How a task reads an image field (``columns: {image: <column>}``) when the backbone consumes pixels."""

    kind = PIXELS
    fields = ("image",)

    def __init__(self, convert: bool = False):
        self.convert = convert

    def read(self, value: Any, record_file: str) -> tuple[Any, str | None]:
        """The image reference kept for an example (an absolute path, or the array) and its problem."""
        if isinstance(value, str) and value.strip():
            path = resolve_image(value, record_file)
            return str(path), check_image(path, self.convert)
        if isinstance(value, (bytes, bytearray)):
            return self.read_bytes(bytes(value))
        return value, check_array(value)

    def read_bytes(self, data: bytes) -> tuple[Any, str | None]:
        """Encoded image bytes (the Python API's predict): decoded now, kept as an array."""
        from PIL import Image, UnidentifiedImageError

        try:
            with Image.open(io.BytesIO(data)) as img:
                return np.asarray(img.convert("RGB")), None
        except (UnidentifiedImageError, OSError) as exc:
            return None, f"undecodable image bytes ({exc})"

    def encode(self, examples: list, processor: ImageProcessor) -> list[dict]:
        """Features keep the image (decoded at collation), their position (the augmentation seed)
        and the processor that encoded them (the backbone's, or a loaded run's)."""
        return [{"image": ex.fields["image"], "index": i, "augment": False, "processor": processor}
                for i, ex in enumerate(examples)]

    def view_key(self, feature: dict) -> tuple[Hashable, Hashable] | None:
        """``(view, image)`` of an evaluation feature (``Task.view_key``): the shorter side resized to
        ``size`` (JPEG draft decoding at ``size``), the centre crop, mean and std; None when augmented."""
        if feature["augment"]:
            return None
        p = feature["processor"]
        return ("centre crop", p.size, tuple(p.mean), tuple(p.std)), image_identity(feature["image"])

    def collate(self, feats: list[dict]) -> dict[str, Tensor]:
        """Decode and preprocess every image (on the ``train.workers`` processes while a training
        loop runs them, else here); item k of an augmented batch draws from its own generator,
        seeded by the batch's indices and k, so where it is made never changes it."""
        p = feats[0]["processor"]
        seed = batch_seed([f["index"] for f in feats]) if feats[0]["augment"] else None
        jobs = [(f["image"], p, None if seed is None else seed * 4099 + k) for k, f in enumerate(feats)]
        return {"pixel_values": torch.stack(parallel_map(preprocess_one, jobs))}  # (B, 3, size, size)


def image_identity(image: Any) -> Hashable:
    """An image reference as a hashable: its path (a string), or an array's shape, dtype and a
    digest of its bytes (equal pixels, equal identity: bytes decoded once per task still match)."""
    if isinstance(image, str):
        return ("file", image)
    a = np.ascontiguousarray(image)
    return ("array", a.shape, a.dtype.str, hashlib.blake2b(a.tobytes(), digest_size=16).hexdigest())


def preprocess_one(job: tuple) -> Tensor:
    """One image ``(path or array, processor, generator seed or None)`` -> (3, size, size)."""
    image, processor, seed = job
    gen = None if seed is None else torch.Generator().manual_seed(seed)
    return processor.pixels(load_rgb(image, draft=processor.size), gen)
