"""A hard-sharing run as one ONNX graph: ``polytask export RUN_DIR --format onnx --out DIR``.

Layout of ``DIR`` (docs/export.md):

- ``model.onnx``: the shared encoder and every task's head in one graph. Inputs ``input_ids``,
  ``attention_mask`` (and ``token_type_ids`` when the backbone takes them), int64, shape
  (batch, sequence); one output per task, named after the task, with dynamic batch and sequence
  axes: classification and multilabel ``(batch, labels)`` logits, regression ``(batch, 1)``
  predictions in the target's units (the run's target standardisation is in the graph),
  tagging ``(batch, sequence, labels)`` logits per word piece; extractive QA ``(batch, sequence,
  2)`` start and end logits per token of a question + context window (windowing and decoding:
  docs/qa.md);
- ``tokenizer/``: the run's tokenizer (``AutoTokenizer.from_pretrained``);
- ``polytask_onnx.json``: inputs, and per task its output name, type, labels and output shape.

An image run (any image architecture) is exported by the same function with ``pixel_values`` in
and ``preprocessor/`` instead of ``tokenizer/`` (:mod:`polytask.export.vision`).

Before the folder is finished, an onnxruntime session is checked against PyTorch on a few inputs
(:data:`TOLERANCE`).
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import torch
from torch import nn

from polytask.architectures.hard import HardSharing
from polytask.errors import PolytaskError
from polytask.export.folder import claim_out_dir
from polytask.export.vision import IMAGE_TYPES, ImageHeads, check_pixels, manifest_entry, reads_images
from polytask.predict import Predictor

TOLERANCE = 1e-4  # largest |output difference| between onnxruntime and PyTorch accepted
CHECK_TEXTS = ["The ONNX export check runs this sentence.", "Anna flew to Oslo in May", "no"]
OPSET = 17
EXPORTED_TYPES = ("classification", "multilabel", "regression", "tagging", "extractive_qa")


class AllHeads(nn.Module):
    """The encoder once, then every task's head: ``forward(input_ids, attention_mask[,
    token_type_ids])`` returns one tensor per task, in ``names`` order."""

    input_axes = {0: "batch", 1: "sequence"}

    def __init__(self, pred: Predictor, names: list[str]):
        super().__init__()
        self.model, self.names = pred.model, names
        self.scale = [(float(pred.tasks[n].std), float(pred.tasks[n].mean))
                      if pred.tasks[n].type_name == "regression" else None for n in names]
        self.token_level = [pred.tasks[n].type_name in ("tagging", "extractive_qa") for n in names]

    def forward(self, input_ids, attention_mask, token_type_ids=None):
        batch = {"input_ids": input_ids, "attention_mask": attention_mask}
        if token_type_ids is not None:
            batch["token_type_ids"] = token_type_ids
        hidden = self.model.arch.encode(batch)
        outs = []
        for name, scale in zip(self.names, self.scale):
            out = self.model.heads[name](hidden, attention_mask)
            outs.append(out * scale[0] + scale[1] if scale else out)
        return tuple(outs)


def export_onnx(run_dir: str | Path, out_dir: str | Path, overwrite: bool = False) -> Path:
    """Write ``model.onnx`` (encoder + all heads), the tokenizer and ``polytask_onnx.json`` of a
    hard-sharing run to ``out_dir``, after checking onnxruntime against PyTorch. A folder with
    files in it is refused, or with ``overwrite`` a previous export there is replaced."""
    require_onnx()
    pred = Predictor.load(run_dir)
    images = reads_images(pred)
    if not images and not isinstance(pred.model.arch, HardSharing):
        raise PolytaskError(
            f"{run_dir} was trained with architecture '{pred.cfg.architecture.name}': the ONNX export needs a "
            "'hard' run (one encoder every task reads); export this run with --format hf where it applies, "
            "export-adapter or merge-lora")
    types = IMAGE_TYPES if images else EXPORTED_TYPES
    skipped = {n: f"{t.type_name} tasks are not exported to ONNX" + ("" if images else " (they decode step by step)")
               for n, t in pred.tasks.items() if t.type_name not in types}
    names = [n for n in pred.tasks if n not in skipped]
    if not names:
        raise PolytaskError(f"{run_dir}: no task of a type the ONNX export handles ({', '.join(types)})")
    out_dir = Path(out_dir)
    claim_out_dir(out_dir, overwrite)
    out_dir.mkdir(parents=True, exist_ok=True)
    wrapper = (ImageHeads if images else AllHeads)(pred, names).eval()
    inputs = check_pixels(pred) if images else check_inputs(pred)
    write_graph(wrapper, inputs, names, out_dir / "model.onnx")
    gap = max_difference(wrapper, inputs, out_dir / "model.onnx")
    if gap > TOLERANCE:
        (out_dir / "model.onnx").unlink()
        raise PolytaskError(f"the ONNX graph differs from PyTorch by {gap:.2g} (> {TOLERANCE}); nothing was kept")
    if images:
        side = manifest_entry(pred, out_dir)
    else:
        pred.tokenizer.save_pretrained(out_dir / "tokenizer")
        side = {"tokenizer": "tokenizer"}
    manifest = {"run_dir": str(pred.run_dir), "model": "model.onnx", **side,
                "inputs": list(inputs), "max_abs_difference": gap, "tasks": {n: task_entry(pred, n) for n in names},
                "not_exported": skipped}
    (out_dir / "polytask_onnx.json").write_text(json.dumps(manifest, indent=2))
    return out_dir


def check_inputs(pred: Predictor) -> dict[str, torch.Tensor]:
    """Tokenized :data:`CHECK_TEXTS`: the export's example inputs and its parity check."""
    batch = pred.tokenizer(CHECK_TEXTS, padding=True, truncation=True, max_length=pred.cfg.model.max_length,
                           return_tensors="pt")
    keys = pred.model.arch.backbone_inputs(dict(batch))
    return {k: keys[k].to(torch.int64) for k in ("input_ids", "attention_mask", "token_type_ids") if k in keys}


