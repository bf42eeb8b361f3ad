"""Each task of a ``causal_lm`` run as a folder that plain transformers + PEFT run like polytask.

``polytask export RUN_DIR --format hf --out DIR`` on a decoder-LLM run (docs/llm.md, docs/export.md)
writes ``DIR/tasks/<task>/`` with:

- ``adapter_config.json`` + ``adapter_model.safetensors``: the task's LoRA adapter (Hu et al.,
  "LoRA: Low-Rank Adaptation of Large Language Models", ICLR 2022) in PEFT's ``save_pretrained``
  layout, ``task_type: CAUSAL_LM``, for ``PeftModel.from_pretrained(base, folder)``
  (``peft: task_lora``: the task's own adapter; ``shared_lora``: the one shared adapter, the
  same in every task folder; ``none``: no adapter, the fine-tuned model is ``DIR/model/``);
- ``polytask_task.json`` (:data:`TASK_FILE`): the prompt template, the chat-template text around
  it (``prompt_prefix`` / ``prompt_suffix``, system message included), whether the tokenizer
  adds its special tokens, the prompt budget, the label list, the base model and its weight
  fingerprint;
- ``generation_config.json``: the decoding polytask uses (greedy or beam search,
  ``max_new_tokens``, EOS and padding ids), for ``GenerationConfig.from_pretrained(folder)``;
- the run's tokenizer (with its chat template).

The prompt polytask feeds the model is ``prompt_prefix + prompt.format(**record) + prompt_suffix``
tokenized with ``add_special_tokens``; the answer is the generated tokens up to EOS, decoded
with ``skip_special_tokens`` and stripped. A prompt over ``max_prompt_tokens`` is shortened by
polytask (its longest field is cut), which this recipe does not repeat.
"""

from __future__ import annotations

import json
from pathlib import Path

from polytask.architectures.causal_lm import SHARED, CausalLM
from polytask.backbones.causal_lm import resolve_source
from polytask.errors import PolytaskError
from polytask.predict import Predictor
from polytask.tasks.base import Example

TASK_FILE = "polytask_task.json"
_MARK = "\u2063FIELD\u2063"  # stands in for every prompt field while the template text is located


def export_causal_lm(pred: Predictor, out_dir: Path) -> dict:
    """Write every task of a ``causal_lm`` run under ``out_dir/tasks``; returns the manifest."""
    arch = pred.model.arch
    if not isinstance(arch, CausalLM):
        raise PolytaskError(f"{pred.run_dir} was not trained with architecture 'causal_lm'")
    for name, task in pred.tasks.items():
        if task.type_name != "generation":
            raise PolytaskError(f"task '{name}' has type {task.type_name}: a causal_lm run exports generation tasks only")
    out_dir.mkdir(parents=True, exist_ok=True)
    base = base_reference(pred, out_dir)
    tasks = {}
    for name in pred.tasks:
        folder = out_dir / "tasks" / name
        folder.mkdir(parents=True, exist_ok=True)
        if arch.peft != "none":
            save_adapter(arch, SHARED if arch.peft == "shared_lora" else name, folder, base["name_or_path"])
        spec = task_spec(pred, name, base)
        (folder / TASK_FILE).write_text(json.dumps(spec, indent=2, ensure_ascii=False))
        generation_config(pred, name).save_pretrained(folder)
        pred.tokenizer.save_pretrained(folder)
        tasks[name] = f"tasks/{name}"
    return {"run_dir": str(pred.run_dir), "kind": "causal_lm", "peft": arch.peft, "base": base,
            "tasks": tasks, "not_exported": {}, "task_format": "PEFT adapter + polytask_task.json"
            if arch.peft != "none" else "polytask_task.json (model: model/)"}


