"""The HTTP scoring service (FastAPI; ``seqctr serve``). Needs the ``serve`` extra.

- ``POST /v1/score`` ``{"user": ..., "candidates": [...], "history": [optional], "timestamp": optional}``
  -> ``{"scores": [...], "model": "<fingerprint>", "cached": true|false}`` (``timestamp``: the
  request's time for a time-aware model — HSTU's time bias; default the latest event's)
- ``POST /v1/users/{user}/events`` ``{"events": [{"item": ..., "timestamp": ...}, ...]}`` ->
  ``{"user": ..., "history_len": n, "model": ...}`` (appends; the cache is updated incrementally)
- ``GET /healthz`` (``compiled``: scoring through the bundle's compiled graph), ``GET /metrics`` (Prometheus text; one view over every worker process when
  ``PROMETHEUS_MULTIPROC_DIR`` is set, as ``seqctr serve`` does), OpenAPI docs at ``/docs``.

Every answer carries an ``X-Request-ID`` header (the client's, when it sent a sane one). Every
error is JSON ``{"error": "...", "field": "..." | null}``: 422 a body that is not JSON or not the
schema, 400 a value the scorer refuses (ids, times), 413 a body, candidate list, event list or
history over its cap, 404 / 405 unknown path or method, 503 the store unreachable (with
``Retry-After``). A 500 is a server fault, never a client's: it is logged with its traceback and
request id.
"""
from __future__ import annotations

import collections
import contextlib
import logging
import os
import re
import threading
import time
import traceback
import uuid
from typing import Any, Union

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from pydantic import BaseModel, ConfigDict, Field, StrictFloat, StrictInt, StrictStr
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match

from ..errors import SeqctrError, TooLarge
from .stores import StoreUnavailable

log = logging.getLogger("seqctr.serve")

RawId = Union[StrictStr, StrictInt]
Time = Union[StrictInt, StrictFloat, StrictStr, None]      # a bool is not a time


class Event(BaseModel):
    model_config = ConfigDict(extra="forbid")
    item: RawId
    timestamp: Time = None


class ScoreRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    user: RawId
    candidates: list[RawId] = Field(min_length=1)
    history: Union[list[Union[RawId, Event]], None] = None
    timestamp: Time = None   # the request's time (default: latest event's)


class EventsRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    events: list[Union[Event, RawId]] = Field(min_length=1)


def error_response(status: int, message: str, field: str | None = None, headers: dict | None = None) -> JSONResponse:
    """The one error shape of the service."""
    return JSONResponse({"error": message, "field": field}, status_code=status, headers=headers)


_REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,64}")


class Edge:
    """Outermost ASGI middleware: a request id on every answer (``X-Request-ID``), the body cap
    (413 by ``Content-Length`` before a byte is read, or counted as a chunked body arrives), every
    answer observed for the metrics (``observe(scope, status, seconds)``), and any exception that
    escaped the app answered 500 and logged with its traceback and the request id."""

    def __init__(self, app, max_body: int, observe=None):
        self.app, self.max_body, self.observe = app, max_body, observe

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        t0 = time.perf_counter()
        headers = dict(scope.get("headers", ()))       # ASGI header names are lower-case
        given = headers.get(b"x-request-id", b"").decode("latin-1")
        rid = given if _REQUEST_ID.fullmatch(given) else uuid.uuid4().hex
        scope["seqctr.request_id"] = rid
        status = {"code": 500, "started": False}

        async def send_with_id(msg):
            if msg["type"] == "http.response.start":
                status["code"], status["started"] = msg["status"], True
                extra = [(b"x-request-id", rid.encode()), (b"server-timing", server_timing(scope, t0).encode())]
                msg = dict(msg, headers=list(msg.get("headers", [])) + extra)
            await send(msg)

        try:
            app_receive = await self._capped(scope, receive, headers)
            if app_receive is None:                       # refused (413) or the client went away
                if scope.get("seqctr.reason") == "too_large":
                    await error_response(413, f"request body over {self.max_body} bytes", "body")(
                        scope, receive, send_with_id)
            else:
                await self.app(scope, app_receive, send_with_id)
        except Exception as e:  # a server fault: answered, logged, never a crash
            scope["seqctr.reason"] = type(e).__name__
            log.error("500 %s %s request_id=%s: %s\n%s", scope.get("method"), scope.get("path"), rid, e,
                      traceback.format_exc())
            if not status["started"]:
                await error_response(500, f"internal error: {type(e).__name__} (request id {rid})")(
                    scope, receive, send_with_id)
        if self.observe is not None:
            self.observe(scope, status["code"], time.perf_counter() - t0)

    async def _capped(self, scope, receive, headers):
        """The ``receive`` the app gets, or None when the body is over the cap (or the client left)."""
        size = headers.get(b"content-length")
        if size is not None:
            if size.isdigit() and int(size) <= self.max_body:
                return receive
            scope["seqctr.reason"] = "too_large"
            return None
        chunks, total = [], 0
        while True:
            msg = await receive()
            if msg["type"] != "http.request":          # the client went away: nothing to answer
                return None
            total += len(msg.get("body", b""))
            if total > self.max_body:
                scope["seqctr.reason"] = "too_large"
                return None
            chunks.append(msg.get("body", b""))
            if not msg.get("more_body", False):
                break
        pending = [{"type": "http.request", "body": b"".join(chunks), "more_body": False}]

        async def replay():
            return pending.pop() if pending else await receive()

        return replay


