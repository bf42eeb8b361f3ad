"""The FastAPI application: endpoints, request checks, error responses and metrics.

A run whose tasks read images (docs/vision.md) takes each image as base64 in the JSON endpoints
and as files on ``POST /v1/upload`` and ``POST /v1/upload/{task}`` (``multipart/form-data``);
:mod:`polytask.serve.images` checks them (size, pixels, decodable, mode) before the model.

Every error is a JSON object ``{"detail": message, "problems": [...]}`` with a 4xx status
naming the field (``inputs[2].text: empty text``) or the known tasks; an unexpected failure is
a 500 ``{"detail": "internal error"}`` (logged by the server, never sent to the client). Echoed
values are cut to a few hundred characters and lone surrogates escaped (:func:`printable`).
"""

from __future__ import annotations

import logging
import time
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, File, Form, HTTPException, Request, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.concurrency import run_in_threadpool
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest
from pydantic import BaseModel, ConfigDict, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

from polytask._version import __version__
from polytask.data.unicode import lone_surrogate, printable
from polytask.errors import DataError, PolytaskError
from polytask.predict import AllPredictions, Predictor
from polytask.serve.batcher import MicroBatcher
from polytask.serve.docs import add_docs
from polytask.serve.images import ImageProblems, image_tasks, json_images, uploaded_images
from polytask.serve.limits import RequestLimits
from polytask.serve.settings import ServeSettings

log = logging.getLogger("polytask.serve")


class PredictRequest(BaseModel):
    """Inputs to predict; each is a string (the task's text), a list of words (tagging) or an object
    of fields (``{"text_a": ..., "text_b": ...}``: the task's field or column names)."""

    model_config = ConfigDict(extra="forbid", strict=True, json_schema_extra={"examples": [
        {"inputs": ["the chef burned the pasta"], "tasks": ["topic"], "scores": True}]})
    inputs: list[Any] = Field(description="strings, lists of words, or objects of fields; an image task's "
                                          "image: the file's bytes as base64 (or a data:image/...;base64, URI)")
    tasks: list[str] | None = Field(None, description="tasks to predict (default: every task)")
    scores: bool = Field(False, description="add label probabilities where a task has them")
    max_new_tokens: int | None = Field(None, description="generation tasks: decode at most this many tokens")


class TaskRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, json_schema_extra={"examples": [
        {"inputs": ["the chef burned the pasta"], "scores": True}]})
    inputs: list[Any] = Field(description="strings, lists of words, or objects of fields; an image task's "
                                          "image: the file's bytes as base64 (or a data:image/...;base64, URI)")
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


def error_body(detail: str, problems: list[str]) -> dict:
    """The JSON of a 4xx answer: each message cut to a few hundred characters and encodable (a
    lone surrogate in an echoed value or field name is escaped); at most 100 problems."""
    shown = [printable(str(p)) for p in problems[:100]]
    if len(problems) > 100:
        shown.append(f"... and {len(problems) - 100} more problems")
    return {"detail": printable(str(detail), 1000), "problems": shown}


def value_size(value: Any, limit: int) -> int:
    """Characters of ``value`` as it counts against ``--max-chars``: a string's length, a number's
    or other scalar's text, containers summed (stops counting past ``limit``)."""
    if isinstance(value, str):
        return len(value)
    if isinstance(value, (list, dict)):
        total = 0
        for v in (value if isinstance(value, list) else [*value.keys(), *value.values()]):
            total += value_size(v, limit) + 1
            if total > limit:
                break
        return total
    return len(str(value)) if isinstance(value, (int, float, bool)) or value is None else 1


def check_count(inputs: list, settings: ServeSettings, what: str = "inputs") -> list:
    if not inputs:
        raise error(422, f"{what}: empty list; give at least one input")
    if len(inputs) > settings.max_inputs:
        raise error(413, f"{what}: {len(inputs)} inputs; at most {settings.max_inputs} per request")
    return inputs


