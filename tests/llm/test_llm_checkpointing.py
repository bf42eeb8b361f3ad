"""``model.gradient_checkpointing`` on a decoder LLM with per-task LoRA (frozen base weights)."""

from __future__ import annotations

import pytest


def test_lora_trajectory_same_with_checkpointing(llm_config):
    import polytask
    from polytask.config import from_dict
    from polytask.run_folder import RunFolder

    runs = []
    for flag in (False, True):
        raw = llm_config(max_steps=4, eval_every=4, log_every=1)
        raw["name"] = f"ckpt-{flag}"
        raw["model"]["gradient_checkpointing"] = flag
        run = polytask.train(from_dict(raw), progress=False)
        runs.append([e["loss"] for e in RunFolder(run).events() if e["kind"] == "train"])
    assert len(runs[0]) == 4
    for a, b in zip(*runs):
        for task in a:
            assert a[task] == pytest.approx(b[task], rel=1e-5, abs=1e-6)
