"""The FastAPI application: endpoints, request checks, error responses and metrics.

Every error is a JSON object ``{"detail": message, "problems": [...]}`` with a 4xx status
naming the field (``inputs[2].text: empty text``) or the known tasks; an unexpected failure is
a 500 ``{"detail": "internal error"}`` (logged by the server, never sent to the client).
"""

from __future__ import annotations

import logging
import time
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest
from pydantic import BaseModel, ConfigDict, Field

from polytask._version import __version__
from polytask.errors import DataError, PolytaskError
from polytask.predict import AllPredictions, Predictor
from polytask.serve.batcher import MicroBatcher
from polytask.serve.settings import ServeSettings

log = logging.getLogger("polytask.serve")


class PredictRequest(BaseModel):
    """Inputs to predict; each is a string (the task's text), a list of words (tagging) or an object
    of fields (``{"text_a": ..., "text_b": ...}``: the task's field or column names)."""

    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [
        {"inputs": ["the chef burned the pasta"], "tasks": ["topic"], "scores": True}]})
    inputs: list[Any] = Field(description="strings, lists of words, or objects of fields")
    tasks: list[str] | None = Field(None, description="tasks to predict (default: every task)")
    scores: bool = Field(False, description="add label probabilities where a task has them")
    max_new_tokens: int | None = Field(None, description="generation tasks: decode at most this many tokens")


class TaskRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [
        {"inputs": ["the chef burned the pasta"], "scores": True}]})
    inputs: list[Any] = Field(description="strings, lists of words, or objects of fields")
    scores: bool = Field(False, description="add label probabilities where the task has them")
    max_new_tokens: int | None = Field(None, description="generation tasks: decode at most this many tokens")


