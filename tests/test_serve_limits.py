"""``polytask serve`` bounds what it accepts (issue 26, items 5, 6, 9, 10; issue 25, items 4 and 8):
a real server (the CLI in a subprocess) on 127.0.0.1, real sockets for slow clients, and headless
Chromium with every host but 127.0.0.1 unresolvable for the offline ``/docs`` page."""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import time

import pytest

httpx = pytest.importorskip("httpx")
pytest.importorskip("fastapi")

from conftest import tiny_config  # noqa: E402
from test_serve import start_server, stop_server  # noqa: E402

LIMITS = ["--max-inputs", "8", "--max-chars", "200", "--max-body-bytes", "100000", "--header-timeout", "1",
          "--body-timeout", "1"]


@pytest.fixture(scope="module")
def run_dir(tiny_backbone, tmp_path_factory):
    import polytask
    from polytask.config import from_dict

    raw = tiny_config(tiny_backbone, tmp_path_factory.mktemp("serve-limits"), max_steps=4, eval_every=4)
    raw["name"] = "limits"
    raw["tasks"] = raw["tasks"][:2]  # sentiment, topic: both read "text"
    return polytask.train(from_dict(raw), progress=False)


@pytest.fixture(scope="module")
def server(run_dir):
    proc, url = start_server(run_dir, *LIMITS)
    yield url
    stop_server(proc)


def post(url: str, body: bytes | str, content_type: str | None = "application/json") -> httpx.Response:
    headers = {"content-type": content_type} if content_type else {}
    return httpx.post(url, content=body.encode() if isinstance(body, str) else body, headers=headers, timeout=30)


def assert_problems(r: httpx.Response, status: int, *needles: str) -> dict:
    assert r.status_code == status, r.text
    body = r.json()
    assert isinstance(body["problems"], list) and body["problems"] and "detail" in body, body
    text = json.dumps(body)
    for needle in needles:
        assert needle in text, (needle, text)
    return body


# -- 5. lone surrogates never reach a traceback -----------------------------------------------------


def test_lone_surrogates_are_a_422_naming_the_input(server):
    r = post(f"{server}/v1/predict", '{"inputs": ["fine", "bad \\ud800 text"]}')
    assert_problems(r, 422, "inputs[1]", "lone surrogate")
    r = post(f"{server}/v1/predict", '{"inputs": [{"text": "x", "\\udc00": "y"}]}')
    assert_problems(r, 422, "inputs[0]", "lone surrogate")
    r = post(f"{server}/v1/predict", '{"inputs": ["x"], "\\ud800": 1}')  # was a 500: the message could not encode
    assert_problems(r, 422, "unicode")
    assert post(f"{server}/v1/predict/topic", '{"inputs": ["fine"]}').status_code == 200


# -- 6. echoed values are cut; values of every type count against the limits -----------------------


def test_echoed_values_are_cut_and_non_strings_count(server):
    huge = "q" * 90_000
    r = post(f"{server}/v1/predict", json.dumps({"inputs": ["x"], "tasks": [huge]}))
    assert_problems(r, 422, "unknown task")
    assert len(r.content) < 3000, len(r.content)
    r = post(f"{server}/v1/predict", json.dumps({"inputs": [{"text": list(range(15_000))}]}))
    assert_problems(r, 422, "inputs[0]", "at most 200")
    assert len(r.content) < 3000, len(r.content)
    r = post(f"{server}/v1/predict", json.dumps({"inputs": [{"text": 12345}], "tasks": ["topic"]}))
    assert_problems(r, 422, "inputs[0].text: expected text")


# -- 9. body size limit, header and body read timeouts ---------------------------------------------


def test_body_over_the_limit_is_413_before_it_is_read(server):
    r = post(f"{server}/v1/predict", json.dumps({"inputs": ["x" * 150_000]}))
    assert_problems(r, 413, "at most 100000")
    host, port = server.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as s:  # announces 1 GB, sends 10 bytes
        s.sendall(b"POST /v1/predict HTTP/1.1\r\nHost: x\r\ncontent-type: application/json\r\n"
                  b"content-length: 1000000000\r\n\r\n{\"inputs\"")
        answer = s.recv(65536)
    assert answer.startswith(b"HTTP/1.1 413"), answer


