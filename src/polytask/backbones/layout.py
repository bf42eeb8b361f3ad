"""Where a model family keeps its transformer blocks: the one place for such quirks.

Architectures that act on "the top k layers" (soft sharing, last-layer gradients) ask here
instead of knowing that BERT has ``encoder.layer`` and Llama ``layers``.
"""

from __future__ import annotations

from torch import nn

# Attribute paths of the block list, tried in order.
BLOCK_PATHS = (
    "encoder.layer",  # BERT, RoBERTa, ELECTRA, DeBERTa, XLM-R
    "transformer.layer",  # DistilBERT
    "layers",  # Llama, Mistral, Qwen, SmolLM (inner model)
    "model.layers",  # *ForCausalLM wrappers
    "h",  # GPT-2
    "transformer.h",
    "encoder.layers",  # BART/T5-style encoders
    "block",
)


def transformer_blocks(model: nn.Module) -> nn.ModuleList:
    """The model's list of transformer blocks, bottom to top."""
    for path in BLOCK_PATHS:
        node = model
        for attr in path.split("."):
            node = getattr(node, attr, None)
            if node is None:
                break
        if isinstance(node, nn.ModuleList) and len(node) > 0:
            return node
    lists = [m for m in model.modules() if isinstance(m, nn.ModuleList)]
    if not lists:
        raise ValueError(f"cannot find transformer blocks in {type(model).__name__}")
    return max(lists, key=len)  # fall back to the longest module list


def hidden_size(model: nn.Module) -> int:
    cfg = model.config
    for key in ("hidden_size", "d_model", "dim", "n_embd"):
        if hasattr(cfg, key):
            return int(getattr(cfg, key))
    raise ValueError(f"cannot find the hidden size of {type(model).__name__}")


def accepts_token_type_ids(model: nn.Module) -> bool:
    return getattr(model.config, "type_vocab_size", 0) > 1
