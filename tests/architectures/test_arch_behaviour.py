"""Each architecture's defining behaviour, on small random encoders (eval mode: no dropout)."""

from __future__ import annotations

import copy

import pytest
import torch

from polytask.architectures import build_architecture
from polytask.backbones.layout import transformer_blocks

from .helpers import make_batch, perturb, random_bert

TASKS = ["a", "b", "c"]


def build(name, args=None, seed=0, tasks=TASKS):
    return build_architecture(name, random_bert(seed), tasks, args).eval()


def reference_output(backbone, batch):
    with torch.no_grad():
        return backbone(**batch).last_hidden_state


# -- soft sharing -------------------------------------------------------------------------------


def test_soft_copies_start_as_the_pretrained_blocks():
    original = random_bert(0)
    ref = reference_output(original, make_batch())
    arch = build("soft", {"layers": 2})
    with torch.no_grad():
        for t in TASKS:
            assert torch.equal(arch(make_batch(), t).hidden, ref)
    assert arch.n_shared_blocks == 1 and len(arch.towers["a"]) == 2


def test_soft_penalty_zero_for_identical_copies_and_grows_with_distance():
    arch = build("soft", {"layers": 2, "strength": 0.5})
    assert float(arch.distance().detach()) == 0.0
    assert float(arch.regularizer().detach()) == 0.0
    params = list(arch.towers["b"].parameters())
    base = [p.detach().clone() for p in params]
    values = []
    for scale in (0.01, 0.02, 0.04):
        with torch.no_grad():
            for p, b in zip(params, base):
                p.copy_(b + scale)  # shift every parameter of b's copy by `scale`
        values.append(float(arch.distance().detach()))
    n = sum(p.numel() for p in params)
    # b differs from a and from c by `scale` everywhere: 2 pairs x n x scale^2
    assert values == pytest.approx([2 * n * s ** 2 for s in (0.01, 0.02, 0.04)], rel=1e-3)
    assert values[0] < values[1] < values[2]
    assert float(arch.regularizer().detach()) == pytest.approx(0.5 * values[2])


def test_soft_penalty_gradient_pulls_copies_together():
    arch = build("soft", {"layers": 1, "strength": 1.0}, tasks=["a", "b"])
    pa, pb = next(arch.towers["a"].parameters()), next(arch.towers["b"].parameters())
    with torch.no_grad():
        pb.add_(0.1)
    arch.regularizer().backward()
    assert torch.allclose(pa.grad, 2 * (pa - pb).detach())  # d/da ||a - b||^2
    assert torch.allclose(pb.grad, -pa.grad)


def test_soft_strength_zero_has_no_regularizer_and_bad_args_are_config_errors():
    from polytask.errors import ConfigError

    assert build("soft", {"strength": 0.0}).regularizer() is None
    with pytest.raises(ConfigError, match="layers"):
        build("soft", {"layers": 7})
    with pytest.raises(ConfigError, match="strength"):
        build("soft", {"strength": -1})
    with pytest.raises(ConfigError, match="accepts"):
        build("soft", {"lambda": 1})


def test_towers_whole_encoder_keeps_only_embeddings_shared():
    arch = build("soft", {"layers": "all"})
    assert arch.n_shared_blocks == 0
    shared = {id(p) for p in arch.shared_parameters()}
    embed = {id(p) for p in arch.backbone.embeddings.parameters()}
    assert embed <= shared
    assert not any(p.numel() for b in transformer_blocks(arch.backbone) for p in b.parameters())
    ref = reference_output(random_bert(0), make_batch())
    with torch.no_grad():
        assert torch.equal(arch(make_batch(), "b").hidden, ref)


# -- cross-stitch -------------------------------------------------------------------------------


def tower_alone(original, arch, task, batch):
    """Reference: the original encoder with its top blocks replaced by ``task``'s tower blocks."""
    model = copy.deepcopy(original)
    blocks = transformer_blocks(model)
    k = arch.n_tower_blocks
    for j, block in enumerate(arch.towers[task]):
        blocks[len(blocks) - k + j].load_state_dict(block.state_dict())
    return reference_output(model, batch)


