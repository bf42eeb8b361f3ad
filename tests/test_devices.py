"""Devices and mixed precision through Accelerate (CPU here; the GPU check is benchmarks/gpu_check.py)."""

from __future__ import annotations

import pytest
import torch

from conftest import tiny_config
from polytask.config import from_dict
from polytask.devices import make_accelerator, to_device
from polytask.errors import ConfigError
from polytask.run_folder import RunFolder
from polytask.train import train


def test_bf16_autocast_on_cpu_trains_with_falling_loss(tiny_backbone, tmp_path):
    raw = tiny_config(tiny_backbone, tmp_path, max_steps=40, eval_every=20, log_every=5, mixed_precision="bf16",
                      device="cpu")
    raw["tasks"] = raw["tasks"][:2]
    run = RunFolder(train(from_dict(raw), progress=False))
    (start,) = run.events("start")
    assert start["device"] == "cpu" and start["mixed_precision"] == "bf16" and start["torch_threads"] >= 1
    losses = [sum(e["loss"].values()) for e in run.events("train")]
    assert losses[-1] < losses[0]


def test_gram_matrix_is_float32_under_bf16_autocast(tiny_backbone, tmp_path):
    from polytask.backbones.encoder import load_encoder
    from polytask.dataset import encode_all, prepare
    from polytask.model import build_model
    from polytask.train import build_components, forward_backward, train_batch

    raw = tiny_config(tiny_backbone, tmp_path, grad_space="last_layers")
    raw["tasks"] = raw["tasks"][:2]
    raw["weighting"] = {"name": "upgrad"}
    cfg = from_dict(raw)
    data = prepare(cfg)
    backbone, tok = load_encoder(tiny_backbone)
    encode_all(data, tok, 32)
    tasks = {n: td.task for n, td in data.items()}
    model = build_model(cfg, backbone, tasks)
    weighting, _ = build_components(cfg, list(tasks), [1, 1])
    accelerator = make_accelerator("cpu", "bf16")
    batches = {n: train_batch(data[n], list(range(8)), 0, accelerator.device) for n in tasks}
    params = model.arch.balance_parameters(1)
    result = forward_backward(model, tasks, batches, weighting, cfg.train, params, True, 1, accelerator)
    assert result.gram.dtype == torch.float32 and torch.isfinite(result.gram).all()
    assert all(p.grad is not None and p.grad.dtype == torch.float32 for p in params)


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
def test_asking_for_a_missing_gpu_is_a_clear_error():
    with pytest.raises(ConfigError, match="train.device: cuda asked for, but Accelerate found only cpu"):
        make_accelerator("cuda", "no")


def test_precision_can_change_between_runs_in_one_process():
    assert make_accelerator("cpu", "bf16").mixed_precision == "bf16"
    assert make_accelerator("cpu", "no").mixed_precision == "no"


def test_to_device_moves_tensors_and_keeps_the_rest():
    batch = {"input_ids": torch.ones(2, 3, dtype=torch.long), "names": ["a", "b"]}
    moved = to_device(batch, torch.device("cpu"))
    assert moved["input_ids"] is batch["input_ids"] and moved["names"] == ["a", "b"]
