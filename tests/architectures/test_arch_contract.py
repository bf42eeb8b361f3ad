"""The contract every registered architecture keeps (see polytask/architectures/base.py):
deterministic rebuild from (backbone config, tasks, args) with strict weight loading, an exact
partition of the trainable parameters into shared and per-task, and YAML selection."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_model, save_model
from transformers import AutoModel

from polytask.architectures import REGISTRY, build_architecture
from polytask.config import from_dict
from polytask.errors import ConfigError

from .helpers import SETTINGS, bert_config, make_batch, random_bert

TASKS = ["a", "b", "c"]


# Registered architectures that do not take an encoder backbone, and where they are tested.
ELSEWHERE = {"causal_lm": "decoder LLMs with generation tasks: tests/llm/"}


def test_every_registered_encoder_architecture_is_exercised():
    assert {name for name, _ in SETTINGS.values()} == set(REGISTRY) - set(ELSEWHERE)


@pytest.mark.parametrize("setting", sorted(SETTINGS))
def test_rebuild_from_config_loads_strictly_and_reproduces(setting, tmp_path):
    name, args = SETTINGS[setting]
    arch = build_architecture(name, random_bert(0), TASKS, args)
    with torch.no_grad():  # move every parameter away from its initial value
        for p in arch.parameters():
            p.add_(0.01 * torch.randn_like(p))
    path = tmp_path / "w.safetensors"
    save_model(arch, str(path))
    torch.manual_seed(123)  # a different init: everything must come from the file
    again = build_architecture(name, AutoModel.from_config(bert_config()), TASKS, args)
    missing, unexpected = load_model(again, str(path), strict=True)
    assert not missing and not unexpected
    arch.eval(), again.eval()
    batch = make_batch()
    with torch.no_grad():
        for t in TASKS:
            assert torch.equal(arch(batch, t).hidden, again(batch, t).hidden), t


@pytest.mark.parametrize("setting", sorted(SETTINGS))
def test_shared_and_task_parameters_partition_the_trainable_ones(setting):
    name, args = SETTINGS[setting]
    arch = build_architecture(name, random_bert(0), TASKS, args)
    trainable = {id(p) for p in arch.parameters() if p.requires_grad}
    shared = [id(p) for p in arch.shared_parameters()]
    owned = [id(p) for t in TASKS for p in arch.task_parameters(t)]
    assert len(set(shared)) == len(shared) and len(set(owned)) == len(owned)
    assert not set(shared) & set(owned)
    assert set(shared) | set(owned) == trainable
    info = arch.describe()
    assert info["trainable"] == info["shared"] + sum(info[f"task:{t}"] for t in TASKS)
    assert info["total"] == sum(p.numel() for p in arch.parameters())
    if name != "hard":
        assert all(info[f"task:{t}"] > 0 for t in TASKS)


@pytest.mark.parametrize("setting", sorted(SETTINGS))
def test_features_and_representation_gradient(setting):
    """Features have the head's shapes and ``shared`` is in the graph (gradient weighting needs it)."""
    name, args = SETTINGS[setting]
    arch = build_architecture(name, random_bert(0), TASKS, args).train()
    batch = make_batch()
    f = arch(batch, "b")
    assert f.hidden.shape == (*batch["input_ids"].shape, 32) and torch.equal(f.mask, batch["attention_mask"])
    (g,) = torch.autograd.grad(f.hidden.pow(2).sum(), f.shared)
    assert g.shape == f.shared.shape and float(g.abs().sum()) > 0


def test_balance_parameters_are_shared_blocks_below_towers():
    arch = build_architecture("soft", random_bert(0), TASKS, {"layers": 1})
    params = arch.balance_parameters(1)
    below = {id(p) for p in arch.backbone.encoder.layer[1].parameters()}
    assert params and {id(p) for p in params} == below
    assert len(arch.balance_parameters(5)) == len(list(arch.backbone.encoder.layer[:2].parameters()))
    whole = build_architecture("cross_stitch", random_bert(0), TASKS, {"layers": "all"})
    with pytest.raises(ConfigError, match="grad_space"):
        whole.balance_parameters(1)
    mmoe = build_architecture("mmoe", random_bert(0), TASKS, {})
    assert {id(p) for p in mmoe.balance_parameters(1)} == {id(p) for p in mmoe.backbone.encoder.layer[2].parameters()}


def test_yaml_selects_architecture_and_arguments(tiny_backbone, tmp_path):
    from polytask.backbones.encoder import load_encoder
    from polytask.model import build_model
    from polytask.tasks import build_task

    from conftest import tiny_config

    raw = tiny_config(tiny_backbone, tmp_path)
    raw["architecture"] = {"name": "mmoe", "args": {"n_experts": 5}}
    cfg = from_dict(raw)
    tasks = {tc.name: build_task(tc) for tc in cfg.tasks if tc.type == "regression"}  # no label vocabulary
    backbone, _ = load_encoder(cfg.model.backbone)
    model = build_model(cfg, backbone, tasks)
    assert type(model.arch).__name__ == "MMoE" and len(model.arch.experts) == 5
    raw["architecture"] = {"name": "mmoe", "args": {"n_expert": 5}}
    with pytest.raises(ConfigError, match="n_experts"):
        build_model(from_dict(raw), backbone, tasks)
    raw["architecture"] = {"name": "moe"}
    with pytest.raises(ConfigError, match="mmoe"):
        build_model(from_dict(raw), backbone, tasks)
