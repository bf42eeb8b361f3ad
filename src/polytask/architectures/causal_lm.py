"""A decoder LLM shared by text-to-text tasks: full fine-tuning, one shared LoRA, or per-task LoRA.

``architecture: {name: causal_lm, args: {peft: task_lora, lora_r: 8}}`` with
``model.kind: causal_lm`` and tasks of type ``generation`` (see docs/llm.md).

- ``peft: none``: every weight of the language model trains (full fine-tuning), shared by all
  tasks; the run saves every weight.
- ``peft: shared_lora``: the language model is frozen; one LoRA adapter (Hu et al., "LoRA:
  Low-Rank Adaptation of Large Language Models", ICLR 2022), injected with PEFT, is shared by
  all tasks.
- ``peft: task_lora``: frozen language model, one LoRA adapter per task (as in per-task
  adapters, Houlsby et al., ICML 2019, and mixtures of task LoRAs, e.g. Huang et al.,
  "LoraHub", 2023). A batch of one task runs with that task's adapter only. A mixed-task
  batch carries ``task_ids`` ((B,) per example, or (R, W) per token for packed rows) and
  every token is routed to its own task's adapter: all adapters are active and each adapter's
  input is multiplied by a 0/1 mask of its task's tokens (the LoRA update ``B A x`` is linear,
  so a masked token receives exactly no update from other tasks' adapters).

LoRA runs save only the adapters (and a fingerprint of the base weights): the base model is
loaded again from ``model.backbone`` when the run is loaded, and a different base is refused.
:func:`polytask.export.merge_lora` writes a plain Hugging Face model with one adapter merged into its weights.

``forward`` returns :class:`Features` whose ``hidden`` are token logits: of every position, or
-- when the batch holds next-token ``labels`` (R, W) -- only of the scored positions
(``labels != -100``), flattened to (N, V), so the vocabulary projection is not computed (nor
kept for backward) where no loss is taken. ``shared`` is the last hidden state (R, W, H).
Packed rows (``segment_ids``, ``position_ids`` in the batch) get a block-diagonal causal mask.
``generate`` decodes with Hugging Face ``generate`` (KV cache; greedy or beam search).
"""

from __future__ import annotations

import warnings

import torch
from torch import Tensor, nn

from polytask.architectures.base import Architecture, Features
from polytask.errors import CheckpointError, ConfigError
from polytask.packing import block_causal_mask

PEFT_MODES = ("none", "shared_lora", "task_lora")
SHARED = "shared"


class _Router:
    """The current token -> task routing (a plain object shared by every gate, not a module)."""

    ids: Tensor | None = None


class TaskGate(nn.Module):
    """Replaces a task adapter's LoRA dropout: keeps only the tokens routed to that task."""

    def __init__(self, dropout: nn.Module, router: _Router, index: int):
        super().__init__()
        self.dropout = dropout
        self.index = index
        self.__dict__["router"] = router

    def forward(self, x: Tensor) -> Tensor:
        ids = self.router.ids
        if ids is not None:
            keep = (ids == self.index).to(x.dtype)
            keep = keep.reshape(keep.shape + (1,) * (x.dim() - keep.dim()))  # (B,)|(B,T) -> broadcast
            x = x * keep
        return self.dropout(x)


