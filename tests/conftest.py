"""Shared fixtures: a tiny randomly initialised BERT saved to disk, and config builders."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # tests never reach a model hub
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def _share_the_cores() -> None:
    """Under pytest-xdist (``make test``), each worker gets cores / workers threads, set before
    torch is imported and inherited by the processes the tests start: two workers with torch's
    default of one thread per core each would run up to 6x slower on 2 cores."""
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    if workers > 1 and "OMP_NUM_THREADS" not in os.environ:
        threads = str(max(1, (os.cpu_count() or 1) // workers))
        os.environ.update(OMP_NUM_THREADS=threads, MKL_NUM_THREADS=threads)


_share_the_cores()


def pytest_collection_modifyitems(config, items):
    """Files that hold ``slow`` tests (real models, minutes each) run first, the rest in their
    usual order: xdist hands out whole files in this order, so the long ones start while the
    other worker clears the short ones, instead of leaving one worker alone at the end."""
    slow_files = {item.path for item in items if item.get_closest_marker("slow")}
    items.sort(key=lambda item: item.path not in slow_files)  # stable: order within each group kept

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"


@pytest.fixture(scope="session")
def tiny_backbone(tmp_path_factory) -> str:
    """A 2-layer, 32-wide random BERT with the MiniLM word-piece tokenizer (fast to train)."""
    import torch
    from transformers import AutoTokenizer, BertConfig, BertModel

    from polytask.backbones.encoder import resolve_backbone

    out = tmp_path_factory.mktemp("tiny-bert")
    tokenizer = AutoTokenizer.from_pretrained(resolve_backbone("minilm"))
    torch.manual_seed(0)
    config = BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=2,
                        num_attention_heads=2, intermediate_size=64, max_position_embeddings=128)
    BertModel(config).save_pretrained(out)
    tokenizer.save_pretrained(out)
    return str(out)


@pytest.fixture(scope="session")
def tiny_cnn(tmp_path_factory) -> str:
    """A random two-stage ResNet (8 and 16 channels) saved as a Hugging Face folder: the image
    tests' backbone (seconds to train on tiny images)."""
    import torch
    from transformers import ResNetConfig, ResNetModel

    path = tmp_path_factory.mktemp("cnn") / "resnet"
    torch.manual_seed(0)
    ResNetModel(ResNetConfig(embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1], num_channels=3)).save_pretrained(path)
    return str(path)


def demo_tasks(n_train: int = 160, n_eval: int = 40) -> list[dict]:
    """The four synthetic demo tasks, small."""
    data = {"format": "synthetic", "max_train": n_train, "max_eval": n_eval}
    return [
        {"name": "sentiment", "type": "classification", "data": dict(data), "pooling": "mean"},
        {"name": "topic", "type": "classification", "data": dict(data), "pooling": "mean"},
        {"name": "similarity", "type": "regression", "data": dict(data), "pooling": "mean",
         "columns": {"text": "text_a", "text_pair": "text_b", "target": "score"}},
        {"name": "entities", "type": "tagging", "data": dict(data)},
    ]


def tiny_config(backbone: str, out_dir: Path, **train) -> dict:
    """A raw config dict for a fast run on the tiny backbone. float32 (``mixed_precision: no``)
    unless a test asks for another: the default ``auto`` is bf16 on CPUs with AMX,
    and these tests compare trajectories and numbers that are float32-exact (tests/test_precision.py
    covers ``auto``)."""
    return {
        "name": "tiny",
        "output_dir": str(out_dir),
        "seed": 3,
        "model": {"backbone": backbone, "max_length": 32},
        "tasks": demo_tasks(),
        "train": {"max_steps": 30, "batch_size": 16, "lr": 1e-3, "eval_every": 15, "log_every": 5,
                  "warmup_ratio": 0.0, "mixed_precision": "no", **train},
    }


def ctrl_c_as_in_a_terminal() -> None:
    """``preexec_fn`` for a child that a test interrupts with SIGINT: SIGINT back to its default
    disposition, as in a terminal. A test run started in the background (``nohup ... &``, some CI
    runners) inherits SIGINT ignored, and Python then installs no KeyboardInterrupt handler."""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_DFL)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on (for servers the tests start)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
