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


# Attribute paths of a norm the model applies to the output of its last block, tried in order.
# Only modules that are applied exactly once, after the block list, belong here (BERT-style
# post-LN encoders have none; DeBERTa's ``encoder.LayerNorm`` normalises relative embeddings and
# must NOT be listed).
FINAL_NORM_PATHS = (
    "final_norm",  # ModernBERT
    "norm",  # Llama, Mistral, Qwen, SmolLM (inner model)
    "model.norm",  # *ForCausalLM wrappers
    "ln_f",  # GPT-2
    "transformer.ln_f",
    "encoder.final_layer_norm",  # T5 encoder
    "encoder.layer_norm",  # BART / mBART encoder
)


def _get_path(model: nn.Module, path: str):
    node = model
    for attr in path.split("."):
        node = getattr(node, attr, None)
        if node is None:
            return None
    return node


def final_norm(model: nn.Module) -> nn.Module | None:
    """The norm applied after the last transformer block, or None (BERT, RoBERTa, DistilBERT...).

    Architectures that run their own copies of the top blocks (soft sharing, cross-stitch) stop
    the backbone before its top blocks, so they must apply this themselves after their copies.
    """
    for path in FINAL_NORM_PATHS:
        node = _get_path(model, path)
        if isinstance(node, nn.Module) and not isinstance(node, nn.ModuleList):
            return node
    return None


# Names (last attribute) of the attention query/value projections per family, for LoRA's
# ``target_modules`` where PEFT has no default for the model type. Checked in this order.
ATTENTION_PROJECTIONS = (
    ("query", "value"),  # BERT, RoBERTa, ELECTRA, XLM-R
    ("query_proj", "value_proj"),  # DeBERTa-v2/v3
    ("q_lin", "v_lin"),  # DistilBERT
    ("q_proj", "v_proj"),  # Llama, Mistral, Qwen, BART
    ("Wqkv",),  # ModernBERT (fused)
    ("c_attn",),  # GPT-2 (fused)
    ("q", "v"),  # MPNet, T5
)


def attention_projections(model: nn.Module) -> list[str]:
    """Module names to adapt with LoRA: the first family convention found inside the blocks."""
    names = {name.rsplit(".", 1)[-1] for b in transformer_blocks(model) for name, m in b.named_modules()
             if name and (isinstance(m, nn.Linear) or type(m).__name__ == "Conv1D")}
    for group in ATTENTION_PROJECTIONS:
        if all(g in names for g in group):
            return list(group)
    raise ValueError(f"cannot find attention projections in {type(model).__name__}; "
                     "set architecture.args.target_modules")
