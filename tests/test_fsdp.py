"""Sharded training (``train.shard: fsdp``, torch FSDP2), launched for real through torchrun and
``accelerate launch`` with examples/accelerate_fsdp.yaml (gloo on the CPU, tiny random BERT and
tiny random Llama).

2 sharded processes x batch 4 train the same model as 1 process x batch 8 (per-step losses, task
weights and gradient norms, final weights, metrics: within float32 reordering bounds, UPGrad's
weights within what its Gram-matrix difference implies; see test_distributed.assert_same_run)
with equal weighting and with UPGrad on the representation; a sharded group
killed with SIGKILL (uncertainty weighting, dropout on) resumes the uninterrupted trajectory;
the saved run (full weights, written by the main process only) loads in one process; per-task
LoRA on a tiny Llama trains sharded and its run loads and generates.

Run as a script under torchrun, this file trains the configs named on its command line.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from llm.conftest import llm_data, llm_tasks, tiny_llm  # noqa: F401 (fixtures)
from test_distributed import (FLOAT32_REDUCTION, assert_same_run, cut_then_resume, free_port, launch,  # noqa: F401
                              main, raw_config, skip_plots, still_backbone, train_events, train_losses, write_yaml)

ACCELERATE_FSDP = Path(__file__).resolve().parents[1] / "examples" / "accelerate_fsdp.yaml"
CASES = {  # name: (weighting, grad_space, train settings)
    "equal": ("equal", "representation", {}),
    "upgrad": ("upgrad", "representation", {"grad_accum": 2}),  # FSDP reduce-scatters each micro-step
}


def resume_config(backbone: str, out: Path, name: str) -> dict:
    """Uncertainty weighting: its learnable parameters are outside the sharded model, in the same
    optimizer (averaged by the trainer, saved and restored with the shards' state)."""
    return raw_config(backbone, out, name, "uw", dropout=0.1, max_steps=12, checkpoint_every=4, eval_every=6,
                      keep_checkpoints=50, shard="fsdp")


def lora_config(backbone: str, data: Path, out: Path) -> dict:
    args = {"peft": "task_lora", "lora_r": 4, "lora_alpha": 8, "target_modules": ["q_proj", "v_proj", "up_proj"]}
    return {"name": "lora", "output_dir": str(out), "seed": 5,
            "model": {"kind": "causal_lm", "backbone": backbone, "max_length": 40},
            "architecture": {"name": "causal_lm", "args": args}, "tasks": llm_tasks(data),
            "train": {"mixed_precision": "no", "max_steps": 16, "batch_size": 4, "eval_batch_size": 16, "lr": 5e-3, "eval_every": 8,
                      "log_every": 4, "warmup_ratio": 0.0, "device": "cpu", "shard": "fsdp"}}


@pytest.fixture(scope="module")
def sharded_runs(still_backbone, tiny_backbone, tiny_llm, llm_data, tmp_path_factory) -> Path:  # noqa: F811
    """Each case's sharded 2 x 4 run, the resume test's uninterrupted reference, and a LoRA run
    on the tiny Llama, in one launch through ``accelerate launch --config_file
    examples/accelerate_fsdp.yaml``: the "equal" case leaves ``train.shard: none``, so the
    Accelerate FSDP config alone must shard it (the resume test launches through torchrun)."""
    out = tmp_path_factory.mktemp("fsdp")
    configs = [write_yaml(raw_config(still_backbone, out, name, w, g, shard="none" if name == "equal" else "fsdp",
                                     **extra), out / f"{name}.yaml") for name, (w, g, extra) in CASES.items()]
    configs.append(write_yaml(resume_config(tiny_backbone, out, "whole"), out / "whole.yaml"))
    configs.append(write_yaml(lora_config(tiny_llm, llm_data, out), out / "lora.yaml"))
    launch(__file__, *configs, timeout=300, launcher=accelerate_fsdp)
    return out


def accelerate_fsdp(*args: str) -> list[str]:
    """Accelerate's launcher with the example FSDP config, on 2 processes (gloo on the CPU)."""
    return [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(ACCELERATE_FSDP),
            "--num_processes", "2", "--main_process_port", str(free_port()), *args]


def test_shard_is_validated_and_names_its_field(tiny_backbone, tmp_path):
    from conftest import tiny_config
    from polytask.config import from_dict
    from polytask.errors import ConfigError

    with pytest.raises(ConfigError, match=r"train\.shard: str 'zero3' is not one of \['none', 'fsdp'\]"):
        from_dict(tiny_config(tiny_backbone, tmp_path, shard="zero3"))
    with pytest.raises(ConfigError, match=r"train\.grad_space: 'last_layers' takes task gradients of sharded"):
        from_dict(tiny_config(tiny_backbone, tmp_path, shard="fsdp", grad_space="last_layers"))
    with pytest.raises(ConfigError, match=r"train\.mixed_precision: fp16 needs a sharded gradient scaler"):
        from_dict(tiny_config(tiny_backbone, tmp_path, shard="fsdp", mixed_precision="fp16"))
    assert from_dict(tiny_config(tiny_backbone, tmp_path)).train.shard == "none"


def test_an_accelerate_fsdp_launch_shards_and_deepspeed_is_refused(monkeypatch):
    from polytask.devices import make_accelerator
    from polytask.errors import ConfigError
    from polytask.sharding import wants_sharding

    accelerator = make_accelerator("cpu", "no")
    assert not wants_sharding("none", accelerator) and wants_sharding("fsdp", accelerator)
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")  # what `accelerate launch` sets for an FSDP config
    assert wants_sharding("none", accelerator)
    monkeypatch.setenv("ACCELERATE_USE_DEEPSPEED", "true")
    with pytest.raises(ConfigError, match="DeepSpeed: polytask does not hand its model to DeepSpeed"):
        wants_sharding("none", accelerator)


def test_one_process_has_nothing_to_shard(tiny_backbone, tmp_path, capsys):
    from conftest import tiny_config
    from polytask.config import from_dict
    from polytask.train import train

    run = train(from_dict(tiny_config(tiny_backbone, tmp_path, shard="fsdp", max_steps=2, eval_every=2)),
                progress=False)
    assert "one process: nothing to shard" in capsys.readouterr().err
    assert json.loads((run / "metrics.jsonl").read_text().splitlines()[0])["sharded"] is False


def test_blocks_are_found_by_their_hugging_face_class_names(tiny_backbone, tiny_llm):  # noqa: F811
    from transformers import AutoModel

    from polytask.sharding import block_classes

    assert block_classes(AutoModel.from_pretrained(tiny_backbone)) == {"BertEmbeddings", "BertLayer"}
    assert block_classes(AutoModel.from_pretrained(tiny_llm)) == {"LlamaDecoderLayer"}


@pytest.mark.parametrize("case", list(CASES))
def test_two_sharded_processes_of_batch_4_train_as_one_of_batch_8(case, still_backbone, sharded_runs,  # noqa: F811
                                                                 tmp_path, monkeypatch):
    from polytask.config import from_dict
    from polytask.train import train

    skip_plots(monkeypatch.setattr)
    weighting, space, extra = CASES[case]
    one = train(from_dict(raw_config(still_backbone, tmp_path, case, weighting, space, batch_size=8, **extra)),
                progress=False)
    # Why the runs differ: the same float32 terms summed in another order (FSDP reduce-scatters
    # shards; one process sums the batch), which bounds losses and gradient norms by gamma_256
    # (FLOAT32_REDUCTION). UPGrad's weights are a function of the Gram matrix alone and amplify its
    # difference where one task's gradient is much shorter than the others (at step 5 sentiment's is
    # 50x shorter and weighs 23); assert_same_run bounds them by that propagated difference, computed
    # from both runs' logged Gram matrices, instead of a tolerance tuned on one machine.
    tol = FLOAT32_REDUCTION
    assert_same_run(Path(one), sharded_runs / case, atol=tol)
    assert_same_gradient_scale(train_events(Path(one)), train_events(sharded_runs / case), tol,
                               wrong_divisor=2)  # 2 processes, and 2 micro-steps in the upgrad case
    start = json.loads((sharded_runs / case / "metrics.jsonl").read_text().splitlines()[0])
    assert start["sharded"] is True and start["processes"] == 2
    assert start["effective_batch"] == 8 * extra.get("grad_accum", 1)


def assert_same_gradient_scale(one: list[dict], two: list[dict], tol: float, wrong_divisor: int) -> None:
    """AdamW hides a scale error in the gradients (a sum where a mean belongs, over processes or
    micro-steps); their logged norms do not. At step 1 both runs start from the same weights, so
    each task's gradient norm differs by reduction order alone: within ``tol`` relative. From step
    2 on the weights already differ by the earlier steps' rounding (UPGrad amplifies it), and a
    task whose gradient is small by cancellation (a regression residual near zero: 0.003 against
    0.17 a step earlier here) shows that difference relative to its own tiny norm, far above
    ``tol``; a wrong divisor still scales a norm by ``wrong_divisor`` (or its inverse), so every
    later step must stay closer than halfway to that factor."""
    assert len(one) == len(two) > 0
    assert one[0]["grad_norm"] == pytest.approx(two[0]["grad_norm"], rel=tol)
    halfway = (1 - 1 / wrong_divisor) / 2
    for a, b in zip(one[1:], two[1:]):
        for task, norm in b["grad_norm"].items():
            assert abs(a["grad_norm"][task] / norm - 1) < halfway, (a["step"], task, a["grad_norm"], b["grad_norm"])


def test_a_sharded_run_loads_and_predicts_in_one_process(sharded_runs, tmp_path, monkeypatch):
    import polytask
    from polytask.evaluate import evaluate

    run = sharded_runs / "equal"
    assert not list(run.glob("**/*.tmp*")) and sorted(p.name for p in (run / "checkpoints").iterdir())
    predictor = polytask.load(run)  # full weights, in the usual format
    out = predictor.predict("sentiment", ["a fine film", "a dull film"])
    assert len(out) == 2
    summary = json.loads((run / "summary.json").read_text())
    data = {n: td for n, td in predictor_data(predictor, tmp_path).items()}
    again = evaluate(predictor.model, data, "test", predictor.pad_id, 8)
    for task, metrics in summary["test"].items():  # the sharded run's own test metrics, from the file
        assert metrics == pytest.approx(again[task], rel=1e-5, abs=1e-6), task


def predictor_data(predictor, tmp_path):
    from polytask.dataset import encode_all, prepare

    data = prepare(predictor.cfg)
    encode_all(data, predictor.tokenizer, predictor.cfg.model.max_length)
    return data


def test_resume_after_sigkill_of_a_sharded_group(tiny_backbone, sharded_runs, tmp_path):
    config = write_yaml(resume_config(tiny_backbone, tmp_path, "whole"), tmp_path / "cut.yaml")
    run = tmp_path / "whole"
    done, at = cut_then_resume(config, run, checkpoint=4)
    assert 4 <= at < 12, done.stdout  # a real cut: steps are left to train
    losses, whole = train_losses(run), train_losses(sharded_runs / "whole")
    assert len(losses) == len(whole) == 12
    assert_same_run(run, sharded_runs / "whole", atol=1e-6)


def test_per_task_lora_trains_sharded_and_its_run_loads(sharded_runs):
    import polytask

    run = sharded_runs / "lora"
    losses = train_losses(run)
    assert len(losses) == 4 and all(losses[-1][t] < losses[0][t] for t in ("summary", "topic")), losses
    predictor = polytask.load(run)
    out = predictor.predict("topic", ["the team won the match"])
    assert len(out) == 1 and isinstance(str(out[0]), str)


if __name__ == "__main__":  # under the launcher: train each config in turn, as test_distributed does
    main(sys.argv[1:])
