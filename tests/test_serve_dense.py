"""``polytask serve`` on a run with classification, segmentation and detection (issue 29): a real
server process answers base64 images and multipart uploads with boxes and a mask (a base64 PNG
of class indices at the image's size), equal to ``Predictor``'s predictions on the same files."""

from __future__ import annotations

import base64
import io

import numpy as np
import pytest

httpx = pytest.importorskip("httpx")
pytest.importorskip("fastapi")
pytest.importorskip("python_multipart")

from PIL import Image  # noqa: E402
from test_serve import start_server, stop_server  # noqa: E402
from test_vision_dense_joint import config, write_split  # noqa: E402
from vision_helpers import train_tiny_image_run  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


@pytest.fixture(scope="module")
def dense_run(tmp_path_factory):
    """The three tasks on a random two-stage ResNet, 6 steps (the predictions' shape is tested, not their quality)."""
    root = tmp_path_factory.mktemp("serve_dense")

    def make_config(backbone: str) -> dict:
        cfg = config(root, backbone, "hard", "imtl", max_steps=6, eval_every=6)
        for t in cfg["tasks"]:
            t.setdefault("score_threshold", 0.0)  # detection: an untrained head's boxes still come back
        return cfg

    return root, train_tiny_image_run(root, write_split, make_config, 16, 4)


def test_the_server_returns_boxes_and_a_mask(dense_run):
    import polytask

    root, run_dir = dense_run
    files = [root / f"dev{i}.png" for i in range(3)]
    expected = polytask.load(run_dir).predict_all([str(f) for f in files])
    proc, url = start_server(run_dir, "--max-inputs", "8")
    try:
        inputs = [base64.b64encode(f.read_bytes()).decode() for f in files]
        body = httpx.post(f"{url}/v1/predict", json={"inputs": inputs}).json()
        for task in ("colour", "shape", "boxes"):
            assert [row[task]["prediction"] for row in body["predictions"]] == expected[task]
        mask = body["predictions"][0]["shape"]["prediction"]
        with Image.open(io.BytesIO(base64.b64decode(mask["png"]))) as img:
            assert img.size == Image.open(files[0]).size and mask["labels"] == ["square", "background"]
        boxes = body["predictions"][0]["boxes"]["prediction"]
        assert boxes and all(set(b) == {"box", "label", "score"} for b in boxes)
        parts = [("images", (f.name, f.read_bytes(), "image/png")) for f in files]
        one = httpx.post(f"{url}/v1/upload/boxes", files=parts).json()
        assert [p["prediction"] for p in one["predictions"]] == expected["boxes"]
    finally:
        stop_server(proc)
    assert np.isfinite([b["score"] for b in boxes]).all()