def write_graph(wrapper: AllHeads, inputs: dict[str, torch.Tensor], names: list[str], path: Path) -> None:
    axes = {k: dict(wrapper.input_axes) for k in inputs}
    for name, token_level in zip(names, wrapper.token_level):
        axes[name] = {0: "batch", 1: "sequence"} if token_level else {0: "batch"}
    with torch.no_grad(), warnings.catch_warnings():
        # the tracer's notes on Python-side shape checks (none changes the graph for other shapes:
        # tests/test_export_onnx.py checks other batch sizes and lengths) and on advanced indexing
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        warnings.filterwarnings("ignore", message="Exporting aten::index")
        torch.onnx.export(wrapper, tuple(inputs.values()), str(path), input_names=list(inputs),
                          output_names=names, dynamic_axes=axes, opset_version=OPSET, dynamo=False)


def max_difference(wrapper: AllHeads, inputs: dict[str, torch.Tensor], path: Path) -> float:
    """Largest |onnxruntime - PyTorch| over every task output on ``inputs``."""
    import onnxruntime

    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    theirs = session.run(None, {k: v.numpy() for k, v in inputs.items()})
    with torch.no_grad():
        ours = wrapper(*inputs.values())
    return max(float((torch.from_numpy(t).double() - o.double()).abs().max()) for t, o in zip(theirs, ours))


def task_entry(pred: Predictor, name: str) -> dict:
    task = pred.tasks[name]
    entry = {"output": name, "type": task.type_name}
    if task.type_name == "regression":
        entry.update(shape=["batch", 1], mean=task.mean, std=task.std,
                     note="the prediction in the target's units (standardisation undone in the graph)")
    elif task.type_name == "tagging":
        entry.update(shape=["batch", "sequence", len(task.labels)], labels=list(task.labels),
                     note="logits per word piece; polytask labels each word by its first piece")
    elif task.type_name in ("segmentation", "detection"):
        entry.update(dense_entry(pred, task))
    elif task.type_name == "extractive_qa":
        cfg = task.cfg
        entry.update(shape=["batch", "sequence", 2], max_length=pred.cfg.model.max_length, doc_stride=cfg.doc_stride,
                     max_answer_length=cfg.max_answer_length, n_best=cfg.n_best,
                     allow_unanswerable=cfg.allow_unanswerable, null_threshold=task.null_threshold,
                     note="start and end logits per token of a question + context window; decoding: docs/qa.md")
    else:
        entry.update(shape=["batch", len(task.labels)], labels=list(task.labels),
                     note="logits" if task.type_name == "classification" else "logits (sigmoid per label)")
    return entry


def dense_entry(pred: Predictor, task) -> dict:
    """How to decode a dense task's raw output (docs/vision.md: dense tasks)."""
    size = pred.tokenizer.size
    common = {"labels": list(task.labels), "input": f"the whole image resized to {size} x {size} (no crop), "
              "normalised as for the other tasks"}
    if task.type_name == "segmentation":
        return {**common, "shape": ["batch", len(task.labels), "height / 4", "width / 4"],
                "note": "class logits at stride 4: upsample bilinearly to the image's size, argmax over classes"}
    cfg = task.cfg
    return {**common, "shape": ["batch", len(task.labels) + 4, "height / 4", "width / 4"],
            "score_threshold": cfg.score_threshold, "nms_iou": cfg.nms_iou, "max_detections": cfg.max_detections,
            "note": "CenterNet: channels 0..K-1 heatmap logits (sigmoid), then offset x, y and box width, height in "
                    "output cells; peaks = 3x3 max-pool maxima, top max_detections, score >= score_threshold; box "
                    "centre = (cell + offset) * stride, size * stride, scaled by the image's width / size and "
                    "height / size; class-wise NMS at nms_iou (polytask.tasks.boxes.centernet_decode)"}


def require_onnx() -> None:
    """A clear error when the ``export`` extra is not installed."""
    try:
        import onnx  # noqa: F401
        import onnxruntime  # noqa: F401
    except ImportError:
        raise PolytaskError("the ONNX export needs onnx and onnxruntime: pip install 'polytask[export]'") from None


__all__ = ["export_onnx"]