class _Turns:
    """At most ``n`` holders at once, the others served in arrival order (a ``threading.Semaphore`` wakes
    waiters in no set order: under load one request could wait many turns, the p99 an operator reads)."""

    def __init__(self, n: int):
        self.n, self.lock, self.queue = n, threading.Lock(), collections.deque()

    def __enter__(self):
        with self.lock:
            if self.n > 0 and not self.queue:
                self.n -= 1
                return self
            turn = threading.Event()
            self.queue.append(turn)
        turn.wait()                  # handed a slot by the holder before it
        return self

    def __exit__(self, *exc):
        with self.lock:
            if self.queue:
                self.queue.popleft().set()          # the slot passes straight to the longest waiter
            else:
                self.n += 1
        return False


def server_timing(scope, t0: float) -> str:
    """The ``Server-Timing`` header (W3C) of a response: the parts a handler recorded in
    ``scope["seqctr.timing"]`` (seconds; for a score: ``wait``, for a score slot; ``cache``, the store's read
    and decode or the build; ``model``, the scoring) and ``app``, the whole time in the app until the answer
    starts (body read, validation, handler, JSON) — in milliseconds. A client's latency minus ``app`` is the
    time spent queued and on the wire (docs/results/service_ml100k.md)."""
    parts = [f"{name};dur={1e3 * sec:.3f}" for name, sec in scope.get("seqctr.timing", {}).items()]
    return ", ".join(parts + [f"app;dur={1e3 * (time.perf_counter() - t0):.3f}"])


def parse_server_timing(header: str) -> dict[str, float]:
    """A ``Server-Timing`` header as :func:`server_timing` writes it -> ``{part: ms}`` (for clients and benchmarks)."""
    out = {}
    for part in filter(None, (p.strip() for p in header.split(","))):
        name, _, dur = part.partition(";dur=")
        out[name] = float(dur)
    return out


def _items(events) -> tuple[list, list]:
    items = [e.item if isinstance(e, Event) else e for e in events]
    ts = [e.timestamp if isinstance(e, Event) else None for e in events]
    return items, ts


def _loc(e: dict) -> str:
    return ".".join(str(x) for x in e.get("loc", ()) if x != "body") or "body"


