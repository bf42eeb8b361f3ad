"""Exports of an image run (``model.kind: vision``; docs/export.md, docs/vision.md).

- ONNX (``polytask export --format onnx``, through :func:`polytask.export.onnx.export_onnx`):
  :class:`ImageHeads` is the graph, ``pixel_values`` float32 ``(batch, 3, size, size)`` in,
  already preprocessed (RGB, the shorter side resized to ``size``, centre-cropped, scaled to
  [0, 1], normalised by the run's mean and std), one output per classification, multi-label,
  regression, segmentation and detection task (dense tasks: raw head maps at stride 4, their
  input the whole image resized to ``size`` x ``size`` without a crop, each with its own backbone
  pass in the graph; the decoding is in the manifest's entry and docs/vision.md). Any image
  architecture (hard, MTAN, MMoE, PLE): a task-independent encoder
  pass appears once in the graph, else each task has its own. The batch axis is dynamic; the
  spatial size is the run's ``size`` (EfficientNet-Lite's 'same' padding is computed for it).
- the encoder as a folder (``--format hf``, :func:`export_image_hf`): a Hugging Face backbone as
  its ``save_pretrained`` folder with a standard ``preprocessor_config.json`` (load with
  ``AutoBackbone`` / ``AutoModel.from_pretrained`` and ``AutoImageProcessor``); EfficientNet-Lite,
  which has no standard folder format, as ``model.safetensors`` (the ``efficientnet-lite-pytorch``
  network's own parameter names, without the ImageNet classifier ``_fc``), polytask's
  ``config.json`` and ``polytask_image.json`` (the preprocessing); timm likewise (its feature
  extractor's state dict; the family module's ``export_format`` and ``usage_code`` say how). The task heads are not written
  as standard task folders (no transformers image-classification class pools as polytask's
  heads do for every family): they are in the ONNX graph.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn

from polytask.backbones.vision import family

IMAGE_TYPES = ("classification", "multilabel", "regression", "segmentation", "detection")
CHECK_IMAGES = 3  # random images in the ONNX parity check (batch axis checked at another size by the tests)


def reads_images(pred) -> bool:
    return any(t.inputs is not None for t in pred.tasks.values())


class ImageHeads(nn.Module):
    """The backbone (once when the architecture's encoder pass is task-independent), then every
    task's head: ``forward(pixel_values)`` returns one tensor per task, in ``names`` order;
    regression outputs in the target's units."""

    input_axes = {0: "batch"}

    def __init__(self, pred, names: list[str]):
        super().__init__()
        self.model, self.names = pred.model, names
        self.scale = [(float(pred.tasks[n].std), float(pred.tasks[n].mean))
                      if pred.tasks[n].type_name == "regression" else None for n in names]
        self.token_level = [False] * len(names)

    def forward(self, pixel_values):  # (B, 3, S, S)
        batch = {"pixel_values": pixel_values}
        arch = self.model.arch
        encoded = arch.encode(batch) if arch.shared_encoder else None  # (B, 1 + H * W, C)
        outs = []
        for name, scale in zip(self.names, self.scale):
            head = self.model.heads[name]
            if getattr(head, "reads_features", False):  # a dense head reads the pyramid: its own pass
                outs.append(head(arch(batch, name)))  # (B, K, S/4, S/4) or (B, K + 4, S/4, S/4)
                continue
            feats = arch.task_features(encoded, batch, name) if encoded is not None else arch(batch, name)
            out = head(feats.hidden, feats.mask)  # (B, labels) or (B, 1)
            outs.append(out * scale[0] + scale[1] if scale else out)
        return tuple(outs)


def check_pixels(pred) -> dict[str, torch.Tensor]:
    """Seeded random normalised images at the run's size: the export's example input and parity check."""
    size = pred.tokenizer.size
    gen = torch.Generator().manual_seed(0)
    return {"pixel_values": torch.randn(CHECK_IMAGES, 3, size, size, generator=gen)}  # (3, 3, S, S)


def preprocessing(processor) -> dict:
    """What a consumer of the ONNX graph or encoder folder must do to an image first."""
    return {"size": processor.size, "mean": processor.mean, "std": processor.std, "layout": "NCHW, RGB, float32",
            "steps": f"convert to RGB; resize the shorter side to {processor.size} (bilinear, antialiased); "
                     f"centre-crop {processor.size} x {processor.size}; divide by 255; subtract mean, divide by std"}


def export_encoder(pred, out: Path) -> dict:
    """The trained vision backbone as a folder (see the module); returns its manifest entry."""
    backbone, processor = pred.model.arch.backbone, pred.tokenizer
    out.mkdir(parents=True, exist_ok=True)
    if backbone.config.family == "hf":
        backbone.net.save_pretrained(out, safe_serialization=True)
        image_processor(processor).save_pretrained(out)
        return {"encoder_format": f"transformers {backbone.config.hf_class} folder ({type(backbone.net).__name__}) "
                                  f"with preprocessor_config.json"}
    from safetensors.torch import save_file

    state = {k: v.detach().contiguous() for k, v in backbone.net.state_dict().items()}
    save_file(state, str(out / "model.safetensors"))
    backbone.config.save_pretrained(out)
    processor.save_pretrained(out)
    return {"encoder_format": family(backbone.config.family).export_format(backbone.config)}


def image_processor(processor):
    """A standard Hugging Face image processor doing polytask's evaluation preprocessing (resize
    the shorter side, centre crop, rescale, normalise; PIL's bilinear filter instead of torch's
    antialiased one, so pixels agree to interpolation differences, not bit for bit)."""
    from PIL import Image
    from transformers import BitImageProcessor

    s = processor.size
    return BitImageProcessor(do_resize=True, size={"shortest_edge": s}, resample=Image.BILINEAR, do_center_crop=True,
                             crop_size={"height": s, "width": s}, do_rescale=True, rescale_factor=1 / 255,
                             do_normalize=True, image_mean=processor.mean, image_std=processor.std, do_convert_rgb=True)


def export_image_hf(pred, out_dir: Path) -> dict:
    """``--format hf`` of an image run: ``encoder/`` and the manifest (every task not exported, with why)."""
    entry = export_encoder(pred, out_dir / "encoder")
    why = ("image tasks get no standard transformers task folder (their heads pool the backbone's last map as "
           "polytask does, which no image-classification class reproduces for every family); use --format onnx "
           "(every head) or polytask predict / serve")
    return {"run_dir": str(pred.run_dir), "kind": "vision", "encoder": "encoder", **entry, "tasks": {},
            "not_exported": {n: why for n in pred.tasks}, "preprocessing": preprocessing(pred.tokenizer),
            "usage": usage(pred.model.arch.backbone)}


def usage(backbone) -> list[str]:
    """The model card's "Use" section for an image run's encoder folder."""
    import inspect

    config = backbone.config
    if config.family == "hf":
        # a ViT was trained without its pooler: load it so, not with a random one
        extra = ", add_pooling_layer=False" if config.hf_class == "AutoModel" and "add_pooling_layer" in \
            inspect.signature(type(backbone.net).__init__).parameters else ""
        code = ["from transformers import AutoImageProcessor, " + ("AutoBackbone" if config.hf_class == "AutoBackbone"
                                                                  else "AutoModel"),
                "", f'encoder = {config.hf_class}.from_pretrained("encoder"{extra})',
                'processor = AutoImageProcessor.from_pretrained("encoder")']
    else:  # a family whose encoder is a state dict: it says how to load it
        code = family(config.family).usage_code(config)
    return ["## Use", "", "```python", *code, "```", "",
            "The task heads are in the ONNX export (`polytask export --format onnx`); see polytask's docs/export.md.", ""]


def manifest_entry(pred, out_dir: Path) -> dict:
    """The ONNX manifest's input side of an image run, after saving its preprocessing beside the graph."""
    pred.tokenizer.save_pretrained(out_dir / "preprocessor")
    (out_dir / "preprocessor" / "preprocessing.json").write_text(json.dumps(preprocessing(pred.tokenizer), indent=1))
    return {"preprocessor": "preprocessor", "preprocessing": preprocessing(pred.tokenizer)}


__all__ = ["IMAGE_TYPES", "ImageHeads", "check_pixels", "export_image_hf", "manifest_entry", "reads_images"]
