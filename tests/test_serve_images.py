"""``polytask serve`` on an image run: a real uvicorn server (the CLI in a subprocess) serving a
tiny random CNN run trained by the test, called over HTTP with images as base64 in JSON and as
multipart uploads. Predictions equal ``Predictor.predict`` on the same files; every bad image
(not base64, a path, undecodable, truncated, grey, RGBA, too many bytes, too many pixels, not an
image upload) is a 4xx naming the input, and the server keeps answering; OpenAPI shows the
upload endpoints."""

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
from test_vision import halves, image_config, write_split  # noqa: E402
from vision_helpers import train_tiny_image_run  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


@pytest.fixture(scope="module")
def image_run(tmp_path_factory):
    """Two image tasks (left / right half coloured) on a random two-stage ResNet, 4 steps."""
    root = tmp_path_factory.mktemp("serve_images")
    run_dir = train_tiny_image_run(root, write_split, lambda cnn: image_config(root, cnn, max_steps=4, eval_every=4),
                                   16, 8)
    return root, run_dir


@pytest.fixture(scope="module")
def predictor(image_run):
    import polytask

    return polytask.load(image_run[1])


@pytest.fixture(scope="module")
def server(image_run):
    proc, url = start_server(image_run[1], "--max-inputs", "8", "--max-image-bytes", "6000",
                             "--max-image-pixels", "250000")
    yield url
    stop_server(proc)


def png(array: np.ndarray, mode: str | None = None) -> bytes:
    out = io.BytesIO()
    img = Image.fromarray(array)
    (img.convert(mode) if mode else img).save(out, format="PNG")
    return out.getvalue()


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def dev_files(root, n: int = 4) -> list:
    return [root / f"dev{i}.png" for i in range(n)]


def test_base64_predictions_equal_the_predictor(server, predictor, image_run):
    files = dev_files(image_run[0])
    expected = {t: predictor.predict(t, [str(f) for f in files]) for t in ("left", "right")}
    bare = [b64(f.read_bytes()) for f in files]
    got = httpx.post(f"{server}/v1/predict/left", json={"inputs": bare}).json()
    assert [p["prediction"] for p in got["predictions"]] == expected["left"]
    as_uri = [f"data:image/png;base64,{x}" for x in bare[:2]] + [{"path": bare[2]}, {"image": bare[3]}]
    body = httpx.post(f"{server}/v1/predict", json={"inputs": as_uri, "scores": True}).json()
    for task in ("left", "right"):
        assert [row[task]["prediction"] for row in body["predictions"]] == expected[task]
        assert set(body["predictions"][0][task]["scores"]) == set(predictor.tasks[task].labels)
    tasks = httpx.get(f"{server}/v1/tasks").json()["tasks"]
    assert [t["reads"] for t in tasks] == ["image", "image"]


def test_multipart_uploads_equal_the_predictor(server, predictor, image_run):
    files = dev_files(image_run[0], 3)
    parts = [("images", (f.name, f.read_bytes(), "image/png")) for f in files]
    expected = predictor.predict_all([str(f) for f in files])
    got = httpx.post(f"{server}/v1/upload", files=parts, data={"tasks": ["right"], "scores": "true"}).json()
    assert got["files"] == [f.name for f in files]
    assert [row["right"]["prediction"] for row in got["predictions"]] == expected["right"]
    assert all(set(row) == {"right"} and "scores" in row["right"] for row in got["predictions"])
    one = httpx.post(f"{server}/v1/upload/left", files=parts).json()
    assert one["task"] == "left" and [p["prediction"] for p in one["predictions"]] == expected["left"]


