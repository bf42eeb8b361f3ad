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
    raw = yaml.safe_load(path.read_text())
    if "multitask" in raw:  # a transfer benchmark plan (benchmarks/transfer.py): check each part
        check_transfer_plan(raw, path)
        return
    if "distributed_type" in raw:  # an Accelerate launch config (examples/accelerate_fsdp.yaml)
        check_accelerate_config(raw, path)
        return
    cfg = load_config(path)
    assert cfg.tasks


def check_transfer_plan(raw: dict, path: Path) -> None:
    """The multi-task config, each target task as `polytask adapt` reads it, with the curves'
    training settings; nothing else at the top level."""
    from polytask.adapt.spec import new_task_config

    assert set(raw) == {"multitask", "targets", "curves"}, sorted(raw)
    cfg = from_dict(raw["multitask"], source=str(path))
    assert len(cfg.tasks) > 1
    for target in raw["targets"]:
        new = new_task_config(cfg, {**target, "train": raw["curves"]["train"]})
        assert [t.name for t in new.cfg.tasks] == [target["name"]]


@pytest.mark.parametrize("override, message", [
    ("train.grad_clip=-1", "train.grad_clip: must be a positive finite number, got -1"),
    ("train.keep_checkpoints=-1", "train.keep_checkpoints: must be positive, got -1"),
    ("train.keep_checkpoints=0", "train.keep_checkpoints: must be positive, got 0"),
    ("train.log_every=0", "train.log_every: must be positive, got 0"),
    ("train.lr=-1", "train.lr: must be a positive finite number"),
    ("train.lr=.nan", "train.lr: must be a positive finite number"),
    ("train.head_lr=0", "train.head_lr: must be a positive finite number"),
    ("seed=-1", "seed: must be >= 0, got -1"),
    ("train.num_threads=-2", "train.num_threads: must be positive, got -2"),
    ("tasks.a.head_dropout=2", "tasks[0].head_dropout: must be in [0, 1), got 2"),
    ("train.weight_decay=-0.1", "train.weight_decay: must be in [0, 1)"),
    ("train.early_stopping=0", "train.early_stopping: must be positive"),
    ("tasks.b.data.max_train=0", "tasks[1].data.max_train: must be positive"),
    ("train.cosine_every=-1", "train.cosine_every: must be >= 0"),
])
def test_settings_out_of_range_are_errors_naming_the_key(override, message):
    data = raw()
    apply_override(data, override)
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("(", r"\(").replace(")", r"\)")):
        from_dict(data)


@pytest.mark.parametrize("key, value", [("name", "../escaped"), ("name", ".."), ("name", "a/b"),
                                        ("tasks.a.name", "../x"), ("tasks.a.name", "")])
def test_names_that_become_folders_are_single_path_components(key, value):
    data = raw()
    apply_override(data, f"{key}={value!r}" if value else f"{key}=''")
    with pytest.raises(ConfigError, match="must be one folder name"):
        from_dict(data)


@pytest.mark.parametrize("task, metric, message", [
    ("classification", "bleu", "'bleu' is not a metric of a classification task"),
    ("classification", "acuracy", "one of: accuracy, macro_f1, matthews, f1"),
    ("regression", "accuracy", "not a metric of a regression task"),
    ("tagging", "accuracy", "one of: f1, precision, recall"),
])
def test_main_metric_checked_against_the_task_type(task, metric, message):
    from polytask.tasks import build_task

    cfg = from_dict({"tasks": [{"name": "t", "type": task, "main_metric": metric}]})
    with pytest.raises(ConfigError, match=message):
        build_task(cfg.tasks[0])


def test_binary_f1_on_a_four_class_task_is_an_error():
    from polytask.data.records import Record
    from polytask.tasks import build_task

    task = build_task(from_dict({"tasks": [{"name": "t", "type": "classification", "main_metric": "f1"}]}).tasks[0])
    examples = [task.parse(Record({"text": "x", "label": lab}, "f", i))[0] for i, lab in enumerate("abcd")]
    with pytest.raises(ConfigError, match="'f1' is the binary F1 .* 4 labels"):
        task.fit(examples)


def check_accelerate_config(raw: dict, path: Path) -> None:
    """An FSDP2 Accelerate config that Accelerate's own loader reads, wrapping by transformer
    layer and saving full weights (polytask then shards the model itself: polytask.sharding)."""
    from accelerate.commands.config.config_args import ClusterConfig

    assert raw["distributed_type"] == "FSDP" and raw["use_cpu"] is False
    fsdp = raw["fsdp_config"]
    assert fsdp["fsdp_version"] == 2 and fsdp["fsdp_auto_wrap_policy"] == "TRANSFORMER_BASED_WRAP"
    assert fsdp["fsdp_state_dict_type"] == "FULL_STATE_DICT"
    loaded = ClusterConfig.from_yaml_file(path)  # Accelerate's loader: refuses keys it does not know
    assert loaded.distributed_type == "FSDP" and loaded.fsdp_config["fsdp_version"] == 2


def test_a_bare_no_in_yaml_means_the_choice_no():
    data = raw()
    apply_override(data, "train.mixed_precision=no")
    assert data["train"]["mixed_precision"] is False  # what YAML says
    assert from_dict(data).train.mixed_precision == "no"


def test_differences_reads_integer_keys_as_their_json_names():
    """A YAML mapping with integer keys (label_names: {1: pet}) is saved in JSON with string keys;
    resuming compares the two as the same setting (it used to refuse: 'label_names.1 changed')."""
    from polytask.config import differences

    yaml_side = {"tasks": [{"label_names": {1: "pet", 2: "background"}}]}
    json_side = {"tasks": [{"label_names": {"1": "pet", "2": "background"}}]}
    assert differences(yaml_side, json_side) == []
    json_side["tasks"][0]["label_names"]["2"] = "sky"
    assert differences(yaml_side, json_side) == ["tasks.0.label_names.2"]
