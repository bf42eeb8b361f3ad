"""What the dense task types (segmentation, detection) share: image + target geometry, and the
decoder over the backbone's feature pyramid.

Geometry. A dense target (a mask, boxes) must follow the image through augmentation, so a dense
task collates its own batches: for each image one window of the original is chosen (training: the
random resized crop of ``polytask.preprocess.crop_window``, area in ``model.image.crop_scale``,
then a horizontal flip with p = 0.5 when ``model.image.flip``; evaluation and prediction: the
whole image), resized to ``size`` x ``size`` (bilinear for the image, nearest neighbour for a
mask, scaled coordinates for boxes) and flipped together; colour jitter touches the image only.
Evaluation therefore sees the whole image, squashed to a square (no centre crop, unlike
classification), and predictions are mapped back to the original image's pixels. Draws are
seeded by the batch's example indices, as for every image task, so resume stays exact.

Decoder. :class:`PyramidDecoder` is a light semantic-FPN decoder (Kirillov, Girshick, He &
Dollar, "Panoptic Feature Pyramid Networks", CVPR 2019, section 3): a 1x1 lateral convolution
per pyramid level to ``head_channels`` (default 64) channels, the top-down path of FPN (each level
plus the upsampled coarser one), then per level one 3x3 conv -> GroupNorm -> ReLU, every level
bilinearly upsampled to the finest (stride 4) and summed. Why this one: it reads every stage of
any backbone's pyramid (EfficientNet, ResNet, ConvNeXt alike), costs a few 1x1/3x3 convs (about
0.1 M parameters at 64 channels on EfficientNet-Lite0, small next to the 3.4 M backbone: it
trains on 2 CPU cores), and gives one stride-4 map that both the segmentation classifier and the
CenterNet detection head read. Limits: one conv per level (Kirillov et al. use up to three
conv-upsample stages on the coarse levels); no dilated context module.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Hashable

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from polytask.data.images import load_rgb
from polytask.errors import ConfigError
from polytask.prefetch import parallel_map
from polytask.preprocess import batch_seed, colour_jitter, crop_window, image_identity
from polytask.tasks.base import Example, Task


@dataclass
class Window:
    """Where a training/eval view comes from: a window (top, left, h, w) of the original image,
    resized to ``size`` x ``size``, mirrored when ``flip``."""

    top: int
    left: int
    h: int
    w: int
    size: int
    flip: bool

    def points(self, xy: np.ndarray) -> np.ndarray:
        """Original-pixel x, y columns (N, 2k) -> view pixels (the same shape)."""
        out = xy.astype(np.float64).copy()
        out[:, 0::2] = (out[:, 0::2] - self.left) * self.size / self.w
        out[:, 1::2] = (out[:, 1::2] - self.top) * self.size / self.h
        if self.flip:
            out[:, 0::2] = self.size - out[:, 0::2]
        return out


def sample_window(h: int, w: int, processor, gen: torch.Generator | None) -> Window:
    """The view of an h x w image: random (``gen``: training) or the whole image (evaluation)."""
    if gen is None:
        return Window(0, 0, h, w, processor.size, False)
    top, left, ch, cw = crop_window(h, w, processor.crop_scale, gen)
    flip = bool(processor.flip and torch.rand((), generator=gen) < 0.5)
    return Window(top, left, ch, cw, processor.size, flip)


def view_pixels(processor, image: np.ndarray, win: Window, gen: torch.Generator | None) -> Tensor:
    """uint8 (H, W, 3) -> the normalised view (3, size, size)."""
    x = torch.from_numpy(np.array(image, dtype=np.uint8)).permute(2, 0, 1).float().div_(255)  # (3, H, W)
    x = x[:, win.top:win.top + win.h, win.left:win.left + win.w]
    x = F.interpolate(x[None], size=(win.size, win.size), mode="bilinear", antialias=True, align_corners=False)[0]
    if win.flip:
        x = x.flip(-1)
    if gen is not None and processor.jitter > 0:
        x = colour_jitter(x, processor.jitter, gen)
    mean = torch.tensor(processor.mean).view(3, 1, 1)
    std = torch.tensor(processor.std).view(3, 1, 1)
    return (x - mean) / std


def view_mask(mask: np.ndarray, win: Window) -> Tensor:
    """Class ids (H, W) -> the view's ids (size, size), nearest neighbour."""
    m = torch.from_numpy(mask[win.top:win.top + win.h, win.left:win.left + win.w].astype(np.float32))
    m = F.interpolate(m[None, None], size=(win.size, win.size), mode="nearest")[0, 0]
    return (m.flip(-1) if win.flip else m).long()  # (size, size)