def bad_requests(root) -> dict:
    """name -> (httpx.post keyword arguments, path, expected status, a phrase of the message)."""
    good = png(halves(1, 0))
    cut = png(np.random.default_rng(0).integers(0, 255, (20, 20, 3), dtype=np.uint8))[:200]
    noise = png(np.random.default_rng(1).integers(0, 255, (64, 64, 3), dtype=np.uint8))  # ~12 kB > 6000
    wide = png(np.zeros((600, 600, 3), np.uint8))  # a few hundred bytes, 360,000 pixels > 250,000
    path = str(root / "dev0.png")  # a path on the server's disk is never read
    return {
        "not base64": ({"json": {"inputs": ["not base64!"]}}, "/v1/predict", 422, "inputs[0]: not base64"),
        "a path": ({"json": {"inputs": [path]}}, "/v1/predict/left", 422, "inputs[0]: not base64"),
        "not an image": ({"json": {"inputs": [b64(b"hello, world")]}}, "/v1/predict", 422,
                         "inputs[0]: undecodable image"),
        "truncated": ({"json": {"inputs": [b64(good), b64(cut)]}}, "/v1/predict", 422,
                      "inputs[1]: undecodable image: truncated"),
        "grey": ({"json": {"inputs": [{"path": b64(png(halves(1, 1)[:, :, 0]))}]}}, "/v1/predict", 422,
                 "inputs[0].path: image mode L (grey)"),
        "rgba": ({"json": {"inputs": [b64(png(halves(1, 1), "RGBA"))]}}, "/v1/predict", 422, "image mode RGBA"),
        "a number": ({"json": {"inputs": [5]}}, "/v1/predict", 422, "expected an image as a base64 string, got int"),
        "too many bytes": ({"json": {"inputs": [b64(noise)]}}, "/v1/predict", 413, "at most 6000 per image"),
        "too many pixels": ({"json": {"inputs": [b64(wide)]}}, "/v1/predict", 413,
                            "600 x 600 = 360000 pixels; at most 250000"),
        "upload of text": ({"files": [("images", ("notes.txt", b"some notes", "text/plain"))]}, "/v1/upload", 422,
                           "images[0] (notes.txt): undecodable image"),
        "upload of grey": ({"files": [("images", ("g.png", png(halves(0, 1)[:, :, 0]), "image/png"))]},
                           "/v1/upload/left", 422, "images[0] (g.png): image mode L"),
        "no files": ({"files": [("other", ("a.png", good, "image/png"))]}, "/v1/upload", 422, "images"),
        "too many files": ({"files": [("images", (f"{i}.png", good, "image/png")) for i in range(9)]}, "/v1/upload",
                           413, "images: 9 inputs; at most 8"),
        "unknown task": ({"files": [("images", ("a.png", good, "image/png"))]}, "/v1/upload/nope", 404,
                         "known tasks: left, right"),
        "multipart to JSON": ({"files": [("images", ("a.png", good, "image/png"))]}, "/v1/predict", 400,
                              "is not JSON"),
        "JSON to upload": ({"json": {"inputs": [b64(good)]}}, "/v1/upload", 400, "is not multipart/form-data"),
    }


NAMES = ["not base64", "a path", "not an image", "truncated", "grey", "rgba", "a number", "too many bytes",
         "too many pixels", "upload of text", "upload of grey", "no files", "too many files", "unknown task",
         "multipart to JSON", "JSON to upload"]


@pytest.mark.parametrize("name", NAMES)
def test_bad_images_get_4xx_naming_the_input_and_the_server_keeps_answering(server, image_run, name):
    kwargs, path, status, message = bad_requests(image_run[0])[name]
    r = httpx.post(f"{server}{path}", **kwargs)
    assert r.status_code == status, r.text
    assert message in r.json()["detail"], r.json()
    assert "Traceback" not in r.text
    ok = httpx.post(f"{server}/v1/predict/left", json={"inputs": [b64(png(halves(1, 0)))]})
    assert ok.status_code == 200 and ok.json()["predictions"][0]["prediction"] in ("0", "1")


def test_every_bad_request_is_exercised(image_run):
    assert sorted(NAMES) == sorted(bad_requests(image_run[0]))


def test_openapi_documents_base64_and_the_upload_endpoints(server):
    spec = httpx.get(f"{server}/openapi.json").json()
    assert {"/v1/upload", "/v1/upload/{task}", "/v1/predict"} <= set(spec["paths"])
    body = spec["paths"]["/v1/upload"]["post"]["requestBody"]["content"]
    assert list(body) == ["multipart/form-data"]
    ref = body["multipart/form-data"]["schema"]["$ref"].rsplit("/", 1)[-1]
    fields = spec["components"]["schemas"][ref]["properties"]
    assert {"images", "tasks", "scores"} == set(fields)
    assert fields["images"]["type"] == "array" and "image files" in fields["images"]["description"]
    assert "base64" in spec["components"]["schemas"]["PredictRequest"]["properties"]["inputs"]["description"]
    assert httpx.get(f"{server}/docs").status_code == 200


def test_docs_page_shows_the_upload_endpoints_in_headless_chromium(server, tmp_path):
    """Swagger UI (served offline) lists the upload endpoints; every other host is unresolvable."""
    import shutil
    import subprocess

    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        pytest.skip("needs chromium (apt-get install chromium)")
    proc = subprocess.run([chromium, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
                           f"--user-data-dir={tmp_path / 'profile'}", "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",
                           "--virtual-time-budget=15000", "--dump-dom", f"{server}/docs"],
                          capture_output=True, text=True, timeout=120)
    dom = proc.stdout
    assert "/v1/upload/{task}" in dom and "opblock" in dom, (proc.stderr[-2000:], dom[-2000:])
