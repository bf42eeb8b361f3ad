from pathlib import Path

import pytest
import yaml

from polytask.config import Config, apply_override, from_dict, load_config
from polytask.errors import ConfigError

from conftest import REPO

BASE = {"tasks": [{"name": "a", "type": "classification"}, {"name": "b", "type": "regression"}]}


def raw(**extra):
    out = yaml.safe_load(yaml.safe_dump(BASE))
    out.update(extra)
    return out


def test_defaults_fill_in():
    cfg = from_dict(raw())
    assert isinstance(cfg, Config)
    assert cfg.train.max_steps == 300 and cfg.weighting.name == "equal" and cfg.tasks[1].pooling == "cls"


@pytest.mark.parametrize(
    "change, message",
    [
        ({"trian": {}}, "trian: unknown key"),
        ({"train": {"max_step": 3}}, "train.max_step: unknown key"),
        ({"train": {"max_steps": "ten"}}, "train.max_steps: expected int, got str 'ten'"),
        ({"train": {"lr": True}}, "train.lr: expected float"),
        ({"train": {"schedule": "step"}}, "train.schedule: str 'step' is not one of"),
        ({"train": {"max_steps": 0}}, "train.max_steps: must be positive"),
        ({"tasks": [{"name": "a"}]}, "tasks[0].type: required key is missing"),
        ({"tasks": [{"name": "a", "type": "x", "data": {"trian": "f"}}]}, "tasks[0].data.trian: unknown key"),
        ({"tasks": [{"name": "a", "type": "x"}, {"name": "a", "type": "x"}]}, "duplicate task name 'a'"),
        ({"tasks": []}, "at least one task"),
        ({"model": "bert"}, "model: expected a mapping"),
    ],
)
def test_errors_name_the_key_path(change, message):
    with pytest.raises(ConfigError, match=None) as info:
        from_dict(raw(**change))
    assert message in str(info.value)


def test_overrides_by_path_index_and_task_name():
    data = raw()
    apply_override(data, "train.max_steps=7")
    apply_override(data, "train.lr=1e-4")
    apply_override(data, "tasks.b.pooling=mean")
    apply_override(data, "tasks.0.labels=[x, y]")
    apply_override(data, "sampling.name=temperature")
    apply_override(data, "sampling.args={T: 2}")
    cfg = from_dict(data)
    assert cfg.train.max_steps == 7 and cfg.train.lr == pytest.approx(1e-4)
    assert cfg.task("b").pooling == "mean" and cfg.task("a").labels == ["x", "y"]
    assert cfg.sampling.args == {"T": 2}


@pytest.mark.parametrize("bad", ["train.max_steps", "=3", "tasks.zzz.pooling=mean"])
def test_bad_overrides(bad):
    with pytest.raises(ConfigError):
        apply_override(raw(), bad)


def test_missing_config_file(tmp_path):
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "nope.yaml")


EXAMPLES = sorted((REPO / "examples").glob("*.yaml")) + sorted((REPO / "benchmarks").glob("**/*.yaml"))


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_every_example_yaml_loads(path: Path):
    cfg = load_config(path)
    assert cfg.tasks
