"""``polytask serve RUN_DIR``: an HTTP server for a trained run (FastAPI + uvicorn).

Endpoints (docs/serving.md): ``GET /health``, ``GET /v1/tasks``, ``POST /v1/predict``,
``POST /v1/predict/{task}``, ``GET /metrics`` (Prometheus), OpenAPI docs at ``/docs``.
Concurrent requests are micro-batched (:mod:`polytask.serve.batcher`); on architectures whose
encoder pass does not depend on the task, every task of a request is predicted from one encoder
pass per input. SIGTERM or Ctrl-C stops accepting connections, finishes the requests in flight
and exits.

Needs the ``serve`` extra: ``pip install "polytask[serve]"``.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

from polytask.errors import PolytaskError
from polytask.serve.settings import ServeSettings

__all__ = ["ServeSettings", "create_app", "serve", "wait_until_ready"]


def create_app(predictor, settings: ServeSettings | None = None):
    """The FastAPI application for a loaded :class:`polytask.predict.Predictor`."""
    from polytask.serve.app import create_app as _create

    return _create(predictor, settings)


def serve(run_dir: str | Path, host: str = "127.0.0.1", port: int = 8000, settings: ServeSettings | None = None,
          log_level: str = "info", graceful_timeout: float = 30.0, precision: str = "auto") -> None:
    """Load ``run_dir`` and serve it until SIGTERM/SIGINT (then drain for up to ``graceful_timeout`` s:
    requests still running then are cut). Request limits and read timeouts: ``settings``; the
    model's precision: ``precision`` (:meth:`polytask.predict.Predictor.load`)."""
    try:
        import uvicorn

        from polytask.serve.app import create_app as _create
        from polytask.serve.limits import protocol_with_header_timeout
    except ImportError as exc:
        raise PolytaskError(f"polytask serve needs the serve extra (pip install 'polytask[serve]'): {exc}") from None
    from polytask.predict import Predictor

    # The model thread needs the GIL back after every torch op; with Python's default 5 ms switch
    # interval a busy event-loop thread (parsing requests) delays each op by up to 5 ms.
    sys.setswitchinterval(0.0005)
    settings = settings or ServeSettings()
    app = _create(Predictor.load(run_dir, precision=precision), settings)
    config = uvicorn.Config(app, host=host, port=port, log_level=log_level, timeout_graceful_shutdown=graceful_timeout,
                            http=protocol_with_header_timeout(settings.header_timeout))
    uvicorn.Server(config).run()


def wait_until_ready(url: str, process: subprocess.Popen | None = None, timeout: float = 120.0) -> None:
    """Wait until the server at ``url`` answers ``GET /health`` with 200 (scripts and tests that
    start ``polytask serve`` as a process). Raises PolytaskError if ``process`` exits first or
    ``timeout`` seconds pass (the process is then killed)."""
    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise PolytaskError(f"polytask serve exited with code {process.returncode} before {url} was ready")
        try:
            if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    if process is not None:
        process.kill()
    raise PolytaskError(f"{url} did not answer /health within {timeout:.0f} s")
