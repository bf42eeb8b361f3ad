"""``train.report_to``: the events of a real tiny run, fed to each tracker, read back with the
tracker's own reader (TensorBoard's event accumulator, MLflow's client, W&B's offline files)."""

from __future__ import annotations

import pytest

from conftest import tiny_config
from polytask.config import from_dict
from polytask.errors import ConfigError
from polytask.run_folder import RunFolder
from polytask.tracking import TRACKERS, Trackers, scalars


@pytest.fixture(scope="module")
def run(tiny_backbone, tmp_path_factory):
    import polytask

    raw = tiny_config(tiny_backbone, tmp_path_factory.mktemp("track"), max_steps=10, eval_every=5)
    return RunFolder(polytask.train(from_dict(raw), progress=False))


def feed(run: RunFolder, names: list[str], where):
    cfg = run.read_config([f"train.report_to=[{','.join(names)}]"])
    trackers = Trackers.from_config(cfg, where)
    for event in run.events():
        trackers.log(event)
    trackers.close(run.read_summary())


def test_scalars_name_every_number_of_the_events(run):
    train = scalars(run.events("train")[0])
    assert {"loss/sentiment", "lr", "weight/sentiment", "grad_norm/sentiment", "cosine/sentiment/topic",
            "examples/topic", "tokens/topic"} <= set(train)
    dev = scalars(run.events("eval")[0])
    assert {"dev/macro", "dev/sentiment/accuracy", "dev/similarity/pearson", "dev/entities/f1"} <= set(dev)
    assert scalars({"kind": "start", "step": 0, "params": {"total": 3}}) == {}


def test_tensorboard_event_files_read_back(run, tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    feed(run, ["tensorboard"], tmp_path)
    acc = EventAccumulator(str(tmp_path / "tensorboard"))
    acc.Reload()
    evals = run.events("eval")
    assert [(s.step, s.value) for s in acc.Scalars("dev/macro")] == [
        (e["step"], pytest.approx(e["macro"])) for e in evals]
    assert [s.step for s in acc.Scalars("loss/sentiment")] == [e["step"] for e in run.events("train")]
    assert "best/test_macro" in acc.Tags()["scalars"] and "config/text_summary" in acc.Tags()["tensors"]


def test_mlflow_local_store_reads_back_with_its_client(run, tmp_path):
    pytest.importorskip("mlflow")
    from mlflow.tracking import MlflowClient

    feed(run, ["mlflow"], tmp_path)
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    found = client.search_runs([client.get_experiment_by_name("tiny").experiment_id])
    assert len(found) == 1 and found[0].info.status == "FINISHED"
    history = client.get_metric_history(found[0].info.run_id, "dev/macro")
    assert [(m.step, m.value) for m in history] == [(e["step"], pytest.approx(e["macro"])) for e in run.events("eval")]
    assert found[0].data.params["train.max_steps"] == "10"
    assert found[0].data.metrics["best/dev_macro"] == pytest.approx(run.read_summary()["dev_macro"])


def test_no_tracker_is_a_no_op_and_an_unknown_name_is_a_config_error(run, tmp_path):
    trackers = Trackers.from_config(run.read_config(), tmp_path)
    trackers.log(run.events("train")[0])
    trackers.close()
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(ConfigError, match=r"train.report_to\[0\]: unknown tracker 'neptune'"):
        run.read_config(["train.report_to=[neptune]"])
    assert set(TRACKERS) == {"tensorboard", "mlflow", "wandb"}


def test_wandb_offline_run_is_written(run, tmp_path, monkeypatch):
    """wandb 0.31 ships no reader for its offline ``.wandb`` record file (``wandb sync`` uploads
    it), so this checks the file holds every logged name."""
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    feed(run, ["wandb"], tmp_path)
    import wandb

    wandb.teardown()  # wait for wandb's service process to finish writing the offline file
    files = list((tmp_path / "wandb").glob("offline-run-*/run-*.wandb"))
    assert len(files) == 1
    data = files[0].read_bytes()
    for name in ("dev/macro", "loss/sentiment", "cosine/sentiment/topic", "best/test_macro", "max_steps"):
        assert name.encode() in data, name


def test_training_with_report_to_writes_the_tracker_files(tiny_backbone, tmp_path):
    """The trainer feeds its trackers: a real run with report_to=[tensorboard]."""
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from conftest import tiny_config
    from polytask.config import from_dict
    from polytask.train import train

    raw = tiny_config(tiny_backbone, tmp_path, max_steps=10, eval_every=5, log_every=5, report_to=["tensorboard"])
    raw["tasks"] = raw["tasks"][:2]
    run_dir = train(from_dict(raw), progress=False)
    acc = EventAccumulator(str(run_dir / "tensorboard"))
    acc.Reload()
    assert [s.step for s in acc.Scalars("dev/macro")] == [5, 10]
    assert [s.step for s in acc.Scalars("loss/sentiment")] == [5, 10]
    assert "best/dev_macro" in acc.Tags()["scalars"]
