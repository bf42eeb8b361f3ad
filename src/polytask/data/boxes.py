"""Object boxes as data: Pascal VOC XML files and COCO JSON, read into one shape.

Every reader gives a list of objects ``{"box": [x1, y1, x2, y2], "label": name}`` in the image's
pixel coordinates, corners continuous (a box covering pixel columns 0..9 is x1 = 0, x2 = 10).

- Pascal VOC XML (one file per image; the Oxford-IIIT Pet head boxes): ``object/name`` and
  ``object/bndbox`` with 1-based pixel corners ``xmin ymin xmax ymax``, read as ``xmin - 1,
  ymin - 1, xmax, ymax`` (the usual conversion to continuous corners). A file without objects is
  an image without boxes. A row's box column may name such a file (relative to the data file).
- COCO JSON (``data.format: coco``): ``images`` (``id``, ``file_name`` relative to the JSON file's
  folder, ``width``, ``height``), ``annotations`` (``image_id``, ``category_id``, ``bbox`` as
  ``[x, y, width, height]``), ``categories`` (``id``, ``name``). One record per image, in the
  order of ``images`` (its position is the line, its id the item); an image without annotations
  has no boxes; crowd annotations (``iscrowd: 1``) are left out.
"""

from __future__ import annotations

import json
import math
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

from polytask.data.base import Record
from polytask.errors import DataProblem


def read_voc(path: Path) -> tuple[list[dict] | None, str | None]:
    """The objects of one VOC XML file, or its problem (the message names the kind only)."""
    if not path.is_file():
        return None, "box file not found"
    try:
        root = ET.parse(path).getroot()
    except ET.ParseError:
        return None, "unreadable VOC XML (not well-formed)"
    out = []
    for obj in root.iter("object"):
        name, box = obj.findtext("name"), obj.find("bndbox")
        try:
            xmin, ymin, xmax, ymax = (float(box.findtext(k)) for k in ("xmin", "ymin", "xmax", "ymax"))
        except (AttributeError, TypeError, ValueError):
            return None, "VOC object without a numeric bndbox (xmin, ymin, xmax, ymax)"
        out.append({"box": [xmin - 1, ymin - 1, xmax, ymax], "label": (name or "").strip()})
    return out, None


def as_objects(value: Any) -> tuple[list[dict] | None, str | None]:
    """Inline boxes of a row: a list of ``{"box": [x1, y1, x2, y2], "label": ...}`` or of
    ``[x1, y1, x2, y2, label]``."""
    if not isinstance(value, list):
        return None, f"expected a list of boxes or a VOC XML path, got {type(value).__name__}"
    out = []
    for item in value:
        if isinstance(item, dict) and "box" in item and "label" in item:
            box, label = item["box"], item["label"]
        elif isinstance(item, (list, tuple)) and len(item) == 5:
            box, label = list(item[:4]), item[4]
        else:
            return None, "a box is not {\"box\": [x1, y1, x2, y2], \"label\": ...} or [x1, y1, x2, y2, label]"
        if not (isinstance(box, list) and len(box) == 4 and all(_number(v) for v in box)):
            return None, "box coordinates are not four finite numbers"
        out.append({"box": [float(v) for v in box], "label": str(label)})
    return out, None


def box_problem(objects: list[dict], width: int, height: int) -> str | None:
    """What is wrong with a row's boxes in a ``width`` x ``height`` image (None: nothing)."""
    for obj in objects:
        x1, y1, x2, y2 = obj["box"]
        if not (x2 > x1 and y2 > y1):
            return "box with no area (x2 <= x1 or y2 <= y1)"
        if x1 < 0 or y1 < 0 or x2 > width or y2 > height:
            return "box outside its image"
    return None


def _number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def read_coco(path: str | Path, max_examples: int | None = None) -> tuple[list[Record], list[DataProblem]]:
    """One record per COCO image: ``{"image", "boxes", "id", "width", "height"}``."""
    path = Path(path)
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
        images, anns = raw["images"], raw.get("annotations", [])
        names = {c["id"]: str(c["name"]) for c in raw["categories"]}
    except (OSError, ValueError, KeyError, TypeError) as exc:
        return [], [DataProblem(str(path), None, None, f"not a COCO JSON file (images, annotations, categories): {exc}")]
    by_image: dict[Any, list[dict]] = {img.get("id"): [] for img in images}
    problems = []
    for k, a in enumerate(anns):
        where = f"annotation {a.get('id', k + 1)}"
        if a.get("iscrowd"):
            continue
        if a.get("image_id") not in by_image or a.get("category_id") not in names:
            what = "image_id" if a.get("image_id") not in by_image else "category_id"
            problems.append(DataProblem(str(path), None, what, f"{where}: unknown {what} {a.get(what)!r}"))
            continue
        x, y, w, h = (a.get("bbox") or [None] * 4)[:4]
        if not all(_number(v) for v in (x, y, w, h)):
            problems.append(DataProblem(str(path), None, "bbox", f"{where}: bbox is not [x, y, width, height]"))
            continue
        by_image[a["image_id"]].append({"box": [x, y, x + w, y + h], "label": names[a["category_id"]]})
    records = [Record({"image": img.get("file_name"), "boxes": by_image[img.get("id")], "id": img.get("id")},
                      str(path), i + 1) for i, img in enumerate(images)]
    return records[:max_examples] if max_examples else records, problems