@pytest.mark.parametrize("per_channel", [False, True])
def test_cross_stitch_identity_reproduces_independent_towers(per_channel):
    original = random_bert(0)
    batch = make_batch()
    arch = build("cross_stitch", {"layers": 2, "per_channel": per_channel})
    A = arch.mixing()
    eye = torch.eye(3)
    expected = eye.expand(2, 3, 3) if not per_channel else eye[None, :, :, None].expand(2, 3, 3, 32)
    assert torch.equal(A, expected)
    with torch.no_grad():  # identical towers at start: every task sees the pretrained encoder
        for t in TASKS:
            assert torch.equal(arch(batch, t).hidden, reference_output(original, batch))
    for i, t in enumerate(TASKS):  # make the towers different
        perturb(arch.towers[t].parameters(), seed=10 + i, scale=0.05)
    with torch.no_grad():
        outs = {t: arch(batch, t).hidden for t in TASKS}
        for t in TASKS:
            assert torch.allclose(outs[t], tower_alone(original, arch, t, batch), atol=1e-6)
        assert not torch.allclose(outs["a"], outs["b"])


def test_cross_stitch_mixing_is_live():
    batch = make_batch()
    arch = build("cross_stitch", {"layers": 1})
    for i, t in enumerate(TASKS):
        perturb(arch.towers[t].parameters(), seed=20 + i, scale=0.05)
    with torch.no_grad():
        alone = {t: arch(batch, t).hidden for t in TASKS}
        arch.stitch["a"].copy_(torch.tensor([[0.5, 0.5, 0.0]]))  # task a reads half of tower b
        mixed = arch(batch, "a").hidden
    # with a final mixing only (layers=1, BERT has no final norm): exactly the average of the towers
    assert torch.allclose(mixed, 0.5 * alone["a"] + 0.5 * alone["b"], atol=1e-6)
    assert any(p is arch.stitch["a"] for p in arch.task_parameters("a"))


# -- MTAN -----------------------------------------------------------------------------------------


def test_mtan_masks_shape_and_range():
    arch = build("mtan", {"bottleneck": 8})
    batch = make_batch()
    with torch.no_grad():
        masks = {t: arch.masks(batch, t) for t in TASKS}
        feats = arch(batch, "a")
    B, T = batch["input_ids"].shape
    for t in TASKS:
        assert len(masks[t]) == 3 + 1  # embeddings + 3 blocks
        for m in masks[t]:
            assert m.shape == (B, T, 32)
            assert float(m.min()) >= 0.0 and float(m.max()) <= 1.0
    assert not torch.allclose(masks["a"][-1], masks["b"][-1])  # each task has its own masks
    assert feats.hidden.shape == (B, T, 32) and feats.shared.shape == (4, B, T, 32)
    # the task's features are its last mask applied to the last hidden state
    assert torch.allclose(feats.hidden, masks["a"][-1] * feats.shared[-1])


def test_mtan_features_depend_on_every_layer():
    arch = build("mtan", {"bottleneck": 8}, tasks=["a", "b"]).train(False)
    batch = make_batch()
    states = arch.hidden_states(batch).detach().requires_grad_(True)
    hidden, _ = arch.attend(states, "a")
    (g,) = torch.autograd.grad(hidden.sum(), states)
    for j in range(states.shape[0]):
        assert float(g[j].abs().sum()) > 0, j


# -- mixture of experts ---------------------------------------------------------------------------


def test_mmoe_gates_sum_to_one_and_start_as_hard_sharing():
    arch = build("mmoe", {"n_experts": 4})
    batch = make_batch()
    with torch.no_grad():
        h = arch.backbone(**batch).last_hidden_state
        for t in TASKS:
            g = arch.gate(h, t)
            assert g.shape == (*h.shape[:2], 4)
            assert torch.allclose(g.sum(-1), torch.ones(h.shape[:2]), atol=1e-6) and float(g.min()) >= 0
        assert not torch.allclose(arch.gate(h, "a"), arch.gate(h, "b"))
        assert torch.equal(arch(batch, "a").hidden, h)  # zero-initialised expert outputs


