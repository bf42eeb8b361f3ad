"""Box operations, CenterNet targets and decoding, and COCO mAP, for the detection task type.

Written on torch (no torchvision: docs/vision.md), each a few lines:

- :func:`box_iou` and greedy non-maximum suppression (:func:`nms`, class-wise through
  :func:`batched_nms` by offsetting each class's boxes apart, the usual trick; Neubeck & Van Gool
  2006 for NMS itself);
- CenterNet (Zhou, Wang & Krahenbuhl, "Objects as Points", 2019): a heatmap per class whose peaks
  are object centres, and at each centre the box's width and height and the centre's sub-pixel
  offset. Targets: an elliptical Gaussian per box on its class's heatmap, sigma = alpha * side / 6
  with alpha = 0.54 (the box-shaped Gaussian of TTFNet, Liu et al. AAAI 2020, instead of CenterNet's
  round one: one formula for any aspect ratio); overlapping Gaussians take the maximum. Loss:
  CenterNet's penalty-reduced focal loss (alpha = 2, beta = 4) over the heatmap, normalised by the
  number of objects, plus 0.1 x L1 on sizes and 1 x L1 on offsets at the centres (the paper's
  weights). Decoding: 3x3 max-pool peaks, the top ``max_detections``, ``score_threshold``, then
  class-wise NMS at ``nms_iou`` (CenterNet needs none in principle; the setting is there for
  crowded scenes, 1.0 turns it off).
- mAP@0.5 and mAP@[.5:.95] (COCO's 101-point interpolated AP averaged over classes) from
  ``faster-coco-eval``, the C++ re-implementation of the COCO API that torchmetrics uses as its
  backend (torchmetrics' MeanAveragePrecision itself imports torchvision, so it is called
  directly); tests cross-check it against pycocotools.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

ALPHA_GAUSS = 0.54
SIZE_WEIGHT, OFFSET_WEIGHT = 0.1, 1.0


def box_iou(a: Tensor, b: Tensor) -> Tensor:
    """IoU of every box in ``a`` (N, 4) with every box in ``b`` (M, 4), xyxy -> (N, M)."""
    area_a = (a[:, 2] - a[:, 0]).clamp(min=0) * (a[:, 3] - a[:, 1]).clamp(min=0)  # (N,)
    area_b = (b[:, 2] - b[:, 0]).clamp(min=0) * (b[:, 3] - b[:, 1]).clamp(min=0)  # (M,)
    lt = torch.maximum(a[:, None, :2], b[None, :, :2])  # (N, M, 2)
    rb = torch.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = (rb - lt).clamp(min=0).prod(-1)  # (N, M)
    return inter / (area_a[:, None] + area_b[None, :] - inter).clamp(min=1e-12)


def nms(boxes: Tensor, scores: Tensor, iou: float) -> Tensor:
    """Indices of the boxes kept by greedy NMS, best score first: a box is dropped when it
    overlaps a kept, better box by more than ``iou``."""
    order = scores.argsort(descending=True)
    overlaps = box_iou(boxes[order], boxes[order])  # (N, N)
    keep: list[int] = []
    suppressed = torch.zeros(len(order), dtype=torch.bool)
    for i in range(len(order)):
        if suppressed[i]:
            continue
        keep.append(i)
        suppressed |= overlaps[i] > iou
    return order[torch.tensor(keep, dtype=torch.long)] if keep else order[:0]


def batched_nms(boxes: Tensor, scores: Tensor, classes: Tensor, iou: float) -> Tensor:
    """Class-wise NMS: boxes of different classes never suppress each other."""
    if boxes.numel() == 0 or iou >= 1:
        return scores.argsort(descending=True)
    shift = classes.to(boxes.dtype)[:, None] * (boxes.max() + 1)  # (N, 1): classes far apart
    return nms(boxes + shift, scores, iou)


def centernet_targets(boxes: Tensor, classes: Tensor, n_classes: int, shape: tuple[int, int],
                      stride: tuple[float, float]) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """One image's targets on an (h, w) output map: the heatmap (K, h, w), each box's centre cell
    (M,) as a flat index, its offset (M, 2) and size (M, 2) in output cells. ``boxes`` (M, 4) in
    input pixels, ``stride`` (y, x) = input pixels per output cell."""
    h, w = shape
    heat = torch.zeros(n_classes, h, w)
    if len(boxes) == 0:
        return heat, torch.zeros(0, dtype=torch.long), torch.zeros(0, 2), torch.zeros(0, 2)
    sy, sx = stride
    cx, cy = (boxes[:, 0] + boxes[:, 2]) / 2 / sx, (boxes[:, 1] + boxes[:, 3]) / 2 / sy  # (M,)
    bw, bh = (boxes[:, 2] - boxes[:, 0]) / sx, (boxes[:, 3] - boxes[:, 1]) / sy
    px, py = cx.floor().clamp(0, w - 1), cy.floor().clamp(0, h - 1)
    ys, xs = torch.arange(h, dtype=torch.float32)[:, None], torch.arange(w, dtype=torch.float32)[None, :]
    for k in range(len(boxes)):
        sig_x, sig_y = max(ALPHA_GAUSS * float(bw[k]) / 6, 1e-3), max(ALPHA_GAUSS * float(bh[k]) / 6, 1e-3)
        g = torch.exp(-((xs - px[k]) ** 2) / (2 * sig_x ** 2) - ((ys - py[k]) ** 2) / (2 * sig_y ** 2))  # (h, w)
        heat[classes[k]] = torch.maximum(heat[classes[k]], g)
    index = (py * w + px).long()
    return heat, index, torch.stack([cx - px, cy - py], 1), torch.stack([bw, bh], 1)


def focal_loss(logits: Tensor, target: Tensor) -> Tensor:
    """CenterNet's penalty-reduced focal loss, summed (the caller normalises by objects)."""
    p = logits.sigmoid().clamp(1e-4, 1 - 1e-4)
    pos = target.eq(1).float()
    pos_loss = -((1 - p) ** 2) * p.log() * pos
    neg_loss = -((1 - target) ** 4) * (p ** 2) * (1 - p).log() * (1 - pos)
    return (pos_loss + neg_loss).sum()


