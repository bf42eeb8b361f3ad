"""Per-task towers over the top k transformer blocks: the machinery soft sharing and cross-stitch share.

Any Hugging Face encoder calls its blocks in its own way: BERT passes a 4-d additive attention
mask, DeBERTa relative position embeddings, rotary models ``position_embeddings``, and some
(ModernBERT) pass each block different arguments (global or sliding-window attention). Rather
than re-implementing each convention, the backbone runs as usual with :class:`TowerEntry`
stand-ins in its block list where the tower blocks were. Each stand-in records the exact
positional and keyword arguments the model passed to it and hands its input back unchanged
(in the block's own output structure, learned once from the template block); the last one
raises :class:`Handoff` with all recorded calls, which stops the backbone. The towers then
call their copies of block j with the arguments of call j, the hidden state replaced, so the
copies run exactly as the original blocks did. A final norm that some families apply after
the last block (found by :func:`polytask.backbones.layout.final_norm`) is applied after the
towers. (A model that computes something between blocks from the hidden state, such as
DeBERTa-v2-xlarge's convolution after block 0, must keep that block shared: ``layers < n``.)

The pretrained top blocks are moved into the towers (one deep copy per task, identical at
initialisation); the backbone keeps no unused copy of them, so the weights file holds each
tensor once. The shared part is the embeddings, the bottom ``n - k`` blocks and the final norm.
"""

from __future__ import annotations

import copy
from typing import Any, Callable

import torch
from torch import Tensor, nn

from polytask.architectures.base import Architecture
from polytask.backbones.layout import final_norm, transformer_blocks
from polytask.errors import ConfigError


class Handoff(Exception):
    """Raised by the last :class:`TowerEntry` with the (args, kwargs) of every tower block's call."""

    def __init__(self, calls: list[tuple[tuple, dict]]):
        super().__init__("tower hand-off")
        self.calls = calls


class TowerEntry(nn.Module):
    """Stands where a tower block was in the backbone's block list; has no parameters.

    Attribute reads it cannot answer (e.g. ``attention_type`` that some models read from each
    block before calling it) fall back to a template block, a tower copy held unregistered.
    """

    def __init__(self, template: nn.Module, calls: list, last: bool):
        super().__init__()
        self.__dict__["_template"] = template  # not a submodule: not saved twice
        self.__dict__["_calls"] = calls  # shared by the entries of one architecture
        self.__dict__["_last"] = last
        self.__dict__["_structure"] = None  # the block's output: None (unknown), "tensor" or a tuple length

    def forward(self, *args: Any, **kwargs: Any):
        calls = self.__dict__["_calls"]
        calls.append((args, kwargs))
        if self.__dict__["_last"]:
            raise Handoff(list(calls))
        hidden = args[0] if args else kwargs["hidden_states"]
        structure = self.__dict__["_structure"]
        if structure is None:  # learn once what the model expects a block to return
            with torch.no_grad():
                out = self.__dict__["_template"](*args, **kwargs)
            structure = "tensor" if isinstance(out, Tensor) else len(out)
            self.__dict__["_structure"] = structure
        return hidden if structure == "tensor" else (hidden,) + (None,) * (structure - 1)

    def __getattr__(self, name: str):
        try:
            return super().__getattr__(name)
        except AttributeError:
            template = self.__dict__.get("_template")
            if template is None or name.startswith("__"):
                raise
            return getattr(template, name)


def resolve_layers(layers: int | str, n: int, arch: str) -> int:
    """``layers`` as a block count: an int in [1, n], or ``"all"``."""
    if layers == "all":
        return n
    if isinstance(layers, bool) or not isinstance(layers, int) or not 1 <= layers <= n:
        raise ConfigError(f"architecture.args.layers: {arch} needs an integer in [1, {n}] or 'all', got {layers!r}")
    return layers


class TowerArchitecture(Architecture):
    """Base class: per-task copies of the top ``layers`` blocks, called with the backbone's own arguments.

    Args:
        layers: how many of the top transformer blocks each task gets its own copy of
            (``"all"``: every block; only the embeddings stay shared).
    """

    def __init__(self, backbone: nn.Module, tasks: list[str], layers: int | str = 2):
        super().__init__(backbone, tasks)
        blocks = transformer_blocks(backbone)
        n = len(blocks)
        k = resolve_layers(layers, n, type(self).__name__)
        self.layers = layers
        self.n_shared_blocks, self.n_tower_blocks = n - k, k
        self.towers = nn.ModuleDict(
            {t: nn.ModuleList([copy.deepcopy(blocks[i]) for i in range(n - k, n)]) for t in self.tasks}
        )
        first = self.towers[self.tasks[0]]
        self.__dict__["_calls"] = calls = []
        for j, i in enumerate(range(n - k, n)):
            blocks[i] = TowerEntry(first[j], calls, last=(i == n - 1))

    # -- running ---------------------------------------------------------------------------
    def enter(self, batch: dict[str, Tensor]) -> tuple[Tensor, Callable[[int, nn.Module, Tensor], Tensor]]:
        """Run the shared bottom; return its output (B, T, H) and ``call(j, block, hidden) -> hidden``,
        which runs ``block`` as the model ran its j-th tower block."""
        calls = self.__dict__["_calls"]
        calls.clear()
        try:
            self.backbone(**self.backbone_inputs(batch))
        except Handoff as h:
            recorded = h.calls
        else:
            raise RuntimeError(f"{type(self.backbone).__name__} finished without reaching its last tower block")
        finally:
            calls.clear()
        args, kwargs = recorded[0]
        hidden = args[0] if args else kwargs["hidden_states"]

        def call(j: int, block: nn.Module, h: Tensor) -> Tensor:
            args, kwargs = recorded[j]
            out = block(h, *args[1:], **kwargs) if args else block(**{**kwargs, "hidden_states": h})
            return out if isinstance(out, Tensor) else out[0]

        return hidden, call

    def finish(self, hidden: Tensor) -> Tensor:
        """Apply the family's final norm (if any) to a tower's output."""
        norm = final_norm(self.backbone)
        return hidden if norm is None else norm(hidden)

    # -- ownership -------------------------------------------------------------------------
    def task_parameters(self, task: str) -> list[nn.Parameter]:
        return [p for p in self.towers[task].parameters() if p.requires_grad]

    def balance_parameters(self, k: int) -> list[nn.Parameter]:
        """Shared parameters of the top ``k`` SHARED blocks (the ones under the towers)."""
        blocks = transformer_blocks(self.backbone)[: self.n_shared_blocks]
        shared = {id(p) for p in self.shared_parameters()}
        chosen = list(blocks)[-k:] if blocks else []
        return self._nonempty([p for b in chosen for p in b.parameters() if id(p) in shared], k)
