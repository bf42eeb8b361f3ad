"""Object detection on an image (``type: detection``): any number of boxes with classes, zero included.

Data: a row names the image (``columns: {image: ...}``) and its boxes (``columns: {boxes: ...}``):
a Pascal VOC XML file (relative to the data file: the Oxford-IIIT Pet head boxes) or a list of
``{"box": [x1, y1, x2, y2], "label": ...}`` in the image's pixels; or ``data.format: coco`` reads
a COCO JSON file (polytask.data.boxes). Classes: ``labels`` when given, else the labels found in
training. ``check`` reports, with file and line (COCO: and image id), grouped: an unreadable box
file, a box with no area, a box outside its image, an unknown class.

Augmentation (training only, polytask.tasks.dense): the random resized crop's window and the flip
move the boxes with the image; boxes are clipped to the view, and a box keeping less than a
quarter of its area inside it is dropped (its object is mostly cut away).

Head: CenterNet (Zhou et al. 2019, "Objects as Points"; polytask.tasks.boxes) on the stride-4 map
of the shared semantic-FPN decoder (polytask.tasks.dense.PyramidDecoder): two branches of 3x3
conv -> ReLU -> 1x1 conv, one to a heatmap per class (its bias set so that sigmoid = 0.1 at the
start, as in CenterNet), one to the centre offset and box size. Why CenterNet rather than FCOS:
one output level, no anchors, no IoU matching and no centerness branch: the targets are drawn
once per box and the loss is a dense focal loss plus two L1 terms at the centres, which keeps a
step cheap on 2 CPU cores; FCOS's multi-level assignment matters for large scale ranges, which
the stride-4 map with sizes regressed directly covers for the objects here (heads, digits).
Limits: objects whose centres fall in the same stride-4 cell and class are merged into one;
the sizes are regressed in output cells without a log scale.

Settings: ``score_threshold`` (0.05), ``nms_iou`` (0.5; 1.0: no NMS), ``max_detections`` (100).
Predictions: ``[{"box": [x1, y1, x2, y2], "label", "score"}]`` per image, in its original pixels.
Metrics: ``map50`` (mAP at IoU 0.5, PASCAL VOC's criterion; the default main metric, steadier on
small dev sets) and ``map`` (COCO's mAP@[.5:.95]), COCO-style, by faster-coco-eval.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from polytask.data.boxes import as_objects, box_problem, read_voc
from polytask.data.images import resolve_image
from polytask.data.masks import image_size
from polytask.data.records import Record
from polytask.errors import ConfigError, DataProblem
from polytask.tasks.base import Example
from polytask.tasks.boxes import batched_nms, centernet_decode, centernet_loss, coco_map
from polytask.tasks.dense import DenseTask, PyramidDecoder, Window

MIN_VISIBLE = 0.25  # a cropped box keeping less of its area is dropped


class DetectionTask(DenseTask):
    type_name = "detection"
    default_metric = "map50"
    metric_names = ("map50", "map")
    target_field = "boxes"

    def __init__(self, cfg):
        super().__init__(cfg)
        self.labels: list[str] = [str(x) for x in cfg.labels] if cfg.labels else []

    # -- reading -----------------------------------------------------------------------------
    def check_target(self, value: Any) -> tuple[Any, str | None]:
        if isinstance(value, str) and value.strip():
            return value, None  # a VOC XML path: read in parse, relative to the data file
        return as_objects(value)

    def parse(self, record: Record, with_target: bool = True) -> tuple[Example | None, list[DataProblem]]:
        """Also reads a VOC file and checks every box against the image's size and the classes."""
        ex, problems = super().parse(record, with_target)
        if ex is None or not with_target:
            return ex, problems
        objects, msg = ex.fields["boxes"], None
        if isinstance(objects, str):
            objects, msg = read_voc(resolve_image(objects, record.file))
        if msg is None:
            size = image_size(ex.fields["image"])
            msg = box_problem(objects, *size) if size else None
        if msg is None and self.cfg.labels and any(o["label"] not in self.labels for o in objects):
            msg = self.unknown_message()
        if msg:
            return None, [self._problem(record, self.column("boxes"), msg)]
        ex.fields["boxes"] = objects
        return ex, []

    def _problem(self, record: Record, field: str, msg: str) -> DataProblem:
        item = f"image id {record.fields['id']}" if "id" in record.fields else None  # COCO
        return DataProblem(record.file, record.line, field, msg, item)

    def unknown_message(self) -> str:
        return f"box label not among the task's classes (known: {self.labels})"

    def fit(self, train: list[Example]) -> None:
        if not self.cfg.labels:
            self.labels = sorted({o["label"] for e in train for o in e.fields["boxes"]})
        if not self.labels:
            raise ConfigError(f"tasks[{self.name}]: no training image has a box; a detection task needs some")

    def check_eval(self, example: Example) -> str | None:
        return self.unknown_message() if any(o["label"] not in self.labels for o in example.fields["boxes"]) else None

    def data_summary(self, examples: list[Example], features: list[dict] | None = None) -> str:
        counts = {label: 0 for label in self.labels}
        for e in examples:
            for o in e.fields["boxes"]:
                counts[o["label"]] = counts.get(o["label"], 0) + 1
        empty = sum(1 for e in examples if not e.fields["boxes"])
        shown = ", ".join(f"{k} ({v})" for k, v in counts.items())
        return f"{sum(counts.values())} boxes in {len(examples)} images ({empty} without boxes), classes: {shown}"

    def vocab_state(self) -> dict:
        return {"labels": self.labels}

    def load_vocab_state(self, state: dict) -> None:
        self.labels = list(state["labels"])

    def reference(self, example: Example) -> Any:
        return example.fields["boxes"]

    # -- tensors -----------------------------------------------------------------------------
    def encode_target(self, value: Any) -> tuple[np.ndarray, list[int]]:
        boxes = np.array([o["box"] for o in value], dtype=np.float64).reshape(-1, 4)  # (M, 4)
        return boxes, [self.labels.index(o["label"]) for o in value]

    def view_target(self, target: tuple[np.ndarray, list[int]], win: Window) -> tuple[Tensor, Tensor]:
        """Boxes in the view's pixels: moved, mirrored, clipped; mostly cut-away ones dropped."""
        boxes, classes = target
        moved = win.points(boxes)  # (M, 4)
        x1, x2 = np.minimum(moved[:, 0], moved[:, 2]), np.maximum(moved[:, 0], moved[:, 2])
        full = np.stack([x1, moved[:, 1], x2, moved[:, 3]], 1)
        clipped = full.clip(0, win.size)
        area = lambda b: (b[:, 2] - b[:, 0]).clip(0) * (b[:, 3] - b[:, 1]).clip(0)  # noqa: E731
        keep = area(clipped) >= MIN_VISIBLE * np.maximum(area(full), 1e-9)
        keep &= (clipped[:, 2] - clipped[:, 0] >= 1) & (clipped[:, 3] - clipped[:, 1] >= 1)
        return torch.tensor(clipped[keep], dtype=torch.float32), torch.tensor(np.array(classes, dtype=np.int64)[keep])

    def collate_targets(self, targets: list) -> dict[str, Tensor]:
        """Boxes (B, M, 4) and classes (B, M), padded with class -1 to the batch's most boxes."""
        m = max(1, max(len(c) for _, c in targets))
        boxes = torch.zeros(len(targets), m, 4)
        classes = torch.full((len(targets), m), -1, dtype=torch.long)
        for i, (b, c) in enumerate(targets):
            boxes[i, : len(c)], classes[i, : len(c)] = b, c
        return {"boxes": boxes, "classes": classes}

    # -- model side --------------------------------------------------------------------------
    def make_head(self, hidden_size: int) -> nn.Module:
        return DetectionHead(self.channels, self.cfg.head_channels, len(self.labels))

    def loss(self, out: Tensor, batch: dict[str, Tensor]) -> Tensor:
        return centernet_loss(out, batch["boxes"], batch["classes"], tuple(batch["pixel_values"].shape[-2:]))

    def decode(self, out: Tensor, batch: dict[str, Tensor]) -> list[list[dict]]:
        size = tuple(batch["pixel_values"].shape[-2:])
        preds = []
        for (boxes, scores, classes), (h, w) in zip(centernet_decode(out, size, self.cfg.max_detections),
                                                    batch["sizes"].tolist()):
            scale = torch.tensor([w / size[1], h / size[0]] * 2, device=boxes.device)
            boxes = (boxes * scale).clamp(min=0)
            boxes = torch.minimum(boxes, torch.tensor([w, h, w, h], dtype=boxes.dtype, device=boxes.device))
            ok = scores >= self.cfg.score_threshold
            boxes, scores, classes = boxes[ok].cpu(), scores[ok].cpu(), classes[ok].cpu()
            keep = batched_nms(boxes, scores, classes, self.cfg.nms_iou)[: self.cfg.max_detections]
            preds.append([{"box": [round(float(v), 2) for v in boxes[i]], "label": self.labels[int(classes[i])],
                           "score": round(float(scores[i]), 5)} for i in keep.tolist()])
        return preds

    def metrics(self, preds: list, refs: list) -> dict[str, float]:
        return coco_map(preds, refs, self.labels)


class DetectionHead(nn.Module):
    """Pyramid -> (B, K + 4, H_0, W_0): K heatmap logits, then offset x, y and size w, h (cells)."""

    reads_features = True

    def __init__(self, channels: list[int], width: int, n_classes: int):
        super().__init__()
        self.decoder = PyramidDecoder(channels, width)
        self.heat = nn.Sequential(nn.Conv2d(width, width, 3, padding=1), nn.ReLU(inplace=True), nn.Conv2d(width, n_classes, 1))
        self.reg = nn.Sequential(nn.Conv2d(width, width, 3, padding=1), nn.ReLU(inplace=True), nn.Conv2d(width, 4, 1))
        nn.init.constant_(self.heat[-1].bias, -math.log((1 - 0.1) / 0.1))  # sigmoid = 0.1 at the start

    def forward(self, feats) -> Tensor:
        x = self.decoder(feats.maps)  # (B, D, H_0, W_0)
        return torch.cat([self.heat(x), self.reg(x)], dim=1)