def test_slow_clients_are_cut_and_others_served(server):
    host, port = server.removeprefix("http://").split(":")
    slow_headers = socket.create_connection((host, int(port)), timeout=10)
    slow_headers.sendall(b"POST /v1/predict HTTP/1.1\r\nHost: x\r\n")  # and never the rest
    slow_body = socket.create_connection((host, int(port)), timeout=10)
    slow_body.sendall(b"POST /v1/predict HTTP/1.1\r\nHost: x\r\ncontent-type: application/json\r\n"
                      b"content-length: 100\r\n\r\n{\"inputs\": ")  # 90 bytes never come
    assert httpx.get(f"{server}/health", timeout=10).status_code == 200  # served meanwhile
    start = time.monotonic()
    assert slow_headers.recv(65536) == b""  # closed by the server
    assert time.monotonic() - start < 8
    answer = read_until_closed(slow_body)
    assert answer.startswith(b"HTTP/1.1 408") and b"problems" in answer, answer
    slow_headers.close()
    slow_body.close()
    assert httpx.post(f"{server}/v1/predict/topic", json={"inputs": ["fine"]}).status_code == 200


def read_until_closed(sock: socket.socket) -> bytes:
    out = b""
    while chunk := sock.recv(65536):
        out += chunk
    return out


# -- 10. every 4xx has problems; content type; one problem per input; strict types (25.8) ----------


def test_every_4xx_has_problems_and_documented_codes(server):
    assert_problems(httpx.get(f"{server}/nowhere"), 404, "/nowhere")
    r = httpx.get(f"{server}/v1/predict")
    assert_problems(r, 405, "GET")
    assert "POST" in r.headers.get("allow", "")
    assert_problems(post(f"{server}/v1/predict", '{"inputs": ["x"]}', content_type=None), 400, "content-type")
    assert_problems(post(f"{server}/v1/predict", "inputs=x", "application/x-www-form-urlencoded"), 400,
                    "content-type", "application/x-www-form-urlencoded")
    assert_problems(post(f"{server}/v1/predict", "{not json"), 400, "invalid JSON")
    for value in ('"yes"', "1", '"true"'):
        assert_problems(post(f"{server}/v1/predict", f'{{"inputs": ["x"], "scores": {value}}}'), 422, "scores")
    assert post(f"{server}/v1/predict", '{"inputs": ["x"], "scores": true}').status_code == 200


def test_one_problem_per_input_naming_the_tasks(server):
    body = assert_problems(post(f"{server}/v1/predict", '{"inputs": ["ok", ""]}'), 422)
    assert body["problems"] == ["inputs[1].text: empty text (tasks sentiment, topic)"], body
    body = assert_problems(post(f"{server}/v1/predict", '{"inputs": [""], "tasks": ["topic"]}'), 422)
    assert body["problems"] == ["inputs[0].text: empty text (task topic)"], body


# -- 25.4: /docs works offline ----------------------------------------------------------------------


def chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


@pytest.mark.skipif(chromium() is None, reason="needs chromium (apt-get install chromium; make setup installs it)")
def test_docs_page_renders_offline_in_headless_chromium(server, tmp_path):
    """Every host name but 127.0.0.1 is unresolvable for the browser: a CDN asset cannot load."""
    proc = subprocess.run([chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
                           f"--user-data-dir={tmp_path / 'profile'}", "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",
                           "--virtual-time-budget=15000", "--dump-dom", f"{server}/docs"],
                          capture_output=True, text=True, timeout=120)
    dom = proc.stdout
    assert "/v1/predict" in dom and "opblock" in dom, (proc.stderr[-2000:], dom[-2000:])
    assert "cdn.jsdelivr.net" not in httpx.get(f"{server}/docs").text + httpx.get(f"{server}/redoc").text
