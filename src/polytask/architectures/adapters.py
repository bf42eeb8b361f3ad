"""Per-task adapters on a shared, usually frozen, backbone: LoRA (through PEFT) or bottleneck adapters.

- LoRA: Hu, Shen, Wallis, Allen-Zhu, Li, Wang, Wang & Chen, "LoRA: Low-Rank Adaptation of Large
  Language Models", ICLR 2022. Each task gets its own low-rank update ``W + (alpha / r) B A`` of the
  attention projections, injected with the ``peft`` library (one PEFT adapter per task, named
  after the task; the adapter of the batch's task is activated with PEFT's ``set_adapter``).
- Bottleneck: Houlsby, Giurgiu, Jastrzebski, Morrone, de Laroussilhe, Gesmundo, Attariyan & Gelly,
  "Parameter-Efficient Transfer Learning for NLP", ICML 2019; placed once per block, after the
  block's output, as in Pfeiffer, Kamath, Rueckle, Cho & Gurevych, "AdapterFusion", EACL 2021:
  ``h <- h + W_up gelu(W_down h)``, inserted with a forward hook on every transformer block.

Both start as the identity (LoRA's B and the bottleneck's up-projection are zero), so training
starts from the pretrained encoder. With ``freeze_backbone: true`` (default) only the adapters
and the heads train; nothing is shared that trains, each task's parameters are a few per cent
of the encoder, and one task's adapter can be exported alone (:func:`polytask.export.export_adapter`). With
``freeze_backbone: false`` the backbone is trained as shared parameters too (hard sharing plus
per-task adapters).

Mixed-task batches: a batch may carry ``task_ids`` (B,), indices into the architecture's task
list, to route each example to its own task's adapter (``forward(batch, task=None)``).
Bottleneck adapters route inside the hook: each example's states get its task's adapter
output. PEFT's own per-example routing (``adapter_names=``) refuses training mode, so LoRA
routes by subsets instead: the examples of each task present run through the backbone with
that task's adapter active, and the outputs are put back in the batch's order (one backbone
call per task present). :func:`mixed_forward` also applies each example's head.

Arguments (``architecture: {name: adapters, args: {...}}``):
    kind: ``lora`` (default) or ``bottleneck``.
    freeze_backbone: freeze every backbone parameter (default true).
    r, alpha, dropout, target_modules: LoRA rank (8), scaling alpha (16), dropout on the LoRA
        input (0.0), and module names to adapt (default: PEFT's default for the model type,
        else the attention query/value projections found by ``layout.attention_projections``).
    bottleneck_size: inner width of each bottleneck adapter (default 64).

Use a larger learning rate than for full fine-tuning when the backbone is frozen (1e-3 .. 5e-4).
"""

from __future__ import annotations

import functools
import json
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from polytask.architectures.base import Architecture, Features
from polytask.backbones.layout import attention_projections, hidden_size, transformer_blocks
from polytask.errors import ConfigError

KINDS = ("lora", "bottleneck")


class Bottleneck(nn.Module):
    """``h -> W_up gelu(W_down h)`` (the residual is added by the caller); starts at zero output."""

    def __init__(self, hidden: int, size: int):
        super().__init__()
        self.down = nn.Linear(hidden, size)
        self.up = nn.Linear(size, hidden)
        nn.init.normal_(self.down.weight, std=0.02)
        nn.init.zeros_(self.down.bias)
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)

    def forward(self, h: Tensor) -> Tensor:
        return self.up(F.gelu(self.down(h)))


