"""Semantic segmentation of an image (``type: segmentation``): a class per pixel.

Data: a row names the image (``columns: {image: ...}``) and its mask (``columns: {mask: ...}``),
a PNG of the image's size, relative to the data file (docs/vision.md). Mask values are class ids;
``label_names`` names them (``{1: pet, 2: background}``; other values are then errors), else the
classes are the values found in the training masks. A colour mask is read through ``palette``
(``{"#ff0000": pet, ...}``). ``ignore_index``: a mask value neither trained nor scored (the Pets
trimaps' 3, the border). ``check`` reports a missing, unreadable or wrongly sized mask and
unknown values with file and line, grouped.

Head: :class:`polytask.tasks.dense.PyramidDecoder` (semantic FPN, Kirillov et al. 2019) then a
1x1 convolution to the classes at stride 4, upsampled bilinearly to the input. Loss: per-pixel
cross-entropy over the non-ignored pixels of the (augmented, nearest-resized) mask. Prediction: a
class per pixel of the original image (the logits upsampled to its size), as ``{"png": base64 PNG
of class indices, "labels": class names}``. Metrics (torchmetrics, over every pixel of every
image, ignored pixels out): mean IoU over the classes (``miou``, the default main metric) and
pixel accuracy.
"""

from __future__ import annotations

import base64
import io
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from polytask.data.masks import check_mask, colour_code, parse_palette, read_mask
from polytask.data.images import resolve_image
from polytask.data.records import Record
from polytask.errors import ConfigError, DataProblem
from polytask.tasks.base import Example
from polytask.tasks.dense import DenseTask, PyramidDecoder, Window, view_mask

IGNORE = -100  # ignored pixels in target tensors (F.cross_entropy's default)