def view_one(job: tuple) -> tuple[Tensor, tuple[int, int], Any]:
    """One ``(image, processor, seed or None, target, the task's view_target)`` -> its view's
    pixels (3, size, size), the original (height, width) and the view's target."""
    image, processor, seed, target, view_target = job
    gen = None if seed is None else torch.Generator().manual_seed(seed)
    image = load_rgb(image)  # (H, W, 3), full resolution: targets are in its pixels
    win = sample_window(image.shape[0], image.shape[1], processor, gen)
    pixels = view_pixels(processor, image, win, gen)
    return pixels, image.shape[:2], view_target(target, win) if view_target is not None else None


class DenseTask(Task):
    """Base of the task types whose head reads the pyramid and whose target follows the image."""

    reads = frozenset({"pixels"})
    reads_maps = True
    channels: list[int] | None = None

    def bind_backbone(self, config: Any) -> None:
        if not getattr(config, "pyramid", False) or not getattr(config, "channels", None):
            source = getattr(config, "source", None) or getattr(config, "_name_or_path", "this backbone")
            raise ConfigError(f"tasks[{self.name}]: a {self.type_name} task reads a CNN's feature pyramid; "
                              f"{source} gives none (a vision transformer or a text encoder)")
        self.channels = list(config.channels)

    def encode(self, examples: list[Example], tokenizer, max_length: int) -> list[dict]:
        feats = self.inputs.encode(examples, tokenizer)
        for feat, ex in zip(feats, examples):
            if self.target_field in ex.fields:
                feat["target"] = self.encode_target(ex.fields[self.target_field])
        return feats

    def collate(self, feats: list[dict], pad_id: int) -> dict[str, Tensor]:
        """Images and targets through one view each (:func:`view_one`, on the ``train.workers``
        processes when a training loop runs them); ``sizes`` (B, 2) keeps every original
        (height, width) for mapping predictions back."""
        p = feats[0]["processor"]
        seed = batch_seed([f["index"] for f in feats]) if feats[0]["augment"] else None
        jobs = [(f["image"], p, None if seed is None else seed * 4099 + k, f.get("target"),
                 self.view_target if "target" in f else None) for k, f in enumerate(feats)]
        views = parallel_map(view_one, jobs)
        batch = {"pixel_values": torch.stack([v[0] for v in views]),
                 "sizes": torch.tensor([v[1] for v in views], dtype=torch.long)}
        if "target" in feats[0]:
            batch.update(self.collate_targets([v[2] for v in views]))
        return batch

    def view_key(self, feature: dict) -> tuple[Hashable, Hashable] | None:
        """The whole image squashed to ``size`` x ``size`` (full-resolution decode), normalised:
        a view of its own, so a dense task shares a backbone pass with other dense tasks only
        (classification centre-crops: ``ImageInput.view_key``)."""
        if "target" in feature or feature["augment"]:
            return None
        p = feature["processor"]
        return ("whole image", p.size, tuple(p.mean), tuple(p.std)), image_identity(feature["image"])

    def view_target(self, target: Any, win: Window) -> Any:
        raise NotImplementedError

    def collate_targets(self, targets: list) -> dict[str, Tensor]:
        raise NotImplementedError


def groups_for(channels: int) -> int:
    return math.gcd(channels, 8)


class PyramidDecoder(nn.Module):
    """Semantic-FPN-style decoder (module docstring): pyramid [(B, C_j, H_j, W_j)] -> (B, D, H_0, W_0)."""

    def __init__(self, channels: list[int], width: int):
        super().__init__()
        self.lateral = nn.ModuleList([nn.Conv2d(c, width, 1) for c in channels])
        self.smooth = nn.ModuleList([
            nn.Sequential(nn.Conv2d(width, width, 3, padding=1, bias=False), nn.GroupNorm(groups_for(width), width),
                          nn.ReLU(inplace=True)) for _ in channels])

    def forward(self, maps: list[Tensor]) -> Tensor:
        if maps is None or len(maps) != len(self.lateral):
            got = "none" if maps is None else len(maps)
            raise RuntimeError(f"the dense head expects {len(self.lateral)} pyramid maps, got {got}")
        levels = [lat(m) for lat, m in zip(self.lateral, maps)]  # [(B, D, H_j, W_j)]
        for j in range(len(levels) - 2, -1, -1):  # FPN's top-down path
            levels[j] = levels[j] + F.interpolate(levels[j + 1], size=levels[j].shape[-2:], mode="nearest")
        fine = levels[0].shape[-2:]
        out = 0
        for level, smooth in zip(levels, self.smooth):
            y = smooth(level)
            out = out + (y if y.shape[-2:] == fine else F.interpolate(y, size=fine, mode="bilinear", align_corners=False))
        return out  # (B, D, H_0, W_0)