class Metrics:
    """The service's Prometheus metrics. Labels are route templates (``/v1/users/{user}/events``;
    any unknown path is ``unmatched``) and bounded reasons, never raw client input. With
    ``PROMETHEUS_MULTIPROC_DIR`` set, every worker writes its values there and ``/metrics`` reads
    them all (prometheus-client's multiprocess mode): one view of the whole service."""

    def __init__(self, app: FastAPI, store_kind: str):
        self.app = app
        self.multiprocess = bool(os.environ.get("PROMETHEUS_MULTIPROC_DIR"))
        reg = self.registry = CollectorRegistry()
        self.requests = Counter("seqctr_requests", "HTTP requests", ["endpoint", "status"], registry=reg)
        self.latency = Histogram("seqctr_request_seconds", "request latency", ["endpoint"], registry=reg,
                                 buckets=(.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5))
        self.client_errors = Counter("seqctr_client_errors", "4xx answers by reason", ["endpoint", "reason"],
                                     registry=reg)
        self.server_errors = Counter("seqctr_server_errors", "5xx answers by reason", ["endpoint", "reason"],
                                     registry=reg)
        self.hits = Counter("seqctr_cache_hits", "scores served from a stored cache", registry=reg)
        self.misses = Counter("seqctr_cache_misses", "caches built (missing or stale)", registry=reg)
        # in-process caches add up over workers; a shared store's figures are the same in every worker
        mode = "livesum" if store_kind == "memory" else "mostrecent"
        self.cache_bytes = Gauge("seqctr_cache_bytes", "bytes of caches held (in process: resident bytes; "
                                 "in a shared store: the stored byte forms)", registry=reg, multiprocess_mode=mode)
        self.cached_users = Gauge("seqctr_cached_users", "users with a cache held", registry=reg,
                                  multiprocess_mode=mode)

    def route(self, scope) -> str:
        for r in self.app.router.routes:
            match, _ = r.matches(scope)
            if match != Match.NONE:
                return getattr(r, "path", "unmatched")
        return "unmatched"

    def observe(self, scope, status: int, seconds: float) -> None:
        route = self.route(scope)
        self.requests.labels(route, str(status)).inc()
        self.latency.labels(route).observe(seconds)
        reason = scope.get("seqctr.reason", "other")
        if 400 <= status < 500:
            self.client_errors.labels(route, reason).inc()
        elif status >= 500:
            self.server_errors.labels(route, reason if status != 500 else "internal").inc()

    def set_cache(self, stats: dict) -> None:
        if stats:
            self.cache_bytes.set(stats.get("cache_bytes", 0))
            self.cached_users.set(stats.get("cached_users", 0))

    def render(self) -> bytes:
        if self.multiprocess:
            from prometheus_client import multiprocess

            reg = CollectorRegistry()
            multiprocess.MultiProcessCollector(reg)
            return generate_latest(reg)
        return generate_latest(self.registry)


_STATUS_REASON = {404: "not_found", 405: "method_not_allowed"}


def _offline_docs() -> bool:
    import importlib.util

    return importlib.util.find_spec("swagger_ui_bundle") is not None


def _serve_docs_offline(app: FastAPI) -> None:
    """``/docs`` from the Swagger UI files of the ``swagger-ui-bundle`` package (part of the serve
    extra) under ``/docs-static``, not from a CDN: the page works on a host without internet."""
    from fastapi.openapi.docs import get_swagger_ui_html
    from starlette.staticfiles import StaticFiles
    from swagger_ui_bundle import swagger_ui_path

    app.mount("/docs-static", StaticFiles(directory=str(swagger_ui_path)), name="docs-static")

    @app.get("/docs", include_in_schema=False)
    def docs():
        return get_swagger_ui_html(openapi_url=app.openapi_url, title=f"{app.title} - docs",
                                   swagger_js_url="/docs-static/swagger-ui-bundle.js",
                                   swagger_css_url="/docs-static/swagger-ui.css",
                                   swagger_favicon_url="/docs-static/favicon-32x32.png")


def reload_scorer(model: str, old):
    """The scorer of the bundle ``model`` with ``old``'s settings and histories (a live reload)."""
    from .bundle import load_bundle

    return old.with_bundle(load_bundle(model))


class ReloadRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    model: Union[StrictStr, None] = None     # a bundle folder (default: the served one, read again)


