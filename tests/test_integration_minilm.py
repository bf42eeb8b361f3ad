"""The real all-MiniLM-L6-v2 on two real tasks from ../shared/data (a few minutes on 2 cores)."""

import json

import pytest

from polytask.config import load_config
from polytask.train import train

from conftest import REPO, SHARED_DATA

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not (SHARED_DATA / "sst2").exists(), reason=f"real data not found at {SHARED_DATA}"),
]


def test_minilm_learns_sst2_and_trec(tmp_path):
    cfg = load_config(REPO / "examples" / "sst2_trec.yaml", [
        f"data_dir={SHARED_DATA}", f"output_dir={tmp_path}",
        "train.max_steps=200", "train.eval_every=100",
        "tasks.sst2.data.test=null", "tasks.trec.data.test=null",  # dev is enough here
    ])
    run_dir = train(cfg, progress=False)
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["dev"]["sst2"]["accuracy"] >= 0.75  # chance is 0.5
    assert summary["dev"]["trec"]["accuracy"] >= 0.6  # chance (majority) is about 0.23
