"""Unit tests of the LLM pieces on a tiny random Llama: prompt masking, packing without
cross-example attention, per-task LoRA routing, batched decoding and the causal_lm contract."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from polytask.architectures import build_architecture
from polytask.config import TaskConfig
from polytask.data.records import Record
from polytask.errors import CheckpointError, ConfigError
from polytask.packing import balanced_pack, block_causal_mask, pack, padding_fraction
from polytask.tasks import build_task
from polytask.tasks.generation import IGNORE, GenerationTask

TASKS = ["summary", "topic"]
TEXTS = ["the goal of the team today", "a new phone chip said the report", "pasta and bread",
         "the coach said the league match was big news for the city this year", "robot"]


@pytest.fixture(scope="module")
def lm(tiny_llm):
    from polytask.backbones.causal_lm import load_causal_lm

    return load_causal_lm(tiny_llm)


def fresh_backbone(tiny_llm):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(tiny_llm).eval()


def make_task(tokenizer, name="summary", max_length=40, **kw) -> GenerationTask:
    cfg = {"prompt": "summarize : {text}", "target": "summary", "max_new_tokens": 4, **kw}
    task = build_task(TaskConfig(name=name, type="generation", **cfg))
    task.tokenizer, task.max_length = tokenizer, max_length
    return task


def encode(task, tokenizer, texts=TEXTS, targets=("goal team", "phone chip", "pasta bread", "coach league",
                                                   "robot")):
    exs = []
    for i, (t, y) in enumerate(zip(texts, targets)):
        ex, problems = task.parse(Record({"text": t, "summary": y}, "mem", i + 1))
        assert not problems
        exs.append(ex)
    return task.encode(exs, tokenizer, task.max_length)


def perturb_adapter(arch, name, scale=0.5, seed=3):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in arch.adapter_parameters(name):
            p.add_(scale * torch.randn(p.shape, generator=g))


# -- prompt masking ------------------------------------------------------------------------------


def test_only_target_tokens_are_scored(lm):
    model, tok = lm
    task = make_task(tok)
    feats = encode(task, tok)
    batch = task.collate(feats, tok.pad_token_id)
    for i, f in enumerate(feats):
        row = batch["labels"][i]
        p, n = f["prompt_len"], len(f["input_ids"])
        assert (row[: p - 1] == IGNORE).all() and (row[n - 1:] == IGNORE).all()
        assert row[p - 1: n - 1].tolist() == f["input_ids"][p:] == f["target_ids"]
        assert f["target_ids"][-1] == tok.eos_token_id  # short targets end with EOS
    # the prompt is wrapped in the chat template and the answer is the assistant turn
    assert tok.decode(feats[0]["input_ids"][: feats[0]["prompt_len"]]).startswith("<bos> user : summarize")


def test_loss_is_cross_entropy_over_target_tokens_only(lm, tiny_llm):
    _, tok = lm
    task = make_task(tok)
    batch = task.collate(encode(task, tok), tok.pad_token_id)
    arch = build_architecture("causal_lm", fresh_backbone(tiny_llm), TASKS, {})
    full = arch({k: v for k, v in batch.items() if k != "labels"}, "summary").hidden  # (B, T, V)
    full = full.detach().requires_grad_(True)
    loss = task.loss(full, batch)
    value = float(loss.detach())
    # by hand: the model's own logits, shifted, scored where the token is a target token
    logits = arch.backbone(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    terms = []
    for i, n_p in enumerate(batch["prompt_len"].tolist()):
        n = int(batch["attention_mask"][i].sum())
        ids = batch["input_ids"][i]
        terms.append(F.cross_entropy(logits[i, n_p - 1:n - 1], ids[n_p:n], reduction="none"))
    assert value == pytest.approx(float(torch.cat(terms).detach().mean()), abs=1e-5)
    # prompt positions do not count: their logits get no gradient, and changing them changes nothing
    (grad,) = torch.autograd.grad(loss, full)
    scored = batch["labels"] != IGNORE
    assert grad[~scored].abs().max() == 0 and grad[scored].abs().sum() > 0
    noisy = full.detach().clone()
    noisy[~scored] += 5 * torch.randn_like(noisy[~scored])
    assert float(task.loss(noisy, batch)) == pytest.approx(value, abs=1e-6)
    # the architecture's sparse path (logits of scored positions only) gives the same loss
    sparse = arch(batch, "summary").hidden
    assert sparse.shape[0] == int(scored.sum())
    assert float(task.loss(sparse, batch).detach()) == pytest.approx(value, abs=1e-5)


def test_long_prompt_is_shortened_inside_the_template(lm):
    _, tok = lm
    task = make_task(tok, max_length=24)
    long_text = " ".join(["the city said"] * 30)
    ids = task.prompt_ids([task.parse(Record({"text": long_text, "summary": "x"}, "m", 1))[0]])[0]
    assert len(ids) <= task.prompt_budget() == 24 - 4 - 1
    assert tok.decode(ids).endswith("<eos> assistant :")  # the template's end survives


def test_generation_task_config_errors():
    with pytest.raises(ConfigError, match="named fields"):
        build_task(TaskConfig(name="x", type="generation", prompt="say {}"))
    with pytest.raises(ConfigError, match="main_metric"):
        build_task(TaskConfig(name="x", type="generation", main_metric="pearson"))
    task = build_task(TaskConfig(name="x", type="generation", prompt="{title}: {text}", target="summary"))
    assert task.text_fields == ("title", "text") and task.main_metric == "rougeL"
    _, problems = task.parse(Record({"text": "a"}, "f.jsonl", 3))
    assert {p.field for p in problems} == {"title", "summary"}


def test_label_parsing_and_metrics():
    task = build_task(TaskConfig(name="t", type="generation", labels=["positive", "negative", "neutral"]))
    assert task.main_metric == "accuracy"
    assert task.parse_label("Positive.") == "positive"
    assert task.parse_label("i think it is negative, not positive") == "negative"
    assert task.parse_label("no idea") is None
    assert task.parse_label("Positively.") == "positive" and task.parse_label("a neutralish, negative one") == "negative"
    preds = [task.to_prediction(t) for t in ["positive", "It is negative.", "hmm", "neutral"]]
    assert preds == ["positive", "negative", "hmm", "neutral"] and preds[1].text == "It is negative."
    m = task.metrics(preds, ["positive", "negative", "positive", "positive"])
    assert m["accuracy"] == 0.5 and m["exact_match"] == 0.25


# -- packing -------------------------------------------------------------------------------------


def test_pack_is_first_fit_decreasing_and_complete():
    lengths = [5, 9, 3, 7, 2, 8]
    rows = pack(lengths, 12)
    assert sorted(i for r in rows for i in r) == list(range(6))
    assert all(sum(lengths[i] for i in r) <= 12 for r in rows) and len(rows) == 3
    assert padding_fraction(lengths, rows) < padding_fraction(lengths)
    lengths = [30, 12, 10, 8, 6, 4, 3, 2]  # first fit: rows of 40 + 35 tokens; balanced: 38 + 37
    even = balanced_pack(lengths, 40)
    assert sorted(i for r in even for i in r) == list(range(8))
    assert sorted(sum(lengths[i] for i in r) for r in even) == [37, 38]
    mask = block_causal_mask(torch.tensor([[1, 1, 2, 2, 2, 0]]))
    allowed = (mask[0, 0] == 0).int().tolist()
    assert allowed[1] == [1, 1, 0, 0, 0, 0] and allowed[4] == [0, 0, 1, 1, 1, 0] and allowed[5] == [0] * 5 + [1]


@pytest.mark.parametrize("peft", ["none", "task_lora"])
def test_packing_gives_each_example_its_unpacked_logits(lm, tiny_llm, peft):
    _, tok = lm
    plain, packed = make_task(tok), make_task(tok, packing=True)
    feats = encode(plain, tok)
    a = plain.collate(feats, tok.pad_token_id)
    b = packed.collate(feats, tok.pad_token_id)
    assert b["input_ids"].shape[0] < a["input_ids"].shape[0]  # really packed
    arch = build_architecture("causal_lm", fresh_backbone(tiny_llm), TASKS,
                              {"peft": peft, "lora_r": 4}).eval()
    if peft == "task_lora":
        perturb_adapter(arch, "summary")
    strip = ("labels",)
    with torch.no_grad():
        la = arch({k: v for k, v in a.items() if k not in strip}, "summary").hidden
        lb = arch({k: v for k, v in b.items() if k not in strip}, "summary").hidden
        sa, sb = arch(a, "summary").hidden, arch(b, "summary").hidden  # scored positions only
    for i, f in enumerate(feats):
        n = len(f["input_ids"])
        r, s = int(b["example_row"][i]), int(b["example_start"][i])
        assert torch.allclose(la[i, :n], lb[r, s:s + n], atol=1e-5), i
    # the loss is the same token mean (targets are the same tokens, in a different order)
    assert float(F.cross_entropy(sa, a["labels"][a["labels"] != IGNORE])) == pytest.approx(
        float(F.cross_entropy(sb, b["labels"][b["labels"] != IGNORE])), abs=1e-5)


# -- per-task LoRA -------------------------------------------------------------------------------


def test_task_lora_routing_in_mixed_batches(lm, tiny_llm):
    _, tok = lm
    task = make_task(tok)
    batch = task.collate(encode(task, tok), tok.pad_token_id)
    del batch["labels"]
    arch = build_architecture("causal_lm", fresh_backbone(tiny_llm), TASKS, {"peft": "task_lora", "lora_r": 4}).eval()
    perturb_adapter(arch, "summary", seed=1)
    perturb_adapter(arch, "topic", seed=2)
    ids = torch.tensor([0, 1, 0, 1, 1])  # per example: summary, topic, ...
    with torch.no_grad():
        mixed = arch({**batch, "task_ids": ids}, None).hidden
        alone = {t: arch(batch, t).hidden for t in TASKS}
        for i, t in enumerate(ids.tolist()):
            assert torch.allclose(mixed[i], alone[TASKS[t]][i], atol=1e-5)
        perturb_adapter(arch, "topic", seed=9)  # change only topic's adapter
        again = arch({**batch, "task_ids": ids}, None).hidden
        summary_again = arch(batch, "summary").hidden
    rows_a, rows_b = ids == 0, ids == 1
    assert torch.equal(again[rows_a], mixed[rows_a])  # summary's examples: exactly unchanged
    assert torch.equal(summary_again, alone["summary"])
    assert not torch.allclose(again[rows_b], mixed[rows_b])  # topic's examples did change


def test_task_lora_routing_per_token_in_packed_rows(lm, tiny_llm):
    _, tok = lm
    task = make_task(tok, packing=True)
    feats = encode(task, tok)
    b = task.collate(feats, tok.pad_token_id)
    del b["labels"]
    arch = build_architecture("causal_lm", fresh_backbone(tiny_llm), TASKS, {"peft": "task_lora", "lora_r": 4}).eval()
    perturb_adapter(arch, "summary", seed=1)
    perturb_adapter(arch, "topic", seed=2)
    example_task = [0, 1, 0, 1, 1]
    token_ids = torch.zeros_like(b["input_ids"])
    for i, f in enumerate(feats):
        r, s = int(b["example_row"][i]), int(b["example_start"][i])
        token_ids[r, s:s + len(f["input_ids"])] = example_task[i]
    with torch.no_grad():
        mixed = arch({**b, "task_ids": token_ids}, None).hidden
        alone = {t: arch(b, t).hidden for t in TASKS}
    for i, f in enumerate(feats):
        r, s, n = int(b["example_row"][i]), int(b["example_start"][i]), len(f["input_ids"])
        assert torch.allclose(mixed[r, s:s + n], alone[TASKS[example_task[i]]][r, s:s + n], atol=1e-5)


def test_lora_state_dict_holds_adapters_and_rejects_another_base(lm, tiny_llm, tmp_path):
    from safetensors.torch import load_model, save_model

    arch = build_architecture("causal_lm", fresh_backbone(tiny_llm), TASKS, {"peft": "task_lora", "lora_r": 4})
    keys = list(arch.state_dict())
    assert keys and all("lora_" in k or k == "base_fingerprint" for k in keys)
    perturb_adapter(arch, "topic")
    save_model(arch, str(tmp_path / "a.safetensors"))
    same = build_architecture("causal_lm", fresh_backbone(tiny_llm), TASKS, {"peft": "task_lora", "lora_r": 4})
    missing, unexpected = load_model(same, str(tmp_path / "a.safetensors"), strict=True)
    assert not missing and not unexpected
    for name in ("topic", "summary"):
        for p, q in zip(arch.adapter_parameters(name), same.adapter_parameters(name)):
            assert torch.equal(p, q)
    other = fresh_backbone(tiny_llm)
    with torch.no_grad():
        other.model.layers[0].mlp.up_proj.weight.add_(0.1)
    wrong = build_architecture("causal_lm", other, TASKS, {"peft": "task_lora", "lora_r": 4})
    with pytest.raises(CheckpointError, match="different base"):
        load_model(wrong, str(tmp_path / "a.safetensors"), strict=True)


@pytest.mark.parametrize("peft", ["none", "shared_lora", "task_lora"])
def test_causal_lm_contract(lm, tiny_llm, peft):
    """The architecture contract of tests/architectures, for the decoder architecture."""
    _, tok = lm
    arch = build_architecture("causal_lm", fresh_backbone(tiny_llm), TASKS, {"peft": peft, "lora_r": 4}).train()
    trainable = {id(p) for p in arch.parameters() if p.requires_grad}
    shared = [id(p) for p in arch.shared_parameters()]
    owned = [id(p) for t in TASKS for p in arch.task_parameters(t)]
    assert not set(shared) & set(owned) and set(shared) | set(owned) == trainable
    info = arch.describe()
    assert info["trainable"] == info["shared"] + sum(info[f"task:{t}"] for t in TASKS)
    if peft != "none":
        assert info["trainable"] < 0.2 * info["total"]
    task = make_task(tok)
    batch = task.collate(encode(task, tok), tok.pad_token_id)
    f = arch(batch, "topic")
    (g,) = torch.autograd.grad(task.loss(f.hidden, batch), f.shared)
    assert g.shape == (*batch["input_ids"].shape, 32) and float(g.abs().sum()) > 0


def test_causal_lm_rejects_an_encoder_and_bad_args(tiny_llm):
    from transformers import BertConfig, BertModel

    bert = BertModel(BertConfig(vocab_size=50, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                                intermediate_size=32))
    with pytest.raises(ConfigError, match="model.kind: causal_lm"):
        build_architecture("causal_lm", bert, TASKS, {})
    with pytest.raises(ConfigError, match="peft"):
        build_architecture("causal_lm", fresh_backbone(tiny_llm), TASKS, {"peft": "lora"})


# -- decoding ------------------------------------------------------------------------------------


@pytest.mark.parametrize("beams", [1, 3])
def test_batched_left_padded_decoding_equals_one_at_a_time(lm, tiny_llm, beams):
    _, tok = lm
    task = make_task(tok, max_new_tokens=6, num_beams=beams)
    feats = encode(task, tok)
    arch = build_architecture("causal_lm", fresh_backbone(tiny_llm), TASKS, {}).eval()
    batch = task.collate(feats, tok.pad_token_id)
    prompts = task.prompts(batch, tok.pad_token_id)
    assert (prompts["attention_mask"][:, -1] == 1).all()  # left padding
    together = task.predict_batch(arch, batch)
    one_by_one = [task.predict_batch(arch, task.collate([f], tok.pad_token_id))[0] for f in feats]
    assert together == one_by_one
    new = arch.generate(prompts, "summary", max_new_tokens=6, num_beams=beams, eos_token_id=tok.eos_token_id,
                        pad_token_id=tok.pad_token_id)
    assert new.shape[1] <= 6


def test_decoding_stops_at_eos(lm):
    _, tok = lm
    task = make_task(tok)
    ids = tok("goal team", add_special_tokens=False)["input_ids"]
    assert task.decode_tokens(ids + [tok.eos_token_id] + ids) == "goal team"


def test_loss_units_are_the_scored_target_tokens(lm, tiny_llm):
    """Units-weighted slice losses give the whole batch's token mean (several processes)."""
    _, tok = lm
    task = make_task(tok)
    feats = encode(task, tok)
    units = [task.loss_units(f) for f in feats]
    batch = task.collate(feats, tok.pad_token_id)
    assert sum(units) == int((batch["labels"] != IGNORE).sum()) and len(set(units)) > 1
    arch = build_architecture("causal_lm", fresh_backbone(tiny_llm), TASKS, {})
    with torch.no_grad():
        whole = float(task.loss(arch(batch, "summary").hidden, batch))
        shared = 0.0
        for part in (feats[:2], feats[2:]):
            b = task.collate(part, tok.pad_token_id)
            u = sum(task.loss_units(f) for f in part)
            shared += u / sum(units) * float(task.loss(arch(b, "summary").hidden, b))
    assert shared == pytest.approx(whole, rel=1e-5)
