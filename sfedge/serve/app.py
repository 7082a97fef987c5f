"""The FastAPI app: OpenAI's chat completions over videos, models, health and metrics.

Routes: POST /v1/chat/completions (plain JSON or server-sent events), GET /v1/models, GET /health
(503 until the engines are loaded and warmed up), GET /metrics (Prometheus). One worker answers
one request at a time (worker.py); the handlers only validate, queue, wait and format.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from pydantic import ValidationError
from sse_starlette import EventSourceResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from ..errors import SfedgeError
from ..spec import GenerationSpec
from .errors import ApiError, error_body, from_runtime, from_validation
from .media import Media, conversation
from .metrics import Metrics
from .schemas import FINISH, ChatRequest, chunk, completion, extension, new_id, usage
from .worker import Job, QueueFull, Task, Unavailable, Worker

log = logging.getLogger("sfedge.serve")
CHAT = "/v1/chat/completions"


@dataclass
class ServeConfig:
    engines: Path
    model_name: str
    provider: str = "cpu"
    allowed_dirs: list[Path] = field(default_factory=list)
    max_queue: int = 8
    max_upload_mb: float = 64.0
    request_timeout: float = 300.0
    api_key: str | None = None
    tmp_root: Path | None = None  # where the private temporary directory goes (default: $TMPDIR)

    @property
    def grace(self) -> float:
        """Seconds that running answers get to finish after SIGTERM before they are cancelled."""
        return min(self.request_timeout, 60.0)


def create_app(config: ServeConfig, load=None, on_fatal=lambda message: None, *, backend=None) -> FastAPI:
    """`load()`: the Pipeline (called on the worker thread, so /health answers 503 meanwhile).

    `backend(metrics)`, instead of `load`: what answers the jobs, with the Worker's interface (start, stop,
    ready, submit, withdraw, health); sfedge/cluster/ passes one that forwards them to Ray Serve replicas,
    whose own limits then do the queueing."""
    metrics = Metrics()
    media = Media(config.allowed_dirs, int(config.max_upload_mb * 2**20), config.tmp_root)
    worker = backend(metrics) if backend is not None else Worker(load, config.max_queue, metrics, on_fatal)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        worker.start()
        try:
            yield
        finally:
            await asyncio.to_thread(worker.stop)
            media.close()

    app = FastAPI(title="sfedge", lifespan=lifespan, docs_url=None, redoc_url=None)
    app.state.worker, app.state.media, app.state.metrics = worker, media, metrics
    body_limit = int(config.max_upload_mb * 2**20 * 4 / 3) + 2**20  # base64 + the JSON around it

    @app.exception_handler(ApiError)
    async def _api_error(request: Request, e: ApiError):
        return e.response()

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, e: RequestValidationError):
        return from_validation(e.errors()).response()

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, e: StarletteHTTPException):
        return JSONResponse(error_body(e.status_code, str(e.detail)), status_code=e.status_code,
                            headers=getattr(e, "headers", None))

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, e: Exception):
        log.exception("unexpected error")
        return JSONResponse(error_body(500, f"internal error: {type(e).__name__}"), status_code=500)

    app.add_middleware(_CountRequests, metrics=metrics)

    def authorize(request: Request) -> None:
        if config.api_key is None:
            return
        header = request.headers.get("authorization", "")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), config.api_key.encode()):
            raise ApiError(401, "missing or wrong API key: send 'Authorization: Bearer <key>'",
                           code="invalid_api_key", headers={"WWW-Authenticate": "Bearer"})

    @app.get("/health")
    async def health():
        if worker.ready.is_set():
            try:
                details = await asyncio.to_thread(worker.health)
            except Unavailable as e:
                return JSONResponse(error_body(503, str(e), code="unavailable"), status_code=503,
                                    headers={"Retry-After": "1"})
            return {"status": "ok", "model": config.model_name, **details}
        return JSONResponse(error_body(503, "the engines are loading", code="loading"), status_code=503,
                            headers={"Retry-After": "1"})

    @app.get("/metrics")
    async def metrics_route():
        return Response(metrics.render(), media_type=metrics.content_type)

    @app.get("/v1/models")
    async def models(request: Request):
        authorize(request)
        return {"object": "list", "data": [{"id": config.model_name, "object": "model", "created": 0,
                                            "owned_by": "sfedge"}]}

    @app.post(CHAT)
    async def chat(request: Request):
        t0 = time.perf_counter()
        authorize(request)
        if not worker.ready.is_set():
            raise ApiError(503, "the engines are loading: retry shortly", code="loading", headers={"Retry-After": "1"})
        body = await _read_body(request, body_limit)
        try:
            req = ChatRequest.model_validate_json(body)
        except ValidationError as e:
            raise from_validation(e.errors(include_url=False)) from None
        if req.model != config.model_name:
            raise ApiError(404, f"the model {req.model!r} does not exist: this server serves {config.model_name!r}",
                           param="model", code="model_not_found")
        conv = conversation(req)
        try:
            gen = GenerationSpec(max_new_tokens=req.max_completion_tokens or req.max_tokens or 128,
                                 temperature=req.temperature or 0.0, top_p=1.0 if req.top_p is None else req.top_p,
                                 top_k=req.top_k or 0, seed=req.seed)
        except ValueError as e:
            raise ApiError(400, str(e), code="invalid_value") from None
        if req.options is not None and any(not o.strip() for o in req.options):
            raise ApiError(400, "options must be non-empty strings", param="options", code="invalid_value")
        path, temporary = await asyncio.to_thread(media.resolve, conv.video, f"messages.{conv.video_message}.content")
        release = (lambda: media.release(path)) if temporary else (lambda: None)
        job = Job(Task(path, conv.question, req.options, gen, req.stops(), release, temporary, bool(req.stream)),
                  asyncio.get_running_loop())
        try:
            worker.submit(job)
        except QueueFull as e:
            release()
            raise _busy(e, config.max_queue) from None
        except Unavailable as e:
            release()
            raise ApiError(503, str(e), code="unavailable", headers={"Retry-After": "1"}) from None
        deadline = t0 + config.request_timeout
        gone = asyncio.ensure_future(_disconnected(request))  # until the response starts
        try:
            first = await _next_event(job, deadline, worker, gone, config.request_timeout)
            _raise_error(first)
            metrics.ttft.observe(time.perf_counter() - t0)
            rid = new_id()
            if req.stream:
                gone.cancel()  # sse-starlette watches for the disconnect from here on
                include_usage = bool(req.stream_options and req.stream_options.include_usage)
                events = _sse(job, first, rid, config.model_name, include_usage, deadline, worker, metrics, t0,
                              config.request_timeout)
                # on SIGTERM a running stream finishes (up to `grace` s), then it is cancelled
                return EventSourceResponse(events, sep="\n", ping=15, shutdown_grace_period=config.grace,
                                           headers=job.headers)
            event = first
            while event[0] == "piece":
                event = await _next_event(job, deadline, worker, gone, config.request_timeout)
                _raise_error(event)
            metrics.latency.observe(time.perf_counter() - t0)
            return JSONResponse(completion(rid, config.model_name, event[1]), headers=job.headers)
        except _ClientGone:
            return Response(status_code=499)  # nobody reads it; the metrics count it
        except BaseException:
            worker.withdraw(job, "disconnect")  # a no-op once the job is done
            raise
        finally:
            gone.cancel()

    return app


ROUTES = {CHAT, "/v1/models", "/health", "/metrics"}


class _ClientGone(Exception):
    pass


class _CountRequests:
    """ASGI middleware: counts every HTTP response by endpoint and status (499: the client left first)."""

    def __init__(self, app, metrics: Metrics):
        self.app, self.metrics = app, metrics

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        status = []

        async def counting_send(message):
            if message["type"] == "http.response.start":
                status.append(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, counting_send)
        finally:
            path = scope["path"] if scope["path"] in ROUTES else "other"
            self.metrics.requests.labels(path, str(status[0]) if status else "499").inc()


async def _read_body(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise ApiError(413, f"the request body is larger than the server accepts ({limit} bytes; --max-upload-mb)",
                       code="request_too_large")
    chunks, size = [], 0
    async for c in request.stream():
        size += len(c)
        if size > limit:
            raise ApiError(413, f"the request body is larger than the server accepts ({limit} bytes; "
                                "--max-upload-mb)", code="request_too_large")
        chunks.append(c)
    return b"".join(chunks)


async def _next_event(job: Job, deadline: float, worker: Worker, gone: asyncio.Future, timeout: float):
    """The job's next event. At the deadline the job is cancelled and the answer is 504; if the client
    leaves meanwhile (`gone` completes), the job is cancelled and _ClientGone raised."""
    get = asyncio.ensure_future(job.events.get())
    done, _ = await asyncio.wait({get, gone}, timeout=max(0.0, deadline - time.perf_counter()),
                                 return_when=asyncio.FIRST_COMPLETED)
    if get in done:
        return get.result()
    get.cancel()
    if gone in done:
        worker.withdraw(job, "disconnect")
        raise _ClientGone()
    worker.withdraw(job, "timeout")
    raise ApiError(504, f"no answer within the server's request timeout ({timeout:g} s)", code="timeout")


async def _disconnected(request: Request) -> None:
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return


def _busy(e: QueueFull, max_queue: int) -> ApiError:
    waiting = e.waiting if e.waiting is not None else max_queue
    return ApiError(429, f"the server is busy ({waiting} requests waiting): retry after {e.retry_after} s",
                    code="queue_full", headers={"Retry-After": str(e.retry_after)})


def _raise_error(event) -> None:
    kind, value = event
    if kind == "error":
        if isinstance(value, SfedgeError):
            raise from_runtime(str(value))
        if isinstance(value, QueueFull):  # a backend's queue limit, found once the job was sent
            raise _busy(value, value.waiting or 0)
        if isinstance(value, Unavailable):
            raise ApiError(503, str(value), code="unavailable")
        raise ApiError(500, f"internal error: {type(value).__name__}: {value}", code="internal_error")
    if kind == "cancelled":
        raise ApiError(503, "the request was cancelled (server shutting down)", code="cancelled")


async def _sse(job: Job, first, rid: str, model: str, include_usage: bool, deadline: float, worker: Worker,
               metrics: Metrics, t0: float, timeout: float) -> AsyncIterator[dict]:
    """OpenAI's stream: a role chunk, content chunks, a finish_reason chunk, [usage chunk], [DONE].
    Leading and trailing whitespace is dropped so the text equals the non-streamed answer."""
    created = int(time.time())

    def data(**kw) -> dict:
        return {"data": json.dumps(chunk(rid, model, created, include_usage=include_usage, **kw))}

    yield data(delta={"role": "assistant", "content": ""})
    event, started, held = first, False, ""
    try:
        while True:
            kind, value = event
            if kind == "piece":
                text = held + value if started else value.lstrip()
                started = started or bool(text)
                body = text.rstrip()
                held = text[len(body):]
                if body:
                    yield data(delta={"content": body})
            elif kind == "done":
                yield data(delta={}, finish=FINISH[value.stop_reason], sfedge=extension(value))
                if include_usage:
                    yield {"data": json.dumps({**chunk(rid, model, created, None), "usage": usage(value)})}
                metrics.latency.observe(time.perf_counter() - t0)
                break
            else:
                try:
                    _raise_error(event)
                except ApiError as e:
                    yield {"data": json.dumps(e.body())}
                break
            try:
                event = await asyncio.wait_for(job.events.get(), max(0.0, deadline - time.perf_counter()))
            except asyncio.TimeoutError:
                worker.withdraw(job, "timeout")
                yield {"data": json.dumps(error_body(504, f"the answer did not finish within the server's request "
                                                          f"timeout ({timeout:g} s)", code="timeout"))}
                break
        yield {"data": "[DONE]"}
    finally:
        worker.withdraw(job, "disconnect")  # a no-op once the job is done