def check_inputs(inputs: list, settings: ServeSettings) -> list:
    """Structural checks and limits; the task checks (empty text, missing fields) come after."""
    check_count(inputs, settings)
    problems = []
    for i, item in enumerate(inputs):
        words = item if isinstance(item, list) else [item]
        if not isinstance(item, dict) and not all(isinstance(w, str) for w in words):
            problems.append(f"inputs[{i}]: expected a string, a list of words or an object of fields, "
                            f"got {type(item).__name__}")
            continue
        chars = value_size(list(item.values()) if isinstance(item, dict) else words, settings.max_chars)
        if chars > settings.max_chars:
            problems.append(f"inputs[{i}]: {'more than ' if not isinstance(item, str) else ''}{chars} characters; "
                            f"at most {settings.max_chars} per input (values of every type count)")
            continue
        surrogate = lone_surrogate(item, f"inputs[{i}]")
        if surrogate:
            problems.append(surrogate)
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


def parse(pred: Predictor, names: list[str], inputs: list, strict: bool) -> dict[str, dict[int, str]]:
    """The task checks of :meth:`Predictor.parse_inputs`, as a 422 naming each input and field, one
    problem per input and field with the tasks that found it; returns the skips per task."""
    found: dict[tuple, list[str]] = {}  # (input index, message) -> the tasks that found it
    skipped: dict[str, dict[int, str]] = {}
    for name in names:
        try:
            skipped[name] = pred.parse_inputs([name], inputs, strict).skipped.get(name, {})
        except DataError as exc:
            for p in exc.problems:
                key = (p.line - 1, f"inputs[{p.line - 1}].{p.field}: {p.message}") if p.line else (-1, str(p))
                found.setdefault(key, []).append(name)
        except PolytaskError as exc:
            raise error(422, str(exc)) from None
    if found:
        problems = [f"{message} (task{'s' if len(tasks) > 1 else ''} {', '.join(tasks)})"
                    for (_, message), tasks in sorted(found.items(), key=lambda kv: kv[0][0])]
        raise error(422, "; ".join(problems[:5]), problems)
    nothing = [i for i in range(len(inputs)) if all(i in skipped.get(n, {}) for n in names)]
    if nothing:
        needs = "; ".join(f"{n} needs {', '.join(pred.tasks[n].column(f) for f in pred.tasks[n].input_fields)}"
                          for n in names)
        problems = [f"inputs[{i}]: has the fields of none of the requested tasks ({needs})" for i in nothing]
        raise error(422, "; ".join(problems[:5]), problems)
    return skipped


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

    app = FastAPI(title="polytask", version=__version__, lifespan=lifespan, docs_url=None, redoc_url=None,
                  description=f"Multi-task model from run folder `{pred.run_dir.name}`: "
                              f"{', '.join(pred.tasks)}. See docs/serving.md.")
    app.state.predictor, app.state.settings, app.state.metrics, app.state.batcher = pred, settings, metrics, batcher
    add_docs(app)  # /docs with Swagger UI's files served by this server (works offline)
    app.add_middleware(RequestLimits, max_body_bytes=settings.max_body_bytes, body_timeout=settings.body_timeout,
                       upload_prefix=UPLOAD if image_tasks(pred) else None)
    install_handlers(app, metrics)
    answer = add_routes(app, pred, settings, batcher, metrics)
    if image_tasks(pred):
        add_upload_routes(app, pred, settings, answer)
    return app


