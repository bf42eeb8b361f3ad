"""A run as Hugging Face model folders: ``polytask export RUN_DIR --format hf --out DIR``.

Image runs get ``encoder/`` only (:mod:`polytask.export.vision`). ``adapters`` runs get
``encoder/`` (adapter-free) and ``tasks/<task>/`` with each task's adapter (LoRA in PEFT's
format) and head; ``causal_lm`` runs get one PEFT adapter folder per task with its prompt
(:mod:`polytask.export.llm`). Layout of ``DIR`` for a hard-sharing run (docs/export.md):

- ``encoder/``: the shared encoder (``save_pretrained``, safetensors) and the tokenizer, for
  ``AutoModel.from_pretrained``; with the source's sentence-transformers files when the backbone
  was a sentence-transformers model;
- ``tasks/<task>/``: each classification, regression and tagging task as a standard
  ``AutoModelForSequenceClassification`` / ``AutoModelForTokenClassification`` folder with
  ``id2label``, for ``transformers.pipeline``;
- ``README.md``: the model card (:mod:`polytask.export.card`); ``polytask_export.json``: what
  was exported, and why a task was not.

How a polytask head becomes a standard one. polytask's sequence head pools (first token or
masked mean), then dropout and a linear layer. Hugging Face's BERT-style sequence classifiers put
a ``dense + tanh`` layer between the first token and the linear layer, which polytask does not
have. The export sets that dense layer to ``s * I`` (``s`` = :data:`POOLER_SCALE`) and the linear
layer to ``W / s``: ``tanh(s x) / s = x - s^2 x^3 / 3 + ...``, so the logits match polytask's to
about ``s^2 |x|^3``, far below any label decision. Regression heads carry the target
standardisation (``y = out * std + mean``) in their weights. Every exported task is checked
against polytask on a few inputs before it is written; mean pooling has no standard class and is
reported as not exported.
"""

from __future__ import annotations

import copy
import json
import os
import shutil
from pathlib import Path

import torch
from torch import nn

from polytask.architectures.adapters import Adapters
from polytask.architectures.causal_lm import CausalLM
from polytask.architectures.hard import HardSharing
from polytask.backbones.encoder import resolve_backbone
from polytask.errors import PolytaskError
from polytask.export.card import model_card
from polytask.export.folder import claim_out_dir
from polytask.export.llm import export_causal_lm
from polytask.export.lora import plain_backbone, write_task_adapter
from polytask.export.vision import export_image_hf, reads_images
from polytask.export.qa import export_qa
from polytask.predict import Predictor

POOLER_SCALE = 1e-4
TOLERANCE = 1e-3  # largest |logit difference| accepted by the export's own check
CHECK_TEXTS = ["The export check runs this sentence.", "Anna flew to Oslo in May", "no"]
ST_FILES = ("modules.json", "sentence_bert_config.json", "config_sentence_transformers.json")


def export_hf(run_dir: str | Path, out_dir: str | Path, push_to_hub: str | None = None,
              overwrite: bool = False) -> Path:
    """Write a run as Hugging Face folders in ``out_dir`` (docs/export.md): a hard-sharing run's
    encoder and standard task models; an ``adapters`` run's encoder and per-task adapters; a
    ``causal_lm`` run's per-task PEFT adapters with their prompts (:mod:`polytask.export.llm`).
    With ``push_to_hub`` (a repo id) the folder is uploaded to the Hugging Face Hub afterwards
    (the Hub is checked before anything is written). A folder with files in it is refused, or
    with ``overwrite`` a previous export there is replaced (:func:`claim_out_dir`)."""
    out_dir = Path(out_dir)
    if push_to_hub:
        check_hub(push_to_hub)
    pred = Predictor.load(run_dir)
    claim_out_dir(out_dir, overwrite)
    arch = pred.model.arch
    if reads_images(pred):  # any image architecture: the encoder folder (docs/vision.md)
        manifest = export_image_hf(pred, out_dir)
    elif isinstance(arch, HardSharing):
        manifest = export_hard(pred, out_dir)
    elif isinstance(arch, Adapters):
        manifest = export_adapters(pred, out_dir)
    elif isinstance(arch, CausalLM):
        manifest = export_causal_lm(pred, out_dir)
    else:
        raise PolytaskError(
            f"{run_dir} was trained with architecture '{pred.cfg.architecture.name}': --format hf exports 'hard' "
            "runs (one encoder every task reads), 'adapters' and 'causal_lm' runs (one adapter per task); "
            "predict with polytask, or use --format onnx for a hard-sharing run")
    (out_dir / "polytask_export.json").write_text(json.dumps(manifest, indent=2))
    (out_dir / "README.md").write_text(model_card(pred, manifest))
    if push_to_hub:
        upload(out_dir, push_to_hub)
    return out_dir


