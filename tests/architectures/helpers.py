"""Small random encoders and batches for the architecture unit tests (no disk, no tokenizer)."""

from __future__ import annotations

import torch
from transformers import BertConfig, BertModel

VOCAB = 120
CONFIG = dict(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=3, num_attention_heads=2,
              intermediate_size=48, max_position_embeddings=64)

# One entry per architecture setting exercised by the tests: (registry name, args).
SETTINGS = {
    "hard": ("hard", {}),
    "soft": ("soft", {"layers": 1, "strength": 0.1}),
    "cross_stitch": ("cross_stitch", {"layers": 1}),
    "mtan": ("mtan", {"bottleneck": 16}),
    "mmoe": ("mmoe", {"n_experts": 3, "expert_hidden": 24}),
    "ple": ("ple", {"levels": 2, "expert_hidden": 24}),
    "lora": ("adapters", {"kind": "lora", "r": 4}),
    "bottleneck": ("adapters", {"kind": "bottleneck", "bottleneck_size": 8}),
}


def bert_config() -> BertConfig:
    return BertConfig(**CONFIG)


def random_bert(seed: int = 0) -> BertModel:
    torch.manual_seed(seed)
    return BertModel(bert_config()).eval()


def make_batch(seed: int = 1, B: int = 4, T: int = 9) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, VOCAB, (B, T), generator=g)
    mask = torch.ones(B, T, dtype=torch.long)
    mask[1, 6:] = 0
    mask[3, 4:] = 0
    ids[mask == 0] = 0
    return {"input_ids": ids, "attention_mask": mask, "token_type_ids": torch.zeros_like(ids)}


def perturb(params, seed: int = 5, scale: float = 0.5) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in params:
            p.add_(scale * torch.randn(p.shape, generator=g))
