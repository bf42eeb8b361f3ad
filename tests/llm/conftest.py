"""Fixtures for the LLM tests: a tiny random Llama-style model with a word-level tokenizer
trained here (no network, no package), small text-to-text data sets, and config builders."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

TOPICS = {
    "sport": ["goal", "match", "team", "coach", "league"],
    "tech": ["phone", "chip", "software", "robot", "internet"],
    "food": ["pasta", "bread", "cheese", "soup", "recipe"],
}
FILLER = ["the", "a", "new", "old", "big", "small", "today", "report", "said", "people", "city", "year"]
PROMPT_WORDS = ["summarize", "the", "article", "topic", "of", "answer", "with", "one", "word", "text", ":",
                "user", "assistant", "sport", "tech", "food", "positive", "negative", "..."]


def _words() -> list[str]:
    return sorted({*FILLER, *PROMPT_WORDS, *(w for ws in TOPICS.values() for w in ws)})


@pytest.fixture(scope="session")
def tiny_llm(tmp_path_factory) -> str:
    """A folder with a 2-layer, 32-wide random Llama and a word-level tokenizer with a chat template."""
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers, decoders
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    out = tmp_path_factory.mktemp("tiny-llm")
    specials = ["<pad>", "<unk>", "<bos>", "<eos>"]
    vocab = {w: i for i, w in enumerate(specials + _words())}
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    core.decoder = decoders.WordPiece(prefix="##")  # joins words with spaces
    tok = PreTrainedTokenizerFast(tokenizer_object=core, pad_token="<pad>", unk_token="<unk>",
                                  bos_token="<bos>", eos_token="<eos>")
    tok.chat_template = ("{% for m in messages %}{{ '<bos> ' + m['role'] + ' : ' + m['content'] + ' <eos> ' }}"
                         "{% endfor %}{% if add_generation_prompt %}{{ 'assistant : ' }}{% endif %}")
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tok), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                         num_key_value_heads=1, intermediate_size=64, max_position_embeddings=256,
                         bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                         pad_token_id=tok.pad_token_id, tie_word_embeddings=True,
                         initializer_range=0.2)  # frozen embeddings large enough for LoRA to move the logits
    LlamaForCausalLM(config).save_pretrained(out)
    tok.save_pretrained(out)
    return str(out)


def _article(rng: random.Random, topic: str) -> tuple[str, str]:
    words = [rng.choice(FILLER) for _ in range(rng.randint(6, 14))]
    keys = rng.sample(TOPICS[topic], 2)
    for k in keys:
        words.insert(rng.randrange(len(words) + 1), k)
    return " ".join(words), " ".join(keys)


@pytest.fixture(scope="session")
def llm_data(tmp_path_factory) -> Path:
    """Two small tasks: "summary" (target: the two topic words of the text, in order) and
    "topic" (the text's topic, as a label to generate)."""
    root = tmp_path_factory.mktemp("llm-data")
    rng = random.Random(7)
    for split, n in (("train", 96), ("dev", 24)):
        rows = []
        for _ in range(n):
            topic = rng.choice(sorted(TOPICS))
            text, keys = _article(rng, topic)
            rows.append({"text": text, "summary": keys, "topic": topic})
        (root / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return root


def llm_tasks(data: Path, packing: bool = False) -> list[dict]:
    files = {"train": str(data / "train.jsonl"), "dev": str(data / "dev.jsonl")}
    return [
        {"name": "summary", "type": "generation", "data": dict(files), "prompt": "summarize : {text}",
         "target": "summary", "max_new_tokens": 4, "packing": packing},
        {"name": "topic", "type": "generation", "data": dict(files), "prompt": "topic of : {text}",
         "target": "topic", "labels": sorted(TOPICS), "max_new_tokens": 3, "packing": packing},
    ]


@pytest.fixture
def llm_config(tiny_llm, llm_data, tmp_path):
    """``llm_config(peft=..., **train)`` -> a raw config dict for a quick run on the tiny LLM."""

    def make(peft: str = "task_lora", packing: bool = False, lora_r: int = 4, **train) -> dict:
        args = {"peft": peft} if peft == "none" else {"peft": peft, "lora_r": lora_r, "lora_alpha": 2 * lora_r,
                                                          "target_modules": ["q_proj", "v_proj", "o_proj", "up_proj", "down_proj"]}
        return {
            "name": f"llm-{peft}", "output_dir": str(tmp_path / "runs"), "seed": 5,
            "model": {"kind": "causal_lm", "backbone": tiny_llm, "max_length": 40},
            "architecture": {"name": "causal_lm", "args": args},
            "tasks": llm_tasks(llm_data, packing),
            "train": {"max_steps": 20, "batch_size": 8, "eval_batch_size": 16, "lr": 5e-3, "eval_every": 10,
                      "log_every": 5, "warmup_ratio": 0.0, "num_threads": 1, "mixed_precision": "no", **train},
        }

    return make