def install_handlers(app: FastAPI, metrics: Metrics) -> None:
    @app.exception_handler(StarletteHTTPException)  # ours, and the router's 404 and 405
    async def http_error(request: Request, exc: StarletteHTTPException):
        if isinstance(exc.detail, dict):
            body = error_body(exc.detail["detail"], exc.detail["problems"])
        else:
            detail = {404: f"no endpoint {request.url.path}; see /docs",
                      405: f"{request.method} is not allowed on {request.url.path}"}.get(exc.status_code, exc.detail)
            body = error_body(detail, [detail])
        return JSONResponse(body, status_code=exc.status_code, headers=getattr(exc, "headers", None))

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError):
        problems = []
        for e in exc.errors():
            if e.get("type") == "json_invalid":
                reason = (e.get("ctx") or {}).get("error", "")
                return JSONResponse(error_body(f"body: invalid JSON ({reason})", ["body: invalid JSON"]),
                                    status_code=400)
            loc = ".".join(str(x) for x in e.get("loc", ()) if x != "body") or "body"
            problems.append(f"{loc}: {e.get('msg', 'invalid')}")
        return JSONResponse(error_body("; ".join(problems[:5]), problems), status_code=422)

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
               metrics: Metrics):
    """The JSON endpoints; returns ``answer`` (checks, then the batched model call) for the upload ones."""
    images = bool(image_tasks(pred))

    async def answer(names: list[str], inputs: list, scores: bool, max_new_tokens: int | None,
                     strict: bool, decoded: bool = False) -> tuple[AllPredictions, list]:
        if images and not decoded:  # base64 images -> arrays (never a path on the server's disk)
            inputs = await decode_off_loop(json_images, pred, names, check_count(inputs, settings), settings)
        elif not decoded:
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

    return answer


UPLOAD = "/v1/upload"


async def decode_off_loop(function, *args):
    """Run an image decoder on the thread pool (PIL releases the GIL), its problems as one 4xx."""
    try:
        return await run_in_threadpool(function, *args)
    except ImageProblems as exc:
        raise error(exc.status, str(exc), exc.messages) from None


def add_upload_routes(app: FastAPI, pred: Predictor, settings: ServeSettings, answer) -> None:
    """``POST /v1/upload`` and ``/v1/upload/{task}``: image files as multipart/form-data parts named ``images``."""
    files_doc = "image files (JPEG, PNG, ...), one part each, in the order of the predictions"

    async def decoded(images: list[UploadFile]) -> list:
        check_count(images, settings, "images")
        files = [(f.filename or "", await f.read()) for f in images]
        return await decode_off_loop(uploaded_images, files, pred, settings)

    @app.post(UPLOAD, summary="Every requested task's predictions for uploaded image files (multipart/form-data)")
    async def upload(images: list[UploadFile] = File(..., description=files_doc),
                     tasks: list[str] | None = Form(None, description="tasks to predict (default: every task)"),
                     scores: bool = Form(False, description="add label probabilities")) -> dict:
        names = check_tasks(pred, tasks)
        result, inputs = await answer(names, await decoded(images), scores, None, strict=False, decoded=True)
        return {"files": [f.filename for f in images],
                "predictions": [render(result, names, i) for i in range(len(inputs))]}

    @app.post(UPLOAD + "/{task}", summary="One task's predictions for uploaded image files (multipart/form-data)")
    async def upload_task(task: str, images: list[UploadFile] = File(..., description=files_doc),
                          scores: bool = Form(False, description="add label probabilities")) -> dict:
        if task not in pred.tasks:
            raise error(404, f"unknown task '{task}'; known tasks: {', '.join(pred.tasks)}")
        result, inputs = await answer([task], await decoded(images), scores, None, strict=True, decoded=True)
        return {"task": task, "files": [f.filename for f in images],
                "predictions": [render(result, [task], i)[task] for i in range(len(inputs))]}


def describe_task(pred: Predictor, name: str) -> dict[str, Any]:
    t = pred.tasks[name]
    return {
        "name": name,
        "type": t.type_name,
        "fields": [t.column(f) for f in t.input_fields],
        "reads": "image" if t.inputs is not None else "text",
        "optional_fields": [t.column(f) for f in t.optional_fields],
        "labels": list(getattr(t, "labels", None) or []) or None,
        "metric": t.main_metric,
        "one_pass": pred.shares_encoder(name),
    }