class CausalLM(Architecture):
    def __init__(self, backbone: nn.Module, tasks: list[str], peft: str = "none", lora_r: int = 8,
                 lora_alpha: float = 16, lora_dropout: float = 0.0, target_modules: list[str] | None = None):
        super().__init__(backbone, tasks)
        if not hasattr(backbone, "generate") or backbone.get_output_embeddings() is None:
            raise ConfigError(f"architecture causal_lm needs a language model with an LM head "
                              f"(set model.kind: causal_lm), got {type(backbone).__name__}")
        if peft not in PEFT_MODES:
            raise ConfigError(f"architecture.args.peft: expected one of {', '.join(PEFT_MODES)}, got {peft!r}")
        if isinstance(lora_r, bool) or not isinstance(lora_r, int) or lora_r < 1:
            raise ConfigError(f"architecture.args.lora_r: expected a positive integer, got {lora_r!r}")
        self.peft = peft
        self.adapter_names = {"none": [], "shared_lora": [SHARED], "task_lora": list(self.tasks)}[peft]
        self.__dict__["router"] = _Router()
        self.__dict__["_active"] = None
        if self.adapter_names:
            self.lora_args = {"r": lora_r, "lora_alpha": lora_alpha, "lora_dropout": lora_dropout,
                              "target_modules": list(target_modules) if target_modules else default_targets(backbone)}
            self._inject()
            adapter = {id(p) for p in self.adapter_parameters()}
            for p in backbone.parameters():
                p.requires_grad_(id(p) in adapter)
            trainable = {n for n, p in self.named_parameters(remove_duplicate=False) if p.requires_grad}
            # every saved name of the base (tied weights appear under two names): not saved
            self._frozen = {k for k in self.state_dict() if k not in trainable}
            self.register_buffer("base_fingerprint", fingerprint(
                p for n, p in self.named_parameters() if not p.requires_grad))
            self.register_state_dict_post_hook(_drop_frozen)
            self.register_load_state_dict_pre_hook(_keep_frozen)

    @classmethod
    def saves_backbone(cls, args: dict) -> bool:
        """LoRA runs save adapters only: the base is loaded again from ``model.backbone``."""
        return args.get("peft", "none") == "none"

    # -- LoRA through PEFT -------------------------------------------------------------------
    def _inject(self) -> None:
        from peft import LoraConfig, inject_adapter_in_model

        with warnings.catch_warnings():  # several adapters in one model is the point here
            warnings.filterwarnings("ignore", message=".*Already found a `peft_config` attribute.*")
            for name in self.adapter_names:
                inject_adapter_in_model(LoraConfig(bias="none", **self.lora_args), self.backbone, adapter_name=name)
        if self.peft == "task_lora":
            for layer in self._tuner_layers():
                for i, t in enumerate(self.tasks):
                    layer.lora_dropout[t] = TaskGate(layer.lora_dropout[t], self.router, i)

    def _tuner_layers(self) -> list[nn.Module]:
        from peft.tuners.tuners_utils import BaseTunerLayer

        return [m for m in self.backbone.modules() if isinstance(m, BaseTunerLayer)]

    def adapter_parameters(self, name: str | None = None) -> list[nn.Parameter]:
        """Parameters of one adapter (``name``), or of all adapters."""
        names = self.adapter_names if name is None else [name]
        out: list[nn.Parameter] = []
        for layer in self._tuner_layers():
            for store in ("lora_A", "lora_B"):
                modules = getattr(layer, store)
                for n in names:
                    if n in modules:
                        out += list(modules[n].parameters())
        return out

    def _activate(self, task: str | None, ids: Tensor | None) -> None:
        """Route tokens to adapters: one task's adapter, or every adapter with per-token gates."""
        if self.peft != "task_lora":
            return
        if ids is None:
            self.task_index(task)
        want = tuple(self.tasks) if ids is not None else (task,)
        self.router.ids = ids
        if self.__dict__["_active"] != want:
            for layer in self._tuner_layers():
                layer.set_adapter(list(want))
            for p in self.adapter_parameters():  # PEFT freezes inactive adapters; all keep training
                p.requires_grad_(True)
            self.__dict__["_active"] = want

    # -- forward -----------------------------------------------------------------------------
    def model_inputs(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        inputs = {"input_ids": batch["input_ids"]}
        if "segment_ids" in batch:  # packed rows: block-diagonal causal attention
            inputs["attention_mask"] = block_causal_mask(batch["segment_ids"], self.backbone.dtype)
        else:
            inputs["attention_mask"] = batch["attention_mask"]
        if "position_ids" in batch:
            inputs["position_ids"] = batch["position_ids"]
        return inputs

    def forward(self, batch: dict[str, Tensor], task: str | None) -> Features:
        ids = batch.get("task_ids")
        if ids is None and task is None:
            raise ValueError("give a task, or task_ids in the batch for a mixed-task batch")
        self._activate(task, ids)
        try:
            hidden = self.backbone.get_decoder()(**self.model_inputs(batch), use_cache=False).last_hidden_state
        finally:
            self.router.ids = None
        labels = batch.get("labels")
        if labels is not None and labels.shape == batch["input_ids"].shape:
            logits = self.lm_logits(hidden[labels != -100])  # (N, V): scored positions only
        else:
            logits = self.lm_logits(hidden)
        return Features(hidden=logits, mask=batch["attention_mask"], shared=hidden)

    def lm_logits(self, hidden: Tensor) -> Tensor:
        logits = self.backbone.get_output_embeddings()(hidden)
        cap = getattr(self.backbone.config, "final_logit_softcapping", None)  # Gemma-2
        if cap:
            logits = torch.tanh(logits / cap) * cap
        return logits

    @torch.no_grad()
    def generate(self, batch: dict[str, Tensor], task: str, max_new_tokens: int = 32, num_beams: int = 1,
                 eos_token_id: int | None = None, pad_token_id: int | None = None) -> Tensor:
        """New token ids (B, <= max_new_tokens) after each left-padded prompt; stops at EOS."""
        from transformers import GenerationConfig

        self._activate(task, batch.get("task_ids"))
        config = GenerationConfig(max_new_tokens=max_new_tokens, num_beams=num_beams, do_sample=False,
                                  eos_token_id=eos_token_id, pad_token_id=pad_token_id, use_cache=True)
        try:
            out = self.backbone.generate(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                                         generation_config=config)
        finally:
            self.router.ids = None
        return out[:, batch["input_ids"].shape[1]:]

    # -- ownership ---------------------------------------------------------------------------
    def shared_parameters(self) -> list[nn.Parameter]:
        if self.peft == "task_lora":
            return []
        return [p for p in self.backbone.parameters() if p.requires_grad]

    def shared_adapter_parameters(self) -> list[nn.Parameter]:
        # per-task adapters receive gradients from their own task only: their task gradients
        # are disjoint, so always orthogonal, and balancing in that space is meaningless
        if self.peft != "shared_lora":
            return super().shared_adapter_parameters()
        return self.adapter_parameters()

    def task_parameters(self, task: str) -> list[nn.Parameter]:
        self.task_index(task)
        return self.adapter_parameters(task) if self.peft == "task_lora" else []


def default_targets(backbone: nn.Module) -> list[str]:
    """PEFT's default LoRA targets for the model type (q_proj, v_proj for Llama), else the
    attention projections found by :func:`polytask.backbones.layout.attention_projections`."""
    from peft.utils import TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING as DEFAULTS

    from polytask.backbones.layout import attention_projections

    found = DEFAULTS.get(getattr(backbone.config, "model_type", None))
    if found:
        return list(found)
    try:
        return attention_projections(backbone)
    except ValueError as exc:
        raise ConfigError(f"architecture.args.target_modules: {exc}") from exc


def fingerprint(params) -> Tensor:
    """Sum and sum of squares of the frozen base weights (float64): detects a different base."""
    total = torch.zeros(2, dtype=torch.float64)
    for p in params:
        x = p.detach().double()
        total += torch.stack([x.sum(), (x * x).sum()])
    return total


def _drop_frozen(module: CausalLM, state_dict: dict, prefix: str, local_metadata) -> None:
    """state_dict hook: LoRA runs save adapters only (the base comes back from its source)."""
    for name in module._frozen:
        state_dict.pop(prefix + name, None)


def _keep_frozen(module: CausalLM, state_dict: dict, prefix: str, local_metadata, strict, missing_keys,
                 unexpected_keys, error_msgs) -> None:
    """load_state_dict pre-hook: check the base fingerprint, keep the loaded base weights."""
    saved = state_dict.get(prefix + "base_fingerprint")
    if saved is not None:
        now = module.base_fingerprint
        if not torch.allclose(saved.to(now.dtype), now, rtol=1e-9, atol=1e-6):
            raise CheckpointError("these LoRA weights were trained on a different base model than the one "
                                  "loaded from model.backbone (base weight fingerprints differ)")
    tensors = dict(module.named_parameters(remove_duplicate=False))
    tensors.update(module.named_buffers(remove_duplicate=False))
    for name in module._frozen:
        if prefix + name not in state_dict:
            state_dict[prefix + name] = tensors[name]


__all__ = ["CausalLM"]