class Adapters(Architecture):
    def __init__(self, backbone, tasks: list[str], kind: str = "lora", freeze_backbone: bool = True,
                 r: int = 8, alpha: float = 16, dropout: float = 0.0, target_modules: list[str] | None = None,
                 bottleneck_size: int = 64):
        super().__init__(backbone, tasks)
        if kind not in KINDS:
            raise ConfigError(f"architecture.args.kind: expected one of {', '.join(KINDS)}, got {kind!r}")
        self.kind = kind
        self.freeze_backbone = bool(freeze_backbone)
        self.__dict__["_route"] = None  # task index or (B,) task ids while a forward runs
        if kind == "lora":
            if isinstance(r, bool) or not isinstance(r, int) or r < 1:
                raise ConfigError(f"architecture.args.r: expected a positive integer, got {r!r}")
            self.lora_args = {"r": r, "lora_alpha": alpha, "lora_dropout": dropout,
                              "target_modules": list(target_modules) if target_modules else default_lora_targets(backbone)}
            self._inject_lora()
            self.adapters = None
        else:
            if isinstance(bottleneck_size, bool) or not isinstance(bottleneck_size, int) or bottleneck_size < 1:
                raise ConfigError(f"architecture.args.bottleneck_size: expected a positive integer, got {bottleneck_size!r}")
            self.bottleneck_size = bottleneck_size
            blocks = transformer_blocks(backbone)
            H = hidden_size(backbone)
            self.adapters = nn.ModuleDict(
                {t: nn.ModuleList([Bottleneck(H, bottleneck_size) for _ in blocks]) for t in self.tasks}
            )
            for i, block in enumerate(blocks):
                block.register_forward_hook(functools.partial(self._after_block, i))
        adapter_ids = {id(p) for t in self.tasks for p in self._adapter_params(t)}
        for p in self.backbone.parameters():
            if id(p) not in adapter_ids:
                p.requires_grad_(not self.freeze_backbone)

    # -- LoRA through PEFT -------------------------------------------------------------------
    def lora_config(self):
        from peft import LoraConfig

        return LoraConfig(bias="none", **self.lora_args)

    def _inject_lora(self) -> None:
        from peft import inject_adapter_in_model

        with warnings.catch_warnings():  # several adapters in one model is the point here
            warnings.filterwarnings("ignore", message=".*Already found a `peft_config` attribute.*")
            for t in self.tasks:
                if inject_adapter_in_model(self.lora_config(), self.backbone, adapter_name=t) is not self.backbone:
                    raise RuntimeError("peft.inject_adapter_in_model did not adapt the model in place")

    def _tuner_layers(self) -> list[nn.Module]:
        from peft.tuners.tuners_utils import BaseTunerLayer

        return [m for m in self.backbone.modules() if isinstance(m, BaseTunerLayer)]

    def _use(self, task: str) -> None:
        """Activate ``task``'s LoRA adapter in every adapted layer.

        PEFT's ``set_adapter`` also marks the inactive adapters as not trainable; every adapter
        stays trainable here (each is trained on its own task's batches), so that is undone.
        """
        layers = self._tuner_layers()
        for layer in layers:
            layer.set_adapter(task)
        for t in self.tasks:
            for p in self._adapter_params(t, layers):
                p.requires_grad_(True)

    def _adapter_params(self, task: str, layers: list[nn.Module] | None = None) -> list[nn.Parameter]:
        if self.kind == "bottleneck":
            return list(self.adapters[task].parameters())
        out: list[nn.Parameter] = []
        for layer in self._tuner_layers() if layers is None else layers:
            for name in layer.adapter_layer_names:
                store = getattr(layer, name, None)
                if store is not None and task in store:
                    value = store[task]
                    out += list(value.parameters()) if isinstance(value, nn.Module) else [value]
        return out

    # -- bottleneck hook ---------------------------------------------------------------------
    def _after_block(self, i: int, module: nn.Module, args, output):
        route = self.__dict__["_route"]
        if route is None:  # the backbone was called outside this architecture: no adapter
            return None
        h = output if isinstance(output, Tensor) else output[0]
        if isinstance(route, int):
            h = h + self.adapters[self.tasks[route]][i](h)
        else:
            delta = torch.zeros_like(h)
            for t in route.unique().tolist():
                rows = (route == t).nonzero(as_tuple=True)[0]
                delta = delta.index_put((rows,), self.adapters[self.tasks[t]][i](h[rows]))
            h = h + delta
        return h if isinstance(output, Tensor) else (h, *output[1:])

    # -- forward -----------------------------------------------------------------------------
    def forward(self, batch: dict[str, Tensor], task: str | None) -> Features:
        ids = batch.get("task_ids")
        if ids is not None:
            ids = ids.reshape(-1).long()
            if ids.numel() != batch["input_ids"].shape[0] or ids.min() < 0 or ids.max() >= len(self.tasks):
                raise ValueError(f"task_ids must be (B,) indices into {self.tasks}")
        elif task is None:
            raise ValueError("give a task, or task_ids in the batch for a mixed-task batch")
        inputs = self.backbone_inputs(batch)
        if self.kind == "lora":
            hidden = self._lora_forward(inputs, task, ids)
        else:
            self.__dict__["_route"] = self.task_index(task) if ids is None else ids
            try:
                hidden = self.backbone(**inputs).last_hidden_state
            finally:
                self.__dict__["_route"] = None
        return Features(hidden=hidden, mask=batch["attention_mask"], shared=hidden)

    def _lora_forward(self, inputs: dict[str, Tensor], task: str | None, ids: Tensor | None) -> Tensor:
        if ids is None:
            self.task_index(task)
            self._use(task)
            return self.backbone(**inputs).last_hidden_state
        parts, order = [], []
        for t in ids.unique().tolist():  # one backbone call per task present, on its examples
            rows = (ids == t).nonzero(as_tuple=True)[0]
            self._use(self.tasks[t])
            parts.append(self.backbone(**{k: v[rows] for k, v in inputs.items()}).last_hidden_state)
            order.append(rows)
        return torch.cat(parts)[torch.argsort(torch.cat(order))]

    # -- ownership ---------------------------------------------------------------------------
    def shared_parameters(self) -> list[nn.Parameter]:
        adapter = {id(p) for t in self.tasks for p in self._adapter_params(t)}
        return [p for p in self.backbone.parameters() if p.requires_grad and id(p) not in adapter]

    def task_parameters(self, task: str) -> list[nn.Parameter]:
        return [p for p in self._adapter_params(task) if p.requires_grad]

    # -- export ------------------------------------------------------------------------------
    def save_task_adapter(self, task: str, out_dir: Path, base_name: str | None = None) -> list[str]:
        """Write ``task``'s adapter to ``out_dir``; returns the file names written.

        LoRA: PEFT's ``save_pretrained`` layout (``adapter_config.json`` and
        ``adapter_model.safetensors``), loadable with ``PeftModel.from_pretrained(base, out_dir)``.
        Bottleneck: ``adapter_model.safetensors`` (``layers.<i>.down/up``) and ``adapter_config.json``.
        """
        from safetensors.torch import save_file

        self.task_index(task)
        out_dir.mkdir(parents=True, exist_ok=True)
        if self.kind == "lora":
            from peft import get_peft_model_state_dict

            state = get_peft_model_state_dict(self.backbone, adapter_name=task)
            state = {f"base_model.model.{k}": v.detach().contiguous() for k, v in state.items()}
            config = self.lora_config()
            config.base_model_name_or_path = base_name
            config.inference_mode = True
            config.save_pretrained(str(out_dir))
        else:
            state = {f"layers.{k}": v.detach().contiguous() for k, v in self.adapters[task].state_dict().items()}
            config = {"adapter_type": "polytask_bottleneck", "bottleneck_size": self.bottleneck_size,
                      "hidden_size": hidden_size(self.backbone), "n_layers": len(self.adapters[task]),
                      "placement": "after the output of every transformer block: h + up(gelu(down(h)))",
                      "base_model_name_or_path": base_name}
            (out_dir / "adapter_config.json").write_text(json.dumps(config, indent=2))
        save_file(state, str(out_dir / "adapter_model.safetensors"), metadata={"format": "pt"})
        return ["adapter_config.json", "adapter_model.safetensors"]

    def plain_backbone_state(self) -> dict[str, Tensor]:
        """The backbone's own weights without any adapter, under the names of the unadapted model."""
        adapter = {id(p) for t in self.tasks for p in self._adapter_params(t)}
        return {name.replace(".base_layer.", "."): v.detach()
                for name, v in self.backbone.state_dict(keep_vars=True).items() if id(v) not in adapter}


def default_lora_targets(backbone: nn.Module) -> list[str]:
    """PEFT's default target modules for the model type, else the family's attention projections."""
    from peft.utils import TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING as DEFAULTS

    found = DEFAULTS.get(getattr(backbone.config, "model_type", None))
    if found:
        return list(found)
    try:
        return attention_projections(backbone)
    except ValueError as exc:
        raise ConfigError(f"architecture.args.target_modules: {exc}") from exc


def mixed_forward(model, batch: dict[str, Tensor]) -> dict[str, tuple[Tensor, Tensor]]:
    """Run a mixed-task batch (``batch["task_ids"]`` (B,)) through a model with adapters.

    Returns ``{task: (rows, head_output)}`` for each task present: ``rows`` are the batch
    positions of its examples, ``head_output`` that task's head applied to their features.
    """
    feats = model.arch(batch, None)
    ids = batch["task_ids"].reshape(-1).long()
    out = {}
    for t in ids.unique().tolist():
        rows = (ids == t).nonzero(as_tuple=True)[0]
        name = model.arch.tasks[t]
        out[name] = (rows, model.heads[name](feats.hidden[rows], feats.mask[rows]))
    return out


__all__ = ["Adapters", "Bottleneck", "mixed_forward"]