def test_mmoe_output_is_gated_mixture():
    arch = build("mmoe", {"n_experts": 2, "residual": False})
    batch = make_batch()
    with torch.no_grad():
        h = arch.backbone(**batch).last_hidden_state
        g = arch.gate(h, "b")
        expected = g[..., :1] * arch.experts[0](h) + g[..., 1:] * arch.experts[1](h)
        assert torch.allclose(arch(batch, "b").hidden, expected, atol=1e-6)


@pytest.mark.parametrize("levels", [1, 2])
def test_ple_gates_sum_to_one(levels):
    arch = build("ple", {"levels": levels, "n_shared_experts": 2, "n_task_experts": 2})
    batch = make_batch()
    with torch.no_grad():
        h = arch.backbone(**batch).last_hidden_state
        for level in range(levels):
            for t in TASKS:
                g = arch.gate(h, t, level)
                assert g.shape[-1] == 2 + 2
                assert torch.allclose(g.sum(-1), torch.ones(h.shape[:2]), atol=1e-6) and float(g.min()) >= 0
            if level < levels - 1:
                s = arch.shared_gate(h, level)
                assert s.shape[-1] == 2 + 3 * 2 and torch.allclose(s.sum(-1), torch.ones(h.shape[:2]), atol=1e-6)
        assert torch.equal(arch(batch, "c").hidden, h)  # residual, zero-initialised experts
    assert (arch.levels[-1].shared_gate is None) and (levels == 1 or arch.levels[0].shared_gate is not None)


def test_cgc_task_only_uses_own_and_shared_experts():
    arch = build("ple", {"levels": 1, "residual": False})
    batch = make_batch()
    perturb(arch.levels[0].task_experts["b"].parameters(), seed=3)
    with torch.no_grad():
        before = arch(batch, "a").hidden.clone()
        perturb(arch.levels[0].task_experts["b"].parameters(), seed=4)  # b's experts: no effect on a
        assert torch.equal(arch(batch, "a").hidden, before)
        perturb(arch.levels[0].task_experts["a"].parameters(), seed=4)
        assert not torch.equal(arch(batch, "a").hidden, before)


# -- adapters -------------------------------------------------------------------------------------

ADAPTER_KINDS = [{"kind": "lora", "r": 4}, {"kind": "bottleneck", "bottleneck_size": 8}]


@pytest.mark.parametrize("args", ADAPTER_KINDS, ids=["lora", "bottleneck"])
def test_adapters_start_as_the_pretrained_encoder(args):
    ref = reference_output(random_bert(0), make_batch())
    arch = build("adapters", args)
    with torch.no_grad():
        for t in TASKS:
            assert torch.allclose(arch(make_batch(), t).hidden, ref, atol=1e-6)


@pytest.mark.parametrize("args", ADAPTER_KINDS, ids=["lora", "bottleneck"])
def test_adapter_of_another_task_does_not_change_a_task(args):
    arch = build("adapters", args)
    batch = make_batch()
    perturb(arch.task_parameters("a"), seed=1, scale=0.1)
    perturb(arch.task_parameters("b"), seed=2, scale=0.1)
    with torch.no_grad():
        a_before, b_before = arch(batch, "a").hidden.clone(), arch(batch, "b").hidden.clone()
        perturb(arch.task_parameters("b"), seed=3, scale=0.3)
        assert torch.equal(arch(batch, "a").hidden, a_before)
        assert not torch.allclose(arch(batch, "b").hidden, b_before)


