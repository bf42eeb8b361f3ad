"""report.html's sample grid for dense image tasks: each dev image with its predicted and true
boxes drawn on it (detection), or beside its predicted and true masks (segmentation).

Reads only what a run saves (``predictions/dev.json``: predictions, references, inputs): a
detection prediction is a list of ``{"box", "label", "score"}``, a segmentation prediction a
``{"png": base64 PNG of class indices, "labels"}`` and its reference ``{"mask": file}`` (the raw
mask values, coloured by rank: the colours of the true mask follow its values' order, those of
the predicted mask the classes' order).
"""

from __future__ import annotations

import base64
import html
import io

import numpy as np

PALETTE = np.array([(230, 25, 75), (60, 180, 75), (0, 130, 200), (245, 130, 48), (145, 30, 180),
                    (70, 240, 240), (240, 50, 230), (210, 245, 60), (250, 190, 190), (0, 128, 128)], np.uint8)
MIN_SCORE = 0.3  # detection: boxes drawn from this score up (the task's threshold keeps weaker ones)


def is_dense(predictions: list) -> bool:
    """Whether saved predictions are masks or box lists."""
    first = next((p for p in predictions if p is not None), None)
    return (isinstance(first, dict) and "png" in first) or (isinstance(first, list) and all(
        isinstance(o, dict) and "box" in o for o in first))


def dense_grid(got: dict, show: int = 12, side: int = 128) -> list[str]:
    """Figures of the first ``show`` dev images (by position in the dev data)."""
    from PIL import Image

    figures = []
    for i, (pred, ref, source) in enumerate(list(zip(got["predictions"], got["references"], got["inputs"]))[:show]):
        try:
            with Image.open(source) as opened:
                img = opened.convert("RGB")
        except (OSError, ValueError):
            figures.append(f"<figure><em>(image not found)</em><figcaption>#{i}</figcaption></figure>")
            continue
        if isinstance(pred, dict):
            panels, caption = mask_panels(img, pred, ref), f"#{i}: image, predicted mask, true mask"
        else:
            panels = [draw_boxes(img, pred, ref)]
            kept = sum(1 for o in pred if o["score"] >= MIN_SCORE)
            caption = f"#{i}: {kept} predicted (red, score &ge; {MIN_SCORE}), {len(ref)} true (green)"
        imgs = "".join(f"<img src=\"{png_uri(p, side)}\">" for p in panels)
        figures.append(f"<figure class=\"ok\" title=\"{html.escape(str(source))}\">{imgs}<figcaption>{caption}"
                       f"</figcaption></figure>")
    note = (f"<p class=\"note\">The first {len(figures)} of {len(got['references'])} dev images, by position in "
            f"the dev data.</p>")
    return [note, f"<div class=\"grid\">{''.join(figures)}</div>"]


def mask_panels(img, pred: dict, ref: dict) -> list:
    """The image, the predicted mask blended over it, the true mask blended over it."""
    from PIL import Image

    with Image.open(io.BytesIO(base64.b64decode(pred["png"]))) as m:
        predicted = np.asarray(m)  # (H, W) class indices
    panels = [img, blend(img, PALETTE[predicted % len(PALETTE)])]
    try:
        with Image.open(ref["mask"]) as m:
            raw = np.asarray(m)
        ranks = np.unique(raw, return_inverse=True)[1].reshape(raw.shape)
        panels.append(blend(img, PALETTE[ranks % len(PALETTE)]))
    except (OSError, KeyError, TypeError, ValueError):
        pass
    return panels


def blend(img, colours: np.ndarray):
    from PIL import Image

    if colours.shape[:2] != (img.height, img.width):
        return Image.fromarray(colours)
    return Image.fromarray((0.5 * np.asarray(img) + 0.5 * colours).astype(np.uint8))


def draw_boxes(img, pred: list, ref: list):
    from PIL import ImageDraw

    out = img.copy()
    draw = ImageDraw.Draw(out)
    width = max(1, round(max(img.size) / 100))
    for o in ref:
        draw.rectangle(o["box"], outline=(40, 220, 60), width=width)
    for o in pred:
        if o["score"] >= MIN_SCORE:
            draw.rectangle(o["box"], outline=(230, 30, 30), width=width)
    return out


def png_uri(img, side: int) -> str:
    small = img.copy()
    small.thumbnail((side, side))
    buf = io.BytesIO()
    small.save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")
