"""An extractive QA task as a standard ``AutoModelForQuestionAnswering`` folder.

polytask's span head (dropout, then one linear layer to a start and an end logit; Devlin et al.
2019) is exactly the ``qa_outputs`` layer of transformers' ``*ForQuestionAnswering`` models, so
the export copies the encoder and that layer and the logits are the same. The folder also holds
``polytask_qa.json``: the windowing and decoding settings (``max_length``, ``doc_stride``,
``max_answer_length``, ``n_best``, ``allow_unanswerable``, ``null_threshold``) with which the
post-processing of the transformers QA examples gives polytask's answers (docs/qa.md; transformers
5 no longer has a ``question-answering`` pipeline).
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import torch
from torch import nn

from polytask.errors import PolytaskError

CHECK_PAIRS = [("Who wrote it?", "It was written by Ada Lovelace in 1843."), ("Where?", "In Oslo.")]


def export_qa(pred, name: str, out: Path, tolerance: float) -> str | None:
    """Write task ``name`` as a question-answering folder; the reason it cannot be, or None."""
    try:
        model = qa_model(pred, name)
    except PolytaskError as exc:
        return str(exc)
    gap = check_qa(pred, name, model)
    if gap > tolerance:
        return f"the exported model differs from polytask by {gap:.2g} on the check inputs"
    model.save_pretrained(out, safe_serialization=True)
    pred.tokenizer.save_pretrained(out)
    cfg = pred.tasks[name].cfg
    settings = {"max_length": pred.cfg.model.max_length, "doc_stride": cfg.doc_stride,
                "max_answer_length": cfg.max_answer_length, "n_best": cfg.n_best,
                "allow_unanswerable": cfg.allow_unanswerable,
                "null_threshold": pred.tasks[name].null_threshold}  # a number: null_threshold auto's tuned one
    (out / "polytask_qa.json").write_text(json.dumps(settings, indent=2))
    return None


def qa_model(pred, name: str) -> nn.Module:
    """A transformers question-answering model with the run's encoder and ``name``'s span head."""
    from transformers import AutoModelForQuestionAnswering

    backbone = pred.model.arch.backbone
    config = copy.deepcopy(backbone.config)
    config.num_labels = 2
    try:
        model = AutoModelForQuestionAnswering.from_config(config)
    except ValueError as exc:
        raise PolytaskError(f"transformers has no ForQuestionAnswering for '{config.model_type}': {exc}") from None
    missing, _ = model.base_model.load_state_dict(backbone.state_dict(), strict=False)
    if missing:
        raise PolytaskError(f"the {type(model).__name__} encoder lacks weights the run has: {missing[:3]}")
    final = getattr(model, "qa_outputs", None)
    if not isinstance(final, nn.Linear):
        raise PolytaskError(f"{type(model).__name__} has no qa_outputs layer the export knows")
    head = pred.model.heads[name].out
    with torch.no_grad():
        final.weight.copy_(head.weight.detach().to(final.weight.dtype))
        final.bias.copy_(head.bias.detach().to(final.bias.dtype))
    return model.eval()


def check_qa(pred, name: str, model: nn.Module) -> float:
    """Largest |start/end logit difference| between polytask and the exported model."""
    questions, contexts = zip(*CHECK_PAIRS)
    batch = pred.tokenizer(list(questions), list(contexts), padding=True, return_tensors="pt")
    with torch.no_grad():
        ours = pred.model(dict(batch), name)[0]  # (B, T, 2)
        got = model(**batch)
        theirs = torch.stack([got.start_logits, got.end_logits], dim=-1)  # (B, T, 2)
    keep = batch["attention_mask"].bool()
    return float((ours[keep].double() - theirs[keep].double()).abs().max())