@pytest.mark.parametrize("args", ADAPTER_KINDS, ids=["lora", "bottleneck"])
def test_frozen_backbone_has_no_trainable_backbone_parameters(args):
    arch = build("adapters", args)
    adapter = {id(p) for t in TASKS for p in arch.task_parameters(t)}
    backbone_trainable = [n for n, p in arch.backbone.named_parameters() if p.requires_grad and id(p) not in adapter]
    assert backbone_trainable == []
    info = arch.describe()
    assert info["shared"] == 0
    assert info["trainable"] == sum(info[f"task:{t}"] for t in TASKS) > 0
    assert info["trainable"] < 0.5 * info["total"]
    # one step over every task: only adapters get gradients; every task's adapter stays trainable
    before = {n: p.detach().clone() for n, p in arch.backbone.named_parameters() if id(p) not in adapter}
    arch.train()
    loss = sum(arch(make_batch(seed=i), t).hidden.pow(2).mean() for i, t in enumerate(TASKS))
    loss.backward()
    for t in TASKS:
        params = arch.task_parameters(t)
        assert params and all(p.requires_grad for p in params)
        assert any(p.grad is not None and float(p.grad.abs().sum()) > 0 for p in params), t
    for n, p in arch.backbone.named_parameters():
        if id(p) not in adapter:
            assert p.grad is None and torch.equal(p, before[n]), n


@pytest.mark.parametrize("args", ADAPTER_KINDS, ids=["lora", "bottleneck"])
def test_trainable_backbone_is_shared(args):
    arch = build("adapters", {**args, "freeze_backbone": False})
    info = arch.describe()
    assert info["shared"] > 0 and info["trainable"] == info["total"]
    assert arch.balance_parameters(1)


@pytest.mark.parametrize("args", ADAPTER_KINDS, ids=["lora", "bottleneck"])
def test_mixed_batch_routes_each_example_to_its_adapter(args):
    arch = build("adapters", args)
    for i, t in enumerate(TASKS):
        perturb(arch.task_parameters(t), seed=30 + i, scale=0.1)
    batch = make_batch(B=5)
    ids = torch.tensor([2, 0, 1, 0, 2])
    with torch.no_grad():
        mixed = arch({**batch, "task_ids": ids}, None).hidden
        for row, t in enumerate(ids.tolist()):
            alone = arch(batch, TASKS[t]).hidden[row]
            assert torch.allclose(mixed[row], alone, atol=1e-5), row


def test_mixed_forward_applies_each_examples_head():
    from polytask.architectures.adapters import mixed_forward
    from polytask.config import TaskConfig
    from polytask.model import MultiTaskModel
    from polytask.tasks import build_task

    tasks = {t: build_task(TaskConfig(name=t, type="classification", labels=["x", "y", "z"][: 2 + i]))
             for i, t in enumerate(["a", "b"])}
    model = MultiTaskModel(build("adapters", {"kind": "bottleneck"}, tasks=["a", "b"]), tasks).eval()
    batch = make_batch(B=4)
    ids = torch.tensor([1, 0, 0, 1])
    with torch.no_grad():
        out = mixed_forward(model, {**batch, "task_ids": ids})
        for name, (rows, logits) in out.items():
            alone = model(batch, name)[0][rows]
            assert torch.allclose(logits, alone, atol=1e-5)
    assert out["a"][1].shape == (2, 2) and out["b"][1].shape == (2, 3)


def test_lora_adapters_use_peft_per_task():
    from peft.tuners.lora import LoraLayer

    arch = build("adapters", {"kind": "lora", "r": 4})
    layers = [m for m in arch.backbone.modules() if isinstance(m, LoraLayer)]
    assert len(layers) == 3 * 2  # query and value in 3 blocks
    assert all(set(m.lora_A) == set(TASKS) for m in layers)
    assert set(arch.backbone.peft_config) == set(TASKS)
    with torch.no_grad():
        arch(make_batch(), "b")
    assert all(m.active_adapters == ["b"] for m in layers)


def test_frozen_adapters_refuse_last_layer_gradients_clearly():
    from polytask.errors import ConfigError

    with pytest.raises(ConfigError, match="grad_space"):
        build("adapters", {"kind": "bottleneck"}).balance_parameters(1)
