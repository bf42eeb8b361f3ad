"""``polytask serve``: a real uvicorn server (the CLI in a subprocess) on 127.0.0.1 and a free port,
serving a small trained run (tiny random BERT), called with a real HTTP client (httpx).

Predictions equal ``Predictor.predict``; 64 concurrent requests are all answered correctly (and
micro-batched); every bad request gets its 4xx naming the field or the known tasks, never a
stack trace, and the server keeps answering; /metrics, /docs; SIGTERM shuts it down cleanly.
"""

from __future__ import annotations

import asyncio
import math
import os
import signal
import subprocess
import sys
import time

import pytest

httpx = pytest.importorskip("httpx")
pytest.importorskip("fastapi")
pytest.importorskip("prometheus_client")

from conftest import REPO, free_port, tiny_config  # noqa: E402

from polytask.errors import PolytaskError  # noqa: E402
from polytask.serve import wait_until_ready  # noqa: E402

TEXTS = ["Anna loved the soup", "the chef burned the pasta", "Oslo is cold in winter", "Berg met Anna in Oslo"]


def stop_server(proc: subprocess.Popen) -> None:
    """SIGTERM (a graceful shutdown), then SIGKILL if it has not ended within 30 s."""
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()


def start_server(run_dir, *args) -> tuple[subprocess.Popen, str]:
    port = free_port()
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    proc = subprocess.Popen([sys.executable, "-m", "polytask.cli", "serve", str(run_dir), "--port", str(port),
                             "--log-level", "warning", *args], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until_ready(url, proc, timeout=120)
    except PolytaskError as exc:
        raise AssertionError(f"{exc}: {proc.stdout.read() if proc.poll() is not None else ''}") from None
    return proc, url


@pytest.fixture(scope="module")
def run_dir(tiny_backbone, tmp_path_factory):
    import polytask
    from polytask.config import from_dict

    raw = tiny_config(tiny_backbone, tmp_path_factory.mktemp("serve"), max_steps=6, eval_every=6)
    raw["name"] = "serve"
    return polytask.train(from_dict(raw), progress=False)


@pytest.fixture(scope="module")
def predictor(run_dir):
    import polytask

    return polytask.load(run_dir)


@pytest.fixture(scope="module")
def server(run_dir):
    proc, url = start_server(run_dir, "--max-inputs", "8", "--max-chars", "200", "--max-wait-ms", "20")
    yield url
    stop_server(proc)


def close(a, b):
    return math.isclose(a, b, rel_tol=1e-4, abs_tol=1e-5) if isinstance(a, float) else a == b


def test_health_tasks_docs(server, predictor):
    assert httpx.get(f"{server}/health").json()["status"] == "ok"
    tasks = {t["name"]: t for t in httpx.get(f"{server}/v1/tasks").json()["tasks"]}
    assert list(tasks) == list(predictor.tasks)
    assert tasks["topic"]["labels"] == predictor.tasks["topic"].labels and tasks["topic"]["metric"] == "accuracy"
    assert tasks["similarity"]["fields"] == ["text_a"] and tasks["similarity"]["optional_fields"] == ["text_b"]
    assert tasks["entities"]["type"] == "tagging" and all(t["one_pass"] for t in tasks.values())
    assert httpx.get(f"{server}/docs").status_code == 200
    assert "/v1/predict" in httpx.get(f"{server}/openapi.json").json()["paths"]


def test_predictions_equal_predictor(server, predictor):
    for task in ("sentiment", "topic", "entities"):
        got = httpx.post(f"{server}/v1/predict/{task}", json={"inputs": TEXTS}).json()
        assert got["task"] == task
        assert [p["prediction"] for p in got["predictions"]] == predictor.predict(task, TEXTS)
    pairs = [{"text_a": "a dog runs", "text_b": "a dog is running"}, {"text_a": "a cat", "text_b": "the sea"}]
    got = httpx.post(f"{server}/v1/predict/similarity", json={"inputs": pairs}).json()
    assert all(close(p["prediction"], q) for p, q in zip(got["predictions"], predictor.predict("similarity", pairs)))


def test_all_tasks_one_request_with_scores_and_skips(server, predictor):
    inputs = TEXTS[:2] + [{"text_a": "a dog", "text_b": "a cat"}]
    body = httpx.post(f"{server}/v1/predict", json={"inputs": inputs, "scores": True}).json()
    expected = predictor.predict_all(inputs, scores=True)
    for i, row in enumerate(body["predictions"]):
        for task, preds in expected.items():
            if i in expected.skipped.get(task, {}):
                assert task not in row
            else:
                assert close(row[task]["prediction"], preds[i])
    assert set(body["predictions"][0]["topic"]["scores"]) == set(predictor.tasks["topic"].labels)
    assert {(s["input"], s["task"]) for s in body["skipped"]} == {(0, "similarity"), (1, "similarity"),
                                                                   (2, "sentiment"), (2, "topic"), (2, "entities")}
    one = httpx.post(f"{server}/v1/predict", json={"inputs": TEXTS, "tasks": ["topic"]}).json()
    assert [r["topic"]["prediction"] for r in one["predictions"]] == predictor.predict("topic", TEXTS)
    assert all(set(r) == {"topic"} for r in one["predictions"])


def test_64_concurrent_requests(server, predictor):
    texts = [f"{TEXTS[i % 4]} {'again ' * (i % 5)}".strip() for i in range(64)]
    expected = predictor.predict("topic", texts)
    tags = predictor.predict("entities", texts)

    async def go():
        async with httpx.AsyncClient(base_url=server, timeout=60) as client:
            return await asyncio.gather(*[client.post("/v1/predict", json={"inputs": [t], "tasks": ["topic", "entities"]})
                                          for t in texts])

    responses = asyncio.run(go())
    assert all(r.status_code == 200 for r in responses)
    for r, label, tag in zip(responses, expected, tags):
        row = r.json()["predictions"][0]
        assert row["topic"]["prediction"] == label and row["entities"]["prediction"] == tag
    metrics = httpx.get(f"{server}/metrics").text
    assert 'polytask_requests_total{method="POST",path="/v1/predict",status="200"}' in metrics
    assert "polytask_request_seconds_bucket" in metrics
    calls = float(next(line.split()[-1] for line in metrics.splitlines() if line.startswith("polytask_batch_inputs_count")))
    assert calls < 64 + 20  # the 64 requests were micro-batched into fewer model calls


BAD = [
    ("/v1/predict", b"{not json", 400, "invalid JSON"),
    ("/v1/predict", {}, 422, "inputs"),
    ("/v1/predict", {"inputs": "a bare string"}, 422, "inputs"),
    ("/v1/predict", {"inputs": []}, 422, "inputs: empty"),
    ("/v1/predict", {"inputs": [""]}, 422, "inputs[0].text: empty text"),
    ("/v1/predict", {"inputs": ["ok", 5]}, 422, "inputs[1]"),
    ("/v1/predict", {"inputs": [{"text": 5}], "tasks": ["topic"]}, 422, "inputs[0].text: expected text"),
    ("/v1/predict", {"inputs": [None]}, 422, "inputs[0]"),
    ("/v1/predict", {"inputs": [{"nothing": "x"}]}, 422, "none of the requested tasks"),
    ("/v1/predict", {"inputs": ["x"], "tasks": ["nope"]}, 422, "known tasks: sentiment, topic"),
    ("/v1/predict", {"inputs": ["x"], "tasks": "topic"}, 422, "tasks"),
    ("/v1/predict", {"inputs": ["x"], "extra": 1}, 422, "extra"),
    ("/v1/predict", {"inputs": ["x"] * 9}, 413, "at most 8"),
    ("/v1/predict", {"inputs": ["x" * 201]}, 422, "at most 200"),
    ("/v1/predict", {"inputs": ["x"], "max_new_tokens": 4}, 422, "max_new_tokens"),
    ("/v1/predict/nope", {"inputs": ["x"]}, 404, "known tasks: sentiment, topic"),
    ("/v1/predict/similarity", {"inputs": ["only one text"]}, 422, "inputs[0].text_b: missing field"),
    ("/v1/predict/entities", {"inputs": [["EU", 3]]}, 422, "inputs[0]"),
]


@pytest.mark.parametrize("path,body,status,message", BAD)
def test_bad_requests_get_4xx_and_the_server_keeps_answering(server, path, body, status, message):
    kwargs = {"content": body, "headers": {"content-type": "application/json"}} if isinstance(body, bytes) \
        else {"json": body}
    r = httpx.post(f"{server}{path}", **kwargs)
    assert r.status_code == status, r.text
    detail = r.json()["detail"]
    assert message in detail, detail
    assert "Traceback" not in r.text and 'File "' not in r.text
    ok = httpx.post(f"{server}/v1/predict/topic", json={"inputs": TEXTS[:1]})
    assert ok.status_code == 200


def test_sigterm_shuts_down_gracefully(run_dir):
    """uvicorn finishes the requests in flight, runs the app's shutdown (the batcher stops), then
    exits; it re-raises the signal after a clean shutdown, so the exit status is 0 or -SIGTERM."""
    import threading

    proc, url = start_server(run_dir, "--no-batching", "--log-level", "info")
    got = []
    inflight = threading.Thread(target=lambda: got.append(
        httpx.post(f"{url}/v1/predict", json={"inputs": TEXTS * 2}, timeout=30).status_code))
    inflight.start()
    time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    inflight.join(30)
    assert proc.wait(timeout=30) in (0, -signal.SIGTERM)
    out = proc.stdout.read()
    assert got == [200]
    assert "Application shutdown complete" in out and "Traceback" not in out


def test_wait_until_ready_reports_a_server_that_exited():
    proc = subprocess.Popen([sys.executable, "-c", "import sys; sys.exit(3)"])
    with pytest.raises(PolytaskError, match="exited with code 3"):
        wait_until_ready(f"http://127.0.0.1:{free_port()}", proc, timeout=30)


def test_wait_until_ready_times_out_and_kills():
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    with pytest.raises(PolytaskError, match="did not answer /health within 1 s"):
        wait_until_ready(f"http://127.0.0.1:{free_port()}", proc, timeout=1)
    assert proc.wait(timeout=10) == -signal.SIGKILL
