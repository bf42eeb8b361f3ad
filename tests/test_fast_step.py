"""A faster step: fused / foreach AdamW computes the per-tensor loop's update, and the end of a
run does not score the best weights on dev a second time."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
import torch
from transformers import AutoModel

from conftest import tiny_config
from polytask.config import from_dict
from polytask.predict import evaluate_run
from polytask.steps import adamw

STEPS, LR = 5, 1e-3


def trained_weights(backbone_dir: str, kernel: str) -> tuple[dict[str, torch.Tensor], torch.optim.AdamW]:
    """The tiny BERT and a head after STEPS AdamW steps through ``kernel``, every step with the
    same gradients for every kernel (drawn from a seeded generator, about the size of a real
    step's), so that only the optimizer's arithmetic differs."""
    torch.manual_seed(0)
    model = AutoModel.from_pretrained(backbone_dir)
    head = torch.nn.Linear(model.config.hidden_size, 3)
    t = SimpleNamespace(lr=LR, head_lr=3 * LR, weight_decay=0.01, weighting_lr=0.025)
    params = [(p, False) for p in model.parameters()] + [(p, True) for p in head.parameters()]
    opt = adamw(t, params, kernel=kernel)
    gen = torch.Generator().manual_seed(1)
    for _ in range(STEPS):
        for p, _ in params:
            p.grad = torch.randn(p.shape, generator=gen) * 1e-2
        opt.step()
        opt.zero_grad(set_to_none=True)
    weights = {**{f"m.{k}": v for k, v in model.state_dict().items()},
               **{f"h.{k}": v for k, v in head.state_dict().items()}}
    return weights, opt


@pytest.mark.parametrize("kernel", ["auto", "foreach"])
def test_fused_and_foreach_adamw_match_the_per_tensor_loop_after_5_steps(tiny_backbone, kernel):
    loop, _ = trained_weights(tiny_backbone, "loop")
    fast, opt = trained_weights(tiny_backbone, kernel)
    if kernel == "auto":
        assert opt.defaults["fused"] is True  # the CPU has torch's fused AdamW for float32 tensors
    else:
        assert opt.defaults["foreach"] is True and not opt.defaults["fused"]
    initial = AutoModel.from_pretrained(tiny_backbone).state_dict()
    eps = torch.finfo(torch.float32).eps
    moved = 0.0
    for name, want in loop.items():
        # Each step changes a weight by about lr (Adam's normalised update; the head's 3 lr) and
        # the kernels differ only in the order of float32 operations: a few ulps of the weight and
        # of the update per step, added up over STEPS steps.
        scale = want.abs().max().item() + 3 * LR
        assert torch.allclose(fast[name], want, rtol=0, atol=STEPS * 8 * eps * scale), name
        if name.startswith("m.") and name[2:] in initial and want.dtype.is_floating_point:
            moved = max(moved, (want - initial[name[2:]]).abs().max().item())
    assert moved > 0.5 * LR  # the weights really moved (by far more than the tolerance)


def test_the_best_step_is_scored_on_dev_once(tiny_backbone, tmp_path, monkeypatch):
    import polytask.train as train_module

    calls = []
    real = train_module.evaluate

    def counted(model, data, split, *args, **kwargs):
        calls.append(split)
        return real(model, data, split, *args, **kwargs)

    monkeypatch.setattr(train_module, "evaluate", counted)  # the real evaluation, counted
    raw = tiny_config(tiny_backbone, tmp_path, max_steps=20, eval_every=10, log_every=5)
    run = train_module.train(from_dict(raw), progress=False)
    evals = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    evals = [e for e in evals if e["kind"] == "eval"]
    assert len(evals) == 2 and calls == ["dev", "dev", "test"]  # no third dev evaluation at the end
    summary = json.loads((run / "summary.json").read_text())
    best = next(e for e in evals if e["step"] == summary["best_step"])
    assert summary["dev"] == best["metrics"] and summary["dev_macro"] == best["macro"]
    saved = json.loads((run / "predictions" / "dev.json").read_text())
    assert set(saved) == set(summary["dev"]) and all(len(v["predictions"]) == 40 for v in saved.values())
    again = evaluate_run(run, "dev")  # the best weights, loaded from the run folder and scored afresh
    assert again["metrics"] == summary["dev"]