def create_app(scorer, max_candidates: int = 1000, max_events: int = 1000, max_body: int = 1 << 20,
               live=None, admin_token: str = "", score_slots: int = 0) -> FastAPI:
    """The service around a :class:`~seqctr.serving.scorer.Scorer` (its store holds the state).
    ``live`` (:class:`~seqctr.serving.live.Live`): the swappable scorer, made here when not given;
    ``admin_token``: enables ``POST /v1/admin/reload`` for requests that carry it as a bearer token
    (no token: the route does not exist); ``score_slots``: at most this many score requests compute at
    once in this worker, the others wait their turn in arrival order (0: no bound, each request computes
    in its own thread as it arrives; the wait is the ``wait`` part of ``Server-Timing``)."""
    import hmac

    from .live import Live

    offline_docs = _offline_docs()
    app = FastAPI(title="seqctr scoring service", version=scorer.bundle.info.get("seqctr", ""),
                  description="Click probabilities for a user's candidates from a seqctr model bundle.",
                  docs_url=None if offline_docs else "/docs")
    if offline_docs:
        _serve_docs_offline(app)
    live = live or Live(scorer, str(scorer.bundle.path), reload_scorer)
    metrics = Metrics(app, getattr(scorer.store, "kind", "?"))
    in_process = getattr(scorer.store, "kind", "") == "memory"
    app.add_middleware(Edge, max_body=max_body, observe=metrics.observe)
    slots = _Turns(score_slots) if score_slots > 0 else contextlib.nullcontext()

    def refuse(request: Request, status: int, reason: str, message: str, field: str | None = None, headers=None):
        request.scope["seqctr.reason"] = reason
        return error_response(status, message, field, headers)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError):
        errors = exc.errors()
        if errors and errors[0].get("type") == "json_invalid":
            return refuse(request, 422, "malformed_json", f"body: not valid JSON ({errors[0].get('ctx', {}).get('error', '')})",
                          "body")
        parts = [f"{_loc(e)}: {e.get('msg')}" for e in errors]
        return refuse(request, 422, "validation", "; ".join(parts) or "invalid request",
                      _loc(errors[0]) if errors else None)

    @app.exception_handler(StarletteHTTPException)
    async def framework(request: Request, exc: StarletteHTTPException):
        if exc.status_code == 400:       # the body could not be parsed: bad UTF-8, nesting too deep, huge ints
            cause = exc.__cause__
            why = f"{type(cause).__name__}" if cause is not None else "unreadable"
            return refuse(request, 422, "malformed_json", f"body: not valid JSON ({why})", "body")
        reason = _STATUS_REASON.get(exc.status_code, f"http_{exc.status_code}")
        message = {404: f"no such path: {request.url.path[:200]}",
                   405: f"method {request.method} not allowed here"}.get(exc.status_code, str(exc.detail))
        return refuse(request, exc.status_code, reason, message, headers=getattr(exc, "headers", None))

    @app.exception_handler(StoreUnavailable)
    async def unavailable(request: Request, exc: StoreUnavailable):
        log.warning("503 %s %s request_id=%s: %s", request.method, request.url.path,
                    request.scope.get("seqctr.request_id"), exc)
        return refuse(request, 503, "store_unavailable", f"store unavailable, retry later: {exc}",
                      headers={"Retry-After": str(exc.retry_after)})

    @app.exception_handler(TooLarge)
    async def too_large(request: Request, exc: TooLarge):
        return refuse(request, 413, "too_large", str(exc), exc.field)

    @app.exception_handler(SeqctrError)
    async def bad_input(request: Request, exc: SeqctrError):
        return refuse(request, 400, "bad_input", str(exc), getattr(exc, "field", None))

    def cache_figures(s) -> None:
        if in_process:              # cheap in process; a shared store is asked at /metrics only
            metrics.set_cache(s.store.stats())

    # every handler reads live.scorer once: a request finishes on the model it started with
    @app.post("/v1/score")
    def score(req: ScoreRequest, request: Request) -> dict[str, Any]:
        s = live.scorer
        if len(req.candidates) > max_candidates:
            return refuse(request, 413, "too_large", f"candidates: {len(req.candidates)} over the cap of "
                          f"{max_candidates}", "candidates")
        history, times = (None, None) if req.history is None else _items(req.history)
        timing = request.scope.setdefault("seqctr.timing", {})
        t0 = time.perf_counter()
        with slots:
            timing["wait"] = time.perf_counter() - t0
            probs, cached = s.score_ex(req.user, req.candidates, history, times, req.timestamp, timing=timing)
        if history is None:
            (metrics.hits if cached else metrics.misses).inc()
            cache_figures(s)
        return {"scores": [float(p) for p in probs], "model": s.fingerprint, "cached": cached}

    @app.post("/v1/users/{user}/events")
    def events(user: str, req: EventsRequest, request: Request) -> dict[str, Any]:
        s = live.scorer
        if len(req.events) > max_events:
            return refuse(request, 413, "too_large", f"events: {len(req.events)} over the cap of {max_events}",
                          "events")
        items, ts = _items(req.events)
        n = s.append(user, items, ts)
        cache_figures(s)
        return {"user": user, "history_len": n, "model": s.fingerprint}

    @app.get("/healthz")
    def healthz() -> dict[str, Any]:
        s = live.scorer
        return {"status": "ok", "model": s.fingerprint, "store": getattr(s.store, "kind", "?"),
                "generation": live.generation, "compiled": s.compiled is not None}

    @app.get("/metrics")
    def metrics_page() -> Response:
        metrics.set_cache(live.scorer.store.stats())
        return Response(metrics.render(), media_type=CONTENT_TYPE_LATEST)

    if admin_token:
        @app.post("/v1/admin/reload")
        def reload(request: Request, req: Union[ReloadRequest, None] = None) -> Any:
            given = request.headers.get("authorization", "")
            if not hmac.compare_digest(given.encode(), f"Bearer {admin_token}".encode()):
                return refuse(request, 401, "unauthorized", "admin: a bearer token is required", "authorization")
            return live.reload(req.model if req is not None else None)

    return app


