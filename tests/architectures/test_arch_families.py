"""Every architecture on other encoder families (tiny random configs): the architectures rely on
layout.py and on the model's own block-calling convention, not on BERT. Where an architecture
starts as the pretrained encoder (tower copies, zero-initialised experts and adapters), its
output at initialisation equals the unmodified encoder's."""

from __future__ import annotations

import pytest
import torch
import transformers as tf

from polytask.architectures import build_architecture

FAMILIES = {
    "distilbert": lambda: tf.DistilBertModel(tf.DistilBertConfig(vocab_size=100, dim=32, n_layers=2, n_heads=2,
                                                                 hidden_dim=48)),
    "roberta": lambda: tf.RobertaModel(tf.RobertaConfig(vocab_size=100, hidden_size=32, num_hidden_layers=2,
                                                        num_attention_heads=2, intermediate_size=48, pad_token_id=1)),
    "deberta-v2": lambda: tf.DebertaV2Model(tf.DebertaV2Config(
        vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=48,
        relative_attention=True, position_biased_input=False, pos_att_type=["p2c", "c2p"],
        max_relative_positions=16, norm_rel_ebd="layer_norm")),
    "mpnet": lambda: tf.MPNetModel(tf.MPNetConfig(vocab_size=100, hidden_size=32, num_hidden_layers=2,
                                                  num_attention_heads=2, intermediate_size=48)),
    # final norm after the blocks, and global / sliding-window attention alternating per block
    "modernbert": lambda: tf.ModernBertModel(tf.ModernBertConfig(
        vocab_size=100, hidden_size=32, num_hidden_layers=3, num_attention_heads=2, intermediate_size=48,
        global_attn_every_n_layers=2, local_attention=4, pad_token_id=0, bos_token_id=1, eos_token_id=2,
        cls_token_id=1, sep_token_id=2)),
}

SETTINGS = [
    ("soft", {"layers": 2}), ("cross_stitch", {"layers": "all"}), ("mtan", {"bottleneck": 8}),
    ("mmoe", {"n_experts": 2}), ("ple", {"levels": 2}), ("adapters", {"kind": "lora", "r": 2}),
    ("adapters", {"kind": "bottleneck", "bottleneck_size": 4}),
]


def make(family):
    torch.manual_seed(0)
    return FAMILIES[family]().eval()


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_architectures_on_family(family):
    ids = torch.randint(3, 100, (3, 9))
    mask = torch.ones(3, 9, dtype=torch.long)
    mask[1, 6:] = 0
    batch = {"input_ids": ids, "attention_mask": mask}
    with torch.no_grad():
        ref = make(family)(**batch).last_hidden_state
    for name, args in SETTINGS:
        arch = build_architecture(name, make(family), ["a", "b"], args).eval()
        with torch.no_grad():
            hidden = arch(batch, "b").hidden
        assert hidden.shape == ref.shape, (name, args)
        if name != "mtan":
            assert torch.allclose(hidden, ref, atol=1e-6), (name, args)
        arch.train()
        arch(batch, "a").hidden.pow(2).mean().backward()
        assert all(p.grad is not None for p in arch.task_parameters("a")), (name, args)