def export_hard(pred: Predictor, out_dir: Path) -> dict:
    """The shared encoder and one standard task model per exportable task; returns the manifest."""
    out_dir.mkdir(parents=True, exist_ok=True)
    save_encoder(pred, out_dir / "encoder")
    exported, skipped = {}, {}
    for name in pred.tasks:
        reason = export_task(pred, name, out_dir / "tasks" / name)
        if reason:
            skipped[name] = reason
        else:
            exported[name] = f"tasks/{name}"
    return {"run_dir": str(pred.run_dir), "kind": "hard", "encoder": "encoder", "tasks": exported,
            "not_exported": skipped, "pooler_scale": POOLER_SCALE,
            "regression": [f for n, f in exported.items() if pred.tasks[n].type_name == "regression"],
            "tagging": [f for n, f in exported.items() if pred.tasks[n].type_name == "tagging"]}


def export_adapters(pred: Predictor, out_dir: Path) -> dict:
    """An ``adapters`` run: the adapter-free encoder in ``encoder/`` (the base every adapter
    fits: the pretrained backbone, or the trained one with ``freeze_backbone: false``) and each
    task's adapter and head in ``tasks/<task>/`` (LoRA in PEFT's format)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    plain_backbone(pred).save_pretrained(out_dir / "encoder", safe_serialization=True)
    pred.tokenizer.save_pretrained(out_dir / "encoder")
    tasks = {}
    for name in pred.tasks:
        write_task_adapter(pred, name, out_dir / "tasks" / name, with_backbone=False)
        pred.tokenizer.save_pretrained(out_dir / "tasks" / name)
        tasks[name] = f"tasks/{name}"
    kind = pred.model.arch.kind
    return {"run_dir": str(pred.run_dir), "kind": f"adapters/{kind}", "encoder": "encoder", "tasks": tasks,
            "not_exported": {}, "task_format": "PEFT LoRA adapter + head.safetensors" if kind == "lora"
            else "polytask bottleneck adapter + head.safetensors"}


def save_encoder(pred: Predictor, out: Path) -> None:
    """The trained encoder and tokenizer; for a sentence-transformers source also its module list
    and pooling folders, with ``max_seq_length`` cut to the run's ``model.max_length`` (the
    length polytask truncates to, so long texts embed as in polytask)."""
    pred.model.arch.backbone.save_pretrained(out, safe_serialization=True)
    pred.tokenizer.save_pretrained(out)
    source = Path(resolve_backbone(pred.cfg.model.backbone))
    if not (source / "modules.json").is_file():
        return
    for name in ST_FILES:
        if (source / name).is_file():
            shutil.copy(source / name, out / name)
    for sub in source.iterdir():
        if sub.is_dir() and sub.name[:1].isdigit() and not any(sub.glob("*.safetensors")):
            shutil.copytree(sub, out / sub.name, dirs_exist_ok=True)
    st_config = out / "sentence_bert_config.json"
    settings = json.loads(st_config.read_text()) if st_config.is_file() else {}
    limit = pred.cfg.model.max_length
    settings["max_seq_length"] = min(settings.get("max_seq_length") or limit, limit)
    st_config.write_text(json.dumps(settings, indent=2))


def export_task(pred: Predictor, name: str, out: Path) -> str | None:
    """Write task ``name`` as a standard task-model folder; the reason it cannot be, or None."""
    task = pred.tasks[name]
    if task.type_name == "extractive_qa":  # an AutoModelForQuestionAnswering folder
        return export_qa(pred, name, out, TOLERANCE)
    if task.type_name not in ("classification", "regression", "tagging"):
        return f"{task.type_name} tasks have no standard transformers task model"
    if task.type_name != "tagging" and task.cfg.pooling != "cls":
        return (f"pooling '{task.cfg.pooling}': no standard transformers sequence classifier pools token states "
                "that way, so no pipeline folder could give polytask's predictions; use --format onnx (every "
                "head, its pooling included) or polytask predict, or train with pooling: cls to export it")
    try:
        model = task_model(pred, name)
    except PolytaskError as exc:
        return str(exc)
    gap = check_task(pred, name, model)
    if gap > TOLERANCE:
        return f"the exported model differs from polytask by {gap:.2g} on the check inputs"
    model.save_pretrained(out, safe_serialization=True)
    pred.tokenizer.save_pretrained(out)
    return None


def task_model(pred: Predictor, name: str) -> nn.Module:
    """A transformers task model with the run's encoder and ``name``'s head in its weights."""
    from transformers import AutoModelForSequenceClassification, AutoModelForTokenClassification

    task, head = pred.tasks[name], pred.model.heads[name]
    backbone = pred.model.arch.backbone
    config = copy.deepcopy(backbone.config)
    labels = task.labels if task.type_name != "regression" else [name]
    config.num_labels = len(labels)
    config.id2label = dict(enumerate(labels))
    config.label2id = {label: i for i, label in enumerate(labels)}
    config.problem_type = "regression" if task.type_name == "regression" else "single_label_classification"
    auto = AutoModelForTokenClassification if task.type_name == "tagging" else AutoModelForSequenceClassification
    try:
        model = auto.from_config(config, trust_remote_code=False)  # never the config's own code (auto_map)
    except ValueError as exc:
        raise PolytaskError(f"transformers has no {auto.__name__[12:]} for '{config.model_type}': {exc}") from None
    missing, _ = model.base_model.load_state_dict(backbone.state_dict(), strict=False)
    if missing:
        raise PolytaskError(f"the {type(model).__name__} encoder lacks weights the run has: {missing[:3]}")
    weight, bias = head.out.weight.detach().double(), head.out.bias.detach().double()
    if task.type_name == "regression":
        weight, bias = weight * task.std, bias * task.std + task.mean
    final = place_head(model, task.type_name == "tagging")
    with torch.no_grad():
        scale = 1.0 if task.type_name == "tagging" else POOLER_SCALE
        final.weight.copy_((weight / scale).to(final.weight.dtype))
        final.bias.copy_(bias.to(final.bias.dtype))
    return model.eval()


def place_head(model: nn.Module, token_level: bool) -> nn.Linear:
    """The model's last linear layer; for a sequence classifier, its ``dense + tanh`` layer before
    that (BERT's pooler, or RoBERTa's classification head) is set to ``POOLER_SCALE * I``."""
    classifier = getattr(model, "classifier", None)
    if token_level and isinstance(classifier, nn.Linear):
        return classifier
    pooler = getattr(model.base_model, "pooler", None)
    if isinstance(classifier, nn.Linear) and isinstance(getattr(pooler, "dense", None), nn.Linear):
        dense, final = pooler.dense, classifier
    elif isinstance(getattr(classifier, "dense", None), nn.Linear) and isinstance(
            getattr(classifier, "out_proj", None), nn.Linear):
        dense, final = classifier.dense, classifier.out_proj
    else:
        raise PolytaskError(f"{type(model).__name__}'s classifier has a layout the export does not know")
    with torch.no_grad():
        dense.weight.copy_(torch.eye(dense.weight.shape[0], dtype=dense.weight.dtype) * POOLER_SCALE)
        dense.bias.zero_()
    return final


def check_task(pred: Predictor, name: str, model: nn.Module) -> float:
    """Largest |output difference| between polytask and the exported model on :data:`CHECK_TEXTS`."""
    batch = pred.tokenizer(CHECK_TEXTS, padding=True, return_tensors="pt")
    with torch.no_grad():
        ours = pred.model(dict(batch), name)[0]
        theirs = model(**batch).logits
        if pred.tasks[name].type_name == "regression":
            ours = ours * pred.tasks[name].std + pred.tasks[name].mean
    if ours.dim() == 3:  # token outputs: compare real tokens only
        keep = batch["attention_mask"].bool()
        ours, theirs = ours[keep], theirs[keep]
    return float((ours.double() - theirs.double()).abs().max())


def check_hub(repo: str) -> None:
    """Fail before anything is written or uploaded when the Hub cannot take ``repo``."""
    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE or os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on"):
        raise PolytaskError(f"--push-to-hub {repo}: HF_HUB_OFFLINE is set, so nothing can be uploaded; unset it "
                            "(and log in with 'hf auth login'), or export without --push-to-hub and copy the folder")
    from huggingface_hub import HfApi

    try:
        HfApi().whoami()
    except Exception as exc:  # no network, no token, a bad token: all mean "cannot upload"
        raise PolytaskError(f"--push-to-hub {repo}: cannot use the Hugging Face Hub ({type(exc).__name__}: "
                            f"{exc}); nothing was uploaded (check the network and 'hf auth login')") from None


def upload(out_dir: Path, repo: str) -> None:
    from huggingface_hub import HfApi

    api = HfApi()
    api.create_repo(repo, exist_ok=True)
    # the repo's files become the folder's: files of an earlier upload that this export does not
    # have (a task folder since removed) are deleted in the same commit
    api.upload_folder(folder_path=str(out_dir), repo_id=repo, commit_message="polytask export", delete_patterns="*")


__all__ = ["POOLER_SCALE", "export_hf"]