def configure_logging(level: str = "warning") -> None:
    """The service's own log lines (``seqctr.serve``: every 5xx with its traceback) to stderr, once."""
    logger = logging.getLogger("seqctr")
    if not logger.handlers:
        h = logging.StreamHandler()
        h.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s pid=%(process)d %(message)s"))
        logger.addHandler(h)
    wanted = logging.getLevelName(level.upper())
    logger.setLevel(min(logging.WARNING, wanted) if isinstance(wanted, int) else logging.WARNING)


def app_from_env():
    """uvicorn factory for ``seqctr serve --workers N`` (each worker builds its own app from the
    ``SEQCTR_SERVE_*`` variables that ``seqctr serve`` sets)."""
    from .scorer import Scorer
    from .bundle import load_bundle
    from .stores import open_store

    from ..utils.malloc import keep_freed_memory, resident_bytes, start_trimmer, trim_slack

    configure_logging(os.environ.get("SEQCTR_SERVE_LOG_LEVEL", "warning"))
    keep_freed_memory()        # a worker process: keep freed buffers (seqctr.utils.malloc), as the CLI does
    threads = int(os.environ.get("SEQCTR_SERVE_THREADS", 0))
    if threads > 0:
        import torch

        torch.set_num_threads(threads)
    from .live import Live, read_control

    control = os.environ.get("SEQCTR_SERVE_CONTROL") or None
    ctl = read_control(control) if control else {"generation": 0}
    # the served bundle; a worker (re)started after a reload loads the one the control file names
    model = ctl["model"] if ctl["generation"] > 0 else os.environ["SEQCTR_SERVE_MODEL"]
    bundle = load_bundle(model)
    store = open_store(os.environ.get("SEQCTR_SERVE_STORE", "memory"), bundle.fingerprint,
                       int(os.environ.get("SEQCTR_SERVE_CACHE_BYTES", 256 << 20)),
                       os.environ.get("SEQCTR_SERVE_HISTORY_FILE") or None)
    scorer = Scorer(bundle, store, max_history=int(os.environ.get("SEQCTR_SERVE_MAX_HISTORY", 0)) or None,
                    codec=os.environ.get("SEQCTR_SERVE_CACHE_CODEC") or None,      # None: the bundle's
                    max_len=int(os.environ.get("SEQCTR_SERVE_WINDOW", 0)) or None,
                    rebuild_first_layer=os.environ.get("SEQCTR_SERVE_REBUILD_FIRST_LAYER") == "1" or None,
                    compiled={"always": True, "never": False}.get(os.environ.get("SEQCTR_SERVE_COMPILED", "auto")))
    live = Live(scorer, model, reload_scorer, control, ctl["generation"])
    live.watch()
    # resident memory held to this worker's base + its cache budget + a slack (seqctr.utils.malloc)
    start_trimmer(resident_bytes() + getattr(store, "cache_bytes", 0) + trim_slack())
    histories = os.environ.get("SEQCTR_SERVE_HISTORIES")
    if histories:                   # an in-process store (one worker): load its histories here
        import json

        from .histories import load_histories

        load_histories(store, **json.loads(histories))
    return create_app(scorer, int(os.environ.get("SEQCTR_SERVE_MAX_CANDIDATES", 1000)),
                      int(os.environ.get("SEQCTR_SERVE_MAX_EVENTS", 1000)),
                      int(os.environ.get("SEQCTR_SERVE_MAX_BODY", 1 << 20)), live=live,
                      admin_token=os.environ.get("SEQCTR_SERVE_ADMIN_TOKEN", ""),
                      score_slots=int(os.environ.get("SEQCTR_SERVE_SCORE_SLOTS", 0)))


__all__ = ["create_app", "app_from_env", "Edge", "Metrics", "error_response", "parse_server_timing"]
