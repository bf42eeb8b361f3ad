"""Adapters in PEFT's format and merged LoRA models.

- :func:`export_adapter`: one task's adapter and head of an ``adapters`` run (LoRA in PEFT's
  format), for ``polytask export-adapter``;
- :func:`merge_lora`: a plain Hugging Face causal LM with a LoRA adapter merged into its
  weights, for ``polytask merge-lora``.

Both load the run with :class:`polytask.predict.Predictor`; the architectures only provide the
pieces (``save_task_adapter``, ``plain_backbone_state``, the PEFT tuner layers).
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from polytask.architectures.adapters import Adapters
from polytask.architectures.causal_lm import SHARED, CausalLM
from polytask.backbones import backbone_from_config
from polytask.errors import PolytaskError
from polytask.predict import Predictor


def export_adapter(run_dir: str | Path, task: str, out_dir: str | Path) -> Path:
    """Write one task's adapter (and its head) from an ``adapters`` run folder to ``out_dir``.

    Files: the adapter (see :meth:`Adapters.save_task_adapter`; LoRA in PEFT's format),
    ``head.safetensors`` (the task head's weights), ``polytask_adapter.json`` (task, kind, task
    config, label vocabulary, backbone). When the run trained its backbone
    (``freeze_backbone: false``) the adapter only fits that backbone, which is written to
    ``backbone/`` (Hugging Face ``save_pretrained`` layout, without adapters).
    """
    run_dir, out_dir = Path(run_dir), Path(out_dir)
    pred = Predictor.load(run_dir)
    if not isinstance(pred.model.arch, Adapters):
        hint = ("; for a causal_lm run, 'polytask export RUN_DIR --format hf' writes every task's adapter in "
                "PEFT's format with its prompt" if isinstance(pred.model.arch, CausalLM) else "")
        raise PolytaskError(f"{run_dir} was trained with architecture '{pred.cfg.architecture.name}': "
                            f"only 'adapters' runs have a per-task adapter to export here{hint}")
    write_task_adapter(pred, task, out_dir, with_backbone=not pred.model.arch.freeze_backbone)
    return out_dir


def write_task_adapter(pred: Predictor, task: str, out_dir: Path, with_backbone: bool) -> list[str]:
    """Task ``task``'s adapter, head and ``polytask_adapter.json`` of a loaded ``adapters`` run
    in ``out_dir`` (with the adapter-free backbone in ``out_dir/backbone`` when ``with_backbone``);
    returns the names written."""
    from safetensors.torch import save_file

    arch = pred.model.arch
    if task not in arch.tasks:
        raise PolytaskError(f"unknown task '{task}'; this run has: {', '.join(arch.tasks)}")
    files = arch.save_task_adapter(task, out_dir, base_name=pred.cfg.model.backbone)
    head = {k: v.detach().contiguous() for k, v in pred.model.heads[task].state_dict().items()}
    save_file(head, str(out_dir / "head.safetensors"), metadata={"format": "pt"})
    files.append("head.safetensors")
    if with_backbone:
        plain_backbone(pred).save_pretrained(out_dir / "backbone")
        files.append("backbone/")
    meta = {"task": task, "kind": arch.kind, "freeze_backbone": arch.freeze_backbone,
            "backbone": pred.cfg.model.backbone, "run_dir": str(pred.run_dir),
            "task_config": dataclasses.asdict(pred.cfg.task(task)), "vocab": pred.tasks[task].vocab_state(),
            "files": files}
    (out_dir / "polytask_adapter.json").write_text(json.dumps(meta, indent=2, default=str))
    return files


def plain_backbone(pred: Predictor):
    """The backbone of a loaded ``adapters`` run without its adapters (a plain transformers model)."""
    base = backbone_from_config(pred.cfg.model, pred.run.backbone_dir)
    base.load_state_dict(pred.model.arch.plain_backbone_state(), strict=True)
    return base.eval()


def merge_lora(run_dir: str | Path, out_dir: str | Path, task: str | None = None) -> Path:
    """Write a plain Hugging Face causal LM (``save_pretrained``) and its tokenizer to ``out_dir``
    with an adapter merged into the weights: ``W + (alpha / r) B A`` for every adapted layer.

    ``task``: the task whose adapter to merge (required for ``task_lora``; ignored for
    ``shared_lora``). A full fine-tuning run is written as it is. The result loads with
    ``AutoModelForCausalLM.from_pretrained(out_dir)`` with no polytask or PEFT installed.
    """
    run_dir, out_dir = Path(run_dir), Path(out_dir)
    pred = Predictor.load(run_dir)
    arch = pred.model.arch
    if not isinstance(arch, CausalLM):
        raise PolytaskError(f"{run_dir} was not trained with architecture 'causal_lm'")
    name = None
    if arch.peft == "task_lora":
        if task is None or task not in arch.tasks:
            raise PolytaskError(f"give --task, one of: {', '.join(arch.tasks)}")
        name = task
    elif arch.peft == "shared_lora":
        name = SHARED
    state = {}
    if name is not None:
        for layer in arch._tuner_layers():
            layer.merge(adapter_names=[name])
    adapter = {id(p) for p in arch.adapter_parameters()}
    for key, p in arch.backbone.named_parameters():
        if id(p) not in adapter:
            state[key.replace(".base_layer.", ".")] = p.detach().clone()
    plain = backbone_from_config(pred.cfg.model, pred.run.backbone_dir)
    missing, unexpected = plain.load_state_dict(state, strict=False)
    tied = {k for k in missing if k.endswith("lm_head.weight")} if plain.config.tie_word_embeddings else set()
    if set(missing) - tied or unexpected:
        raise PolytaskError(f"merged weights do not fit the base model: missing {missing[:3]}, "
                            f"unexpected {unexpected[:3]}")
    out_dir.mkdir(parents=True, exist_ok=True)
    plain.save_pretrained(out_dir)
    pred.tokenizer.save_pretrained(out_dir)
    return out_dir


__all__ = ["export_adapter", "merge_lora", "plain_backbone", "write_task_adapter"]
