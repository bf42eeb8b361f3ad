"""``model.gradient_checkpointing``: on when asked, and the same training trajectory as without it."""

from __future__ import annotations

import pytest

from conftest import tiny_config


def losses_of(run_dir) -> list[dict]:
    from polytask.run_folder import RunFolder

    return [e["loss"] for e in RunFolder(run_dir).events() if e["kind"] == "train"]


def test_load_backbone_turns_it_on(tiny_backbone):
    from polytask.backbones import load_backbone
    from polytask.config import ModelConfig

    on, _ = load_backbone(ModelConfig(backbone=tiny_backbone, gradient_checkpointing=True))
    off, _ = load_backbone(ModelConfig(backbone=tiny_backbone))
    assert on.is_gradient_checkpointing and not off.is_gradient_checkpointing


@pytest.mark.parametrize("weighting", ["equal", "upgrad"])  # upgrad: task gradients by autograd.grad
def test_same_trajectory_with_and_without(tiny_backbone, tmp_path, weighting):
    """Dropout is on (train mode): checkpointing replays the RNG, so losses match step for step."""
    import polytask
    from polytask.config import from_dict

    runs = []
    for flag in (False, True):
        raw = tiny_config(tiny_backbone, tmp_path / str(flag), max_steps=6, eval_every=6, log_every=1)
        raw["model"]["gradient_checkpointing"] = flag
        raw["weighting"] = {"name": weighting}
        runs.append(losses_of(polytask.train(from_dict(raw), progress=False)))
    assert len(runs[0]) == 6
    for a, b in zip(*runs):
        assert a.keys() == b.keys()
        for task in a:
            assert a[task] == pytest.approx(b[task], rel=1e-5, abs=1e-6)
