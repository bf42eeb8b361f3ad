"""``train.compile: true``: the backbone through torch.compile trains as the eager one does."""

from __future__ import annotations

import json
import shutil

import pytest

from conftest import tiny_config
from polytask.config import from_dict
from polytask.errors import ConfigError

STEPS = 6


@pytest.fixture(scope="module")
def still_backbone(tmp_path_factory) -> str:
    """A 2-layer, 32-wide random BERT without dropout: eager and compiled runs draw no random
    numbers in the forward pass, so their trajectories differ only by float rounding."""
    import torch
    from transformers import AutoTokenizer, BertConfig, BertModel

    from polytask.backbones.encoder import resolve_backbone

    out = tmp_path_factory.mktemp("still-bert")
    tokenizer = AutoTokenizer.from_pretrained(resolve_backbone("minilm"))
    torch.manual_seed(0)
    config = BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=128, hidden_dropout_prob=0.0,
                        attention_probs_dropout_prob=0.0)
    BertModel(config).save_pretrained(out)
    tokenizer.save_pretrained(out)
    return str(out)


def losses(run) -> dict[int, dict[str, float]]:
    events = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return {e["step"]: e["loss"] for e in events if e["kind"] == "train"}


@pytest.mark.slow  # compiling takes minutes on a busy machine
@pytest.mark.skipif(not (shutil.which("g++") or shutil.which("clang++")),
                    reason="torch.compile's CPU code generator needs a C++ compiler (g++ or clang++)")
def test_compiled_backbone_trains_as_the_eager_one(still_backbone, tmp_path):
    from polytask.train import train

    runs = {}
    for compiled in (False, True):
        raw = tiny_config(still_backbone, tmp_path / str(compiled), max_steps=STEPS, eval_every=STEPS, log_every=1,
                          compile=compiled, num_threads=1)
        for task in raw["tasks"]:
            task["head_dropout"] = 0.0
        runs[compiled] = train(from_dict(raw), progress=False)
    eager, compiled = losses(runs[False]), losses(runs[True])
    assert sorted(eager) == sorted(compiled) == list(range(1, STEPS + 1))
    # Compiled kernels add up float32 products in another order (relative differences of about
    # 1e-6 per forward pass); over a few AdamW steps (lr 1e-3) the weights, and so the losses,
    # drift apart by far less than one step's change. 1e-3 relative covers that with room,
    # and a wrong graph (a missing layer, another model) would be off by whole units.
    for step in eager:
        for task, value in eager[step].items():
            assert compiled[step][task] == pytest.approx(value, rel=1e-3), (step, task)
    summaries = [json.loads((r / "summary.json").read_text()) for r in runs.values()]
    assert summaries[1]["dev_macro"] == pytest.approx(summaries[0]["dev_macro"], abs=0.05)


def test_compile_is_refused_where_it_is_not_supported(tiny_backbone, tmp_path):
    raw = tiny_config(tiny_backbone, tmp_path, compile=True)
    raw["model"]["kind"] = "vision"
    with pytest.raises(ConfigError, match=r"train\.compile: true is for encoder backbones trained unsharded "
                                          r"\(model\.kind: vision"):
        from_dict(raw)
    assert from_dict(tiny_config(tiny_backbone, tmp_path, compile=True)).train.compile is True