class SegmentationTask(DenseTask):
    type_name = "segmentation"
    default_metric = "miou"
    metric_names = ("miou", "pixel_accuracy")
    target_field = "mask"

    def __init__(self, cfg):
        super().__init__(cfg)
        try:
            self.palette = parse_palette(cfg.palette) if cfg.palette else None
        except ValueError as exc:
            raise ConfigError(f"tasks[{cfg.name}].palette: {exc}") from None
        self.values: dict[int, int] = {}  # mask value (or colour code) -> class index
        self.labels: list[str] = []
        if self.palette:
            self.labels = list(dict.fromkeys(self.palette.values()))
            self.values = {colour_code(c): self.labels.index(n) for c, n in self.palette.items()}
        elif cfg.label_names:
            named = sorted(((int(k), str(v)) for k, v in cfg.label_names.items()), key=lambda kv: kv[0])
            self.labels = list(dict.fromkeys(n for _, n in named))
            self.values = {k: self.labels.index(n) for k, n in named}

    # -- reading -----------------------------------------------------------------------------
    def check_target(self, value: Any) -> tuple[Any, str | None]:
        if not isinstance(value, str) or not value.strip():
            return value, f"expected a mask file path, got {type(value).__name__}"
        return value, None

    def parse(self, record: Record, with_target: bool = True) -> tuple[Example | None, list[DataProblem]]:
        """Also opens the mask: its size against the image's, its values against the known ones."""
        ex, problems = super().parse(record, with_target)
        if ex is None or not with_target:
            return ex, problems
        path = resolve_image(ex.fields["mask"], record.file)
        values, msg = check_mask(path, ex.fields["image"], self.palette is not None)
        if msg is None:
            unknown = [int(v) for v in values if self.values and int(v) not in self.values and v != self.cfg.ignore_index]
            if unknown:
                msg = self.unknown_message(unknown)
        if msg:
            return None, [self._problem(record, self.column("mask"), msg)]
        ex.fields["mask"] = str(path)
        ex.fields["mask_values"] = [int(v) for v in values]
        return ex, []

    def unknown_message(self, unknown: list[int]) -> str:
        what = "colours" if self.palette else "values"
        return f"mask {what} not in the task's classes or ignore_index (known: {sorted(self.values)})"

    def fit(self, train: list[Example]) -> None:
        if self.values:
            return
        seen = sorted({v for e in train for v in e.fields["mask_values"]} - {self.cfg.ignore_index})
        self.values = {v: i for i, v in enumerate(seen)}
        self.labels = [str(v) for v in seen]
        if len(seen) < 2:
            raise ConfigError(f"tasks[{self.name}]: the training masks hold {len(seen)} class(es) {seen} besides "
                              f"ignore_index; a segmentation task needs at least two")

    def check_eval(self, example: Example) -> str | None:
        unknown = [v for v in example.fields["mask_values"] if v not in self.values and v != self.cfg.ignore_index]
        return self.unknown_message(unknown) if unknown else None

    def data_summary(self, examples: list[Example], features: list[dict] | None = None) -> str:
        names = ", ".join(f"{self.labels[i]} ({v})" for v, i in self.values.items())
        ignore = f", ignored value {self.cfg.ignore_index}" if self.cfg.ignore_index is not None else ""
        return f"{len(examples)} masks, classes (mask value): {names}{ignore}"

    def vocab_state(self) -> dict:
        return {"labels": self.labels, "values": [[k, v] for k, v in self.values.items()]}

    def load_vocab_state(self, state: dict) -> None:
        self.labels = list(state["labels"])
        self.values = {int(k): int(v) for k, v in state["values"]}

    def reference(self, example: Example) -> Any:
        return {"mask": example.fields["mask"]}  # the file (read when scored); a dict: not a label to count

    # -- tensors -----------------------------------------------------------------------------
    def class_ids(self, path: str) -> np.ndarray:
        """The mask file as class indices (H, W), ignored pixels ``IGNORE``."""
        raw = read_mask(path, self.palette)
        uniq, inv = np.unique(raw, return_inverse=True)
        lut = np.array([self.values.get(int(u), IGNORE) for u in uniq], dtype=np.int64)
        return lut[inv].reshape(raw.shape)

    def encode_target(self, value: Any) -> Any:
        return value  # the mask's path: read when collated (on the prefetch thread)

    def view_target(self, target: str, win: Window) -> Tensor:
        return view_mask(self.class_ids(target), win)

    def collate_targets(self, targets: list) -> dict[str, Tensor]:
        return {"labels": torch.stack(targets)}  # (B, size, size)

    # -- model side --------------------------------------------------------------------------
    def make_head(self, hidden_size: int) -> nn.Module:
        return SegmentationHead(self.channels, self.cfg.head_channels, len(self.labels))

    def loss(self, out: Tensor, batch: dict[str, Tensor]) -> Tensor:
        logits = F.interpolate(out, size=batch["labels"].shape[-2:], mode="bilinear", align_corners=False)
        return F.cross_entropy(logits, batch["labels"], ignore_index=IGNORE)  # (B, K, S, S) vs (B, S, S)

    def loss_units(self, feature: dict) -> int:
        return 1  # a mean over pixels per batch: every image counts once

    def decode(self, out: Tensor, batch: dict[str, Tensor]) -> list[dict]:
        preds = []
        for logits, (h, w) in zip(out, batch["sizes"].tolist()):
            full = F.interpolate(logits[None].float(), size=(h, w), mode="bilinear", align_corners=False)[0]
            preds.append({"png": encode_png(full.argmax(0).to(torch.uint8).cpu().numpy()), "labels": self.labels})
        return preds

    def metrics(self, preds: list, refs: list) -> dict[str, float]:
        from torchmetrics.classification import MulticlassAccuracy, MulticlassJaccardIndex

        k = len(self.labels)
        iou = MulticlassJaccardIndex(num_classes=k, ignore_index=IGNORE, average="macro")
        acc = MulticlassAccuracy(num_classes=k, ignore_index=IGNORE, average="micro")
        for pred, ref in zip(preds, refs):
            p = torch.from_numpy(decode_png(pred["png"]).astype(np.int64)).flatten()
            t = torch.from_numpy(self.class_ids(ref["mask"])).flatten()
            iou.update(p, t)
            acc.update(p, t)
        return {"miou": float(iou.compute()), "pixel_accuracy": float(acc.compute())}


class SegmentationHead(nn.Module):
    """Pyramid -> class logits (B, K, H_0, W_0) at the finest level's stride."""

    reads_features = True

    def __init__(self, channels: list[int], width: int, n_classes: int):
        super().__init__()
        self.decoder = PyramidDecoder(channels, width)
        self.classify = nn.Conv2d(width, n_classes, 1)

    def forward(self, feats) -> Tensor:
        return self.classify(self.decoder(feats.maps))


def encode_png(mask: np.ndarray) -> str:
    """A class-index mask (H, W) uint8 as a base64 PNG (mode L)."""
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(mask).save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode("ascii")


def decode_png(data: str) -> np.ndarray:
    from PIL import Image

    with Image.open(io.BytesIO(base64.b64decode(data))) as img:
        return np.asarray(img)