class Metrics:
    """Prometheus request count, latency and model-call batch sizes (one registry per app)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter("polytask_requests", "HTTP requests", ["path", "method", "status"],
                                registry=self.registry)
        self.latency = Histogram("polytask_request_seconds", "HTTP request latency", ["path"], registry=self.registry,
                                 buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30))
        self.batch = Histogram("polytask_batch_inputs", "inputs per model call", registry=self.registry,
                               buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256))
        self.model_time = Histogram("polytask_model_seconds", "duration of each model call", registry=self.registry,
                                    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10))


def error(status: int, detail: str, problems: list[str] | None = None) -> HTTPException:
    return HTTPException(status, {"detail": detail, "problems": problems or [detail]})


def check_inputs(inputs: list, settings: ServeSettings) -> list:
    """Structural checks and limits; the task checks (empty text, missing fields) come after."""
    if not inputs:
        raise error(422, "inputs: empty list; give at least one input")
    if len(inputs) > settings.max_inputs:
        raise error(413, f"inputs: {len(inputs)} inputs; at most {settings.max_inputs} per request")
    problems = []
    for i, item in enumerate(inputs):
        values = item.values() if isinstance(item, dict) else [item]
        chars = 0
        for v in values:
            words = v if isinstance(v, list) else [v]
            if not all(isinstance(w, str) for w in words) and not isinstance(item, dict):
                problems.append(f"inputs[{i}]: expected a string, a list of words or an object of fields, "
                                f"got {type(item).__name__}")
                break
            chars += sum(len(w) for w in words if isinstance(w, str))
        if chars > settings.max_chars:
            problems.append(f"inputs[{i}]: {chars} characters; at most {settings.max_chars} per input")
    if problems:
        raise error(422, "; ".join(problems[:5]), problems)
    return inputs


def check_tasks(pred: Predictor, tasks: list[str] | None) -> list[str]:
    names = list(pred.tasks) if tasks is None else list(dict.fromkeys(tasks))
    unknown = [t for t in names if t not in pred.tasks]
    if unknown or not names:
        what = f"unknown task(s) {', '.join(map(repr, unknown))}" if unknown else "empty list"
        raise error(422, f"tasks: {what}; known tasks: {', '.join(pred.tasks)}")
    return names


def check_max_new_tokens(pred: Predictor, names: list[str], value: int | None, settings: ServeSettings) -> int | None:
    if value is None:
        return None
    configured = [pred.tasks[n].cfg.max_new_tokens for n in names if pred.generates(n)]
    limit = settings.max_new_tokens or max(configured, default=0)
    if not configured:
        raise error(422, "max_new_tokens: only for generation tasks; none of the requested tasks generates")
    if value < 1 or value > limit:
        raise error(422, f"max_new_tokens: {value} is outside 1..{limit}")
    return value


def parse(pred: Predictor, names: list[str], inputs: list, strict: bool):
    """The task checks of :meth:`Predictor.parse_inputs`, as a 422 naming each input and field."""
    try:
        parsed = pred.parse_inputs(names, inputs, strict)
    except DataError as exc:
        problems = [f"inputs[{p.line - 1}].{p.field}: {p.message}" if p.line else str(p) for p in exc.problems]
        raise error(422, "; ".join(problems[:5]), problems) from None
    except PolytaskError as exc:
        raise error(422, str(exc)) from None
    nothing = [i for i in range(len(inputs)) if all(i in parsed.skipped.get(n, {}) for n in names)]
    if nothing:
        needs = "; ".join(f"{n} needs {', '.join(pred.tasks[n].column(f) for f in pred.tasks[n].text_fields)}"
                          for n in names)
        problems = [f"inputs[{i}]: has the fields of none of the requested tasks ({needs})" for i in nothing]
        raise error(422, "; ".join(problems[:5]), problems)
    return parsed


def render(result: AllPredictions, names: list[str], i: int) -> dict[str, Any]:
    out = {}
    for name in names:
        pred = result[name][i]
        if pred is None and i in result.skipped.get(name, {}):
            continue
        item: dict[str, Any] = {"prediction": pred}
        text = getattr(pred, "text", None)
        if isinstance(text, str) and text != pred:
            item["text"] = text  # a generation task's raw text when its label was parsed from it
        score = result.scores.get(name, [None] * (i + 1))[i]
        if score is not None:
            item["scores"] = score
        out[name] = item
    return out


def split(result: AllPredictions, a: int, b: int) -> AllPredictions:
    part = AllPredictions({n: p[a:b] for n, p in result.items()},
                          {n: {i - a: r for i, r in s.items() if a <= i < b} for n, s in result.skipped.items()})
    part.scores = {n: s[a:b] for n, s in result.scores.items()}
    return part


def create_app(pred: Predictor, settings: ServeSettings | None = None) -> FastAPI:
    """The FastAPI application serving ``pred`` (see docs/serving.md)."""
    settings = settings or ServeSettings()
    metrics = Metrics()

    def model_call(key, inputs: list) -> AllPredictions:
        names, scores, max_new_tokens = key
        with metrics.model_time.time():
            return pred.predict_all(inputs, settings.batch_size, tasks=list(names), scores=scores,
                                    max_new_tokens=max_new_tokens)

    batcher = MicroBatcher(model_call, split, settings.effective_batch_size, settings.max_wait_ms,
                           observe=metrics.batch.observe)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        await batcher.start()
        try:
            yield
        finally:
            await batcher.stop()

    app = FastAPI(title="polytask", version=__version__, lifespan=lifespan,
                  description=f"Multi-task model from run folder `{pred.run_dir.name}`: "
                              f"{', '.join(pred.tasks)}. See docs/serving.md.")
    app.state.predictor, app.state.settings, app.state.metrics, app.state.batcher = pred, settings, metrics, batcher
    install_handlers(app, metrics)
    add_routes(app, pred, settings, batcher, metrics)
    return app


def install_handlers(app: FastAPI, metrics: Metrics) -> None:
    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException):
        body = exc.detail if isinstance(exc.detail, dict) else {"detail": exc.detail, "problems": [str(exc.detail)]}
        return JSONResponse(body, status_code=exc.status_code)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError):
        problems = []
        for e in exc.errors():
            if e.get("type") == "json_invalid":
                reason = (e.get("ctx") or {}).get("error", "")
                return JSONResponse({"detail": f"body: invalid JSON ({reason})", "problems": ["body: invalid JSON"]},
                                    status_code=400)
            loc = ".".join(str(x) for x in e.get("loc", ()) if x != "body") or "body"
            problems.append(f"{loc}: {e.get('msg', 'invalid')}")
        return JSONResponse({"detail": "; ".join(problems), "problems": problems}, status_code=422)

    @app.middleware("http")
    async def observe(request: Request, call_next):
        start = time.perf_counter()
        try:
            response = await call_next(request)
        except Exception:  # noqa: BLE001 - never a stack trace to the client
            log.exception("request %s %s failed", request.method, request.url.path)
            response = JSONResponse({"detail": "internal error", "problems": ["internal error"]}, status_code=500)
        path = getattr(request.scope.get("route"), "path", "unmatched")
        metrics.requests.labels(path, request.method, str(response.status_code)).inc()
        metrics.latency.labels(path).observe(time.perf_counter() - start)
        return response


def add_routes(app: FastAPI, pred: Predictor, settings: ServeSettings, batcher: MicroBatcher,
               metrics: Metrics) -> None:
    async def answer(names: list[str], inputs: list, scores: bool, max_new_tokens: int | None,
                     strict: bool) -> tuple[AllPredictions, list]:
        inputs = check_inputs(inputs, settings)
        max_new_tokens = check_max_new_tokens(pred, names, max_new_tokens, settings)
        parse(pred, names, inputs, strict)
        try:
            result = await batcher.submit((tuple(names), scores, max_new_tokens), inputs)
        except PolytaskError as exc:
            raise error(422, str(exc)) from None
        return result, inputs

    @app.get("/health", summary="Liveness: the model is loaded")
    async def health() -> dict:
        return {"status": "ok", "run": pred.run_dir.name, "tasks": list(pred.tasks), "version": __version__}

    @app.get("/v1/tasks", summary="The model's tasks: type, input fields, labels, metric")
    async def tasks() -> dict:
        return {"architecture": pred.cfg.architecture.name, "tasks": [describe_task(pred, n) for n in pred.tasks]}

    @app.post("/v1/predict", summary="Every requested task's predictions, one encoder pass per input")
    async def predict(req: PredictRequest) -> dict:
        names = check_tasks(pred, req.tasks)
        result, inputs = await answer(names, req.inputs, req.scores, req.max_new_tokens, strict=False)
        skipped = [{"input": i, "task": n, "reason": r} for n, s in result.skipped.items() for i, r in sorted(s.items())]
        return {"predictions": [render(result, names, i) for i in range(len(inputs))], "skipped": skipped}

    @app.post("/v1/predict/{task}", summary="One task's predictions")
    async def predict_task(task: str, req: TaskRequest) -> dict:
        if task not in pred.tasks:
            raise error(404, f"unknown task '{task}'; known tasks: {', '.join(pred.tasks)}")
        result, inputs = await answer([task], req.inputs, req.scores, req.max_new_tokens, strict=True)
        return {"task": task, "predictions": [render(result, [task], i)[task] for i in range(len(inputs))]}

    @app.get("/metrics", summary="Prometheus metrics: request count and latency, batch sizes")
    async def prometheus() -> Response:
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)


def describe_task(pred: Predictor, name: str) -> dict[str, Any]:
    t = pred.tasks[name]
    return {
        "name": name,
        "type": t.type_name,
        "fields": [t.column(f) for f in t.text_fields],
        "optional_fields": [t.column(f) for f in t.optional_fields],
        "labels": list(getattr(t, "labels", None) or []) or None,
        "metric": t.main_metric,
        "one_pass": pred.shares_encoder(name),
    }