def centernet_loss(out: Tensor, boxes: Tensor, classes: Tensor, input_size: tuple[int, int]) -> Tensor:
    """The CenterNet loss of a batch: ``out`` (B, K + 4, h, w) (heatmap logits, offset x/y,
    size w/h), ``boxes`` (B, M, 4) in input pixels, ``classes`` (B, M) with -1 as padding."""
    n_classes, (h, w) = out.shape[1] - 4, out.shape[-2:]
    stride = (input_size[0] / h, input_size[1] / w)
    total, n_obj = out.new_zeros(()), 0
    for b in range(out.shape[0]):
        real = classes[b] >= 0
        heat, index, offset, size = (t.to(out.device) for t in centernet_targets(
            boxes[b][real].float().cpu(), classes[b][real].cpu(), n_classes, (h, w), stride))
        total = total + focal_loss(out[b, :n_classes], heat)
        if len(index):
            reg = out[b, n_classes:].flatten(1)[:, index].t()  # (M, 4)
            total = total + OFFSET_WEIGHT * F.l1_loss(reg[:, :2], offset, reduction="sum") \
                + SIZE_WEIGHT * F.l1_loss(reg[:, 2:], size, reduction="sum")
        n_obj += len(index)
    return total / max(n_obj, 1)


def centernet_decode(out: Tensor, input_size: tuple[int, int], top: int) -> list[tuple[Tensor, Tensor, Tensor]]:
    """Per image, the ``top`` peaks: boxes (N, 4) in input pixels, scores (N,), classes (N,)."""
    n_classes, (h, w) = out.shape[1] - 4, out.shape[-2:]
    sy, sx = input_size[0] / h, input_size[1] / w
    heat = out[:, :n_classes].float().sigmoid()
    peaks = heat * (F.max_pool2d(heat, 3, stride=1, padding=1) == heat)  # (B, K, h, w)
    scores, idx = peaks.flatten(1).topk(min(top, n_classes * h * w))  # (B, top)
    result = []
    for b in range(out.shape[0]):
        cls, pos = idx[b] // (h * w), idx[b] % (h * w)
        reg = out[b, n_classes:].float().flatten(1)[:, pos]  # (4, top)
        cx, cy = (pos % w + reg[0]) * sx, (pos // w + reg[1]) * sy
        bw, bh = reg[2].clamp(min=0) * sx, reg[3].clamp(min=0) * sy
        result.append((torch.stack([cx - bw / 2, cy - bh / 2, cx + bw / 2, cy + bh / 2], 1), scores[b], cls))
    return result


def coco_map(preds: list[list[dict]], refs: list[list[dict]], labels: list[str]) -> dict[str, float]:
    """``{"map50", "map"}`` of predictions (``{"box", "label", "score"}`` per object) against
    references (``{"box", "label"}``), COCO-style, over the classes ``labels``."""
    from faster_coco_eval import COCO, COCOeval_faster

    cat = {name: i + 1 for i, name in enumerate(labels)}
    anns = [coco_object(o, i + 1, cat) for i, objs in enumerate(refs) for o in objs]
    for k, a in enumerate(anns):
        a["id"] = k + 1  # 1-based: pycocotools treats id 0 as "no match"
    gt = {"images": [{"id": i + 1} for i in range(len(refs))], "annotations": anns,
          "categories": [{"id": v, "name": k} for k, v in cat.items()]}
    dets = [dict(coco_object(o, i + 1, cat), score=float(o["score"])) for i, objs in enumerate(preds)
            for o in objs or [] if o["label"] in cat]
    if not gt["annotations"] or not dets:
        return {"map50": 0.0, "map": 0.0}
    truth = COCO(gt)
    evaluator = COCOeval_faster(truth, truth.loadRes(dets), "bbox", print_function=lambda *a, **k: None)
    evaluator.evaluate()
    evaluator.accumulate()
    evaluator.summarize()
    return {"map50": max(float(evaluator.stats[1]), 0.0), "map": max(float(evaluator.stats[0]), 0.0)}


def coco_object(obj: dict, image_id: int, cat: dict[str, int]) -> dict:
    """One object as a COCO annotation (xywh)."""
    x1, y1, x2, y2 = obj["box"]
    w, h = x2 - x1, y2 - y1
    return {"image_id": image_id, "category_id": cat[obj["label"]], "bbox": [x1, y1, w, h],
            "area": w * h, "iscrowd": 0}

