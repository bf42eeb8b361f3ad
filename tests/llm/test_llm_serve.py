"""Generation tasks of a decoder-LLM run through ``polytask serve``'s endpoints (a real uvicorn server on a
tiny random Llama): predictions equal ``Predictor.predict``, ``max_new_tokens`` is overridable within
the limit, and the tasks are reported as one pass per task (no shared encoder pass)."""

from __future__ import annotations

import signal

import pytest

httpx = pytest.importorskip("httpx")
pytest.importorskip("fastapi")
pytest.importorskip("prometheus_client")

from test_serve import start_server  # noqa: E402


def test_generation_tasks_are_served(llm_config):
    import polytask
    from polytask.config import from_dict

    run = polytask.train(from_dict(llm_config(max_steps=4, eval_every=4)), progress=False)
    pred = polytask.load(run)
    proc, url = start_server(run)
    try:
        texts = ["the goal of the match", "a new phone and its battery"]
        tasks = {t["name"]: t for t in httpx.get(f"{url}/v1/tasks").json()["tasks"]}
        assert tasks["topic"]["type"] == "generation" and not tasks["topic"]["one_pass"]
        body = httpx.post(f"{url}/v1/predict", json={"inputs": texts}, timeout=60).json()
        for name in ("summary", "topic"):
            assert [row[name]["prediction"] for row in body["predictions"]] == pred.predict(name, texts)
        short = httpx.post(f"{url}/v1/predict/summary", json={"inputs": texts, "max_new_tokens": 1}, timeout=60)
        assert [p["prediction"] for p in short.json()["predictions"]] == pred.predict("summary", texts, max_new_tokens=1)
        assert pred.tasks["summary"].cfg.max_new_tokens == 4  # restored after the request
        too_long = httpx.post(f"{url}/v1/predict/summary", json={"inputs": texts, "max_new_tokens": 99})
        assert too_long.status_code == 422 and "1..4" in too_long.json()["detail"]
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)