def base_reference(pred: Predictor, out_dir: Path) -> dict:
    """Where the base model comes from. LoRA runs: the run's ``model.backbone`` (a folder or hub
    name, and the GGUF file in it, if any) with the frozen weights' fingerprint; full fine-tuning
    runs: the fine-tuned model, written here to ``out_dir/model``."""
    arch = pred.model.arch
    if arch.peft == "none":
        arch.backbone.save_pretrained(out_dir / "model", safe_serialization=True)
        pred.tokenizer.save_pretrained(out_dir / "model")
        return {"backbone": pred.cfg.model.backbone, "name_or_path": "model", "gguf_file": None,
                "dtype": pred.cfg.model.dtype, "fingerprint": None}
    source = resolve_source(pred.cfg.model.backbone)
    path = Path(source.path).expanduser()
    return {"backbone": pred.cfg.model.backbone, "name_or_path": str(path.resolve()) if path.exists() else source.path,
            "gguf_file": source.gguf_file, "dtype": pred.cfg.model.dtype,
            "fingerprint": [float(x) for x in arch.base_fingerprint]}


def save_adapter(arch: CausalLM, adapter: str, folder: Path, base_name: str) -> None:
    """Adapter ``adapter`` in PEFT's ``save_pretrained`` layout (keys ``base_model.model.<module>.lora_A.weight``)."""
    from peft import LoraConfig, get_peft_model_state_dict
    from safetensors.torch import save_file

    state = get_peft_model_state_dict(arch.backbone, adapter_name=adapter)
    state = {f"base_model.model.{k}": v.detach().contiguous() for k, v in state.items()}
    if not state:
        raise PolytaskError(f"the run has no LoRA weights for adapter '{adapter}'")
    config = LoraConfig(bias="none", task_type="CAUSAL_LM", inference_mode=True, **arch.lora_args)
    config.base_model_name_or_path = base_name
    config.save_pretrained(str(folder))
    save_file(state, str(folder / "adapter_model.safetensors"), metadata={"format": "pt"})


def prompt_wrapping(task) -> tuple[str, str]:
    """The text the task puts before and after its filled template (the chat template's turns)."""
    marks = {f: _MARK for f in task.text_fields}
    body = task.template.format(**marks)
    full = task.render(marks)
    if full.count(body) != 1:
        raise PolytaskError(f"task '{task.name}': cannot locate the prompt template inside the chat template")
    prefix, suffix = full.split(body)
    return prefix, suffix


def task_spec(pred: Predictor, name: str, base: dict) -> dict:
    """The contents of :data:`TASK_FILE` for task ``name``."""
    task = pred.tasks[name]
    # encoding one stand-in example binds the task to the run's tokenizer and prompt budget
    task.encode([Example({f: "x" for f in task.text_fields}, "export")], pred.tokenizer, pred.cfg.model.max_length)
    prefix, suffix = prompt_wrapping(task)
    cfg = task.cfg
    return {
        "task": name, "type": task.type_name, "prompt": task.template, "fields": list(task.text_fields),
        "system": cfg.system, "chat_template": bool(prefix or suffix),
        "prompt_prefix": prefix, "prompt_suffix": suffix, "add_special_tokens": not (prefix or suffix),
        "max_prompt_tokens": task.prompt_budget(),
        "labels": list(task.labels) if task.classify else None,
        "generation": {"max_new_tokens": cfg.max_new_tokens, "num_beams": cfg.num_beams, "do_sample": False},
        "answer": "the new tokens up to EOS, decoded with skip_special_tokens and stripped"
                  + ("; polytask then parses it against the labels (docs/llm.md)" if task.classify else ""),
        "base": base, "adapter": None if pred.model.arch.peft == "none" else "adapter_model.safetensors",
    }


def generation_config(pred: Predictor, name: str):
    """The decoding settings of :meth:`CausalLM.generate` for task ``name``."""
    from transformers import GenerationConfig

    tok, cfg = pred.tokenizer, pred.tasks[name].cfg
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    return GenerationConfig(max_new_tokens=cfg.max_new_tokens, num_beams=cfg.num_beams, do_sample=False,
                            eos_token_id=tok.eos_token_id, pad_token_id=pad, use_cache=True)


__all__ = ["TASK_FILE", "export_causal_lm"]
