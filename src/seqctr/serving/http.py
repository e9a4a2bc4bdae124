"""The HTTP scoring service (FastAPI; ``seqctr serve``). Needs the ``serve`` extra.

- ``POST /v1/score`` ``{"user": ..., "candidates": [...], "history": [optional], "timestamp": optional}``
  -> ``{"scores": [...], "model": "<fingerprint>", "cached": true|false}`` (``timestamp``: the
  request's time for a time-aware model — HSTU's time bias; default the latest event's)
- ``POST /v1/users/{user}/events`` ``{"events": [{"item": ..., "timestamp": ...}, ...]}`` ->
  ``{"user": ..., "history_len": n, "model": ...}`` (appends; the cache is updated incrementally)
- ``GET /healthz``, ``GET /metrics`` (Prometheus text), OpenAPI docs at ``/docs``.

Client mistakes are 4xx JSON ``{"error": "..."}`` (422 malformed JSON / wrong types / empty
candidates, 413 a body — by its Content-Length or counted as a chunked body arrives — or a
candidate list over its cap, 400 bad ids); never a 500.
"""
from __future__ import annotations

import time
from typing import Any, Union

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from pydantic import BaseModel, ConfigDict, Field, StrictInt, StrictStr

from ..errors import SeqctrError

RawId = Union[StrictStr, StrictInt]


class Event(BaseModel):
    model_config = ConfigDict(extra="forbid")
    item: RawId
    timestamp: Union[StrictInt, float, StrictStr, None] = None


class ScoreRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    user: RawId
    candidates: list[RawId] = Field(min_length=1)
    history: Union[list[Union[RawId, Event]], None] = None
    timestamp: Union[StrictInt, float, StrictStr, None] = None   # the request's time (default: latest event's)


class EventsRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    events: list[Union[Event, RawId]] = Field(min_length=1)


class BodyCap:
    """ASGI middleware refusing a request body over ``max_body`` bytes with 413 however it is sent:
    by its ``Content-Length`` (refused before a byte is read), or chunked — counted as it arrives,
    refused at most one chunk past the cap, else replayed whole to the app. ``on_reject(scope,
    seconds)`` is told of every refusal (the service's metrics)."""

    def __init__(self, app, max_body: int, on_reject=None):
        self.app, self.max_body, self.on_reject = app, max_body, on_reject

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        t0 = time.perf_counter()
        size = dict(scope.get("headers", ())).get(b"content-length")   # ASGI header names are lower-case
        if size is not None:
            if size.isdigit() and int(size) <= self.max_body:
                return await self.app(scope, receive, send)
            return await self._refuse(scope, receive, send, t0)
        chunks, total = [], 0
        while True:
            msg = await receive()
            if msg["type"] != "http.request":          # the client went away: nothing to answer
                return
            total += len(msg.get("body", b""))
            if total > self.max_body:
                return await self._refuse(scope, receive, send, t0)
            chunks.append(msg.get("body", b""))
            if not msg.get("more_body", False):
                break
        pending = [{"type": "http.request", "body": b"".join(chunks), "more_body": False}]

        async def replay():
            return pending.pop() if pending else await receive()

        await self.app(scope, replay, send)

    async def _refuse(self, scope, receive, send, t0: float) -> None:
        resp = JSONResponse({"error": f"request body over {self.max_body} bytes"}, status_code=413)
        await resp(scope, receive, send)
        if self.on_reject:
            self.on_reject(scope, time.perf_counter() - t0)


def _items(events) -> tuple[list, list]:
    items = [e.item if isinstance(e, Event) else e for e in events]
    ts = [e.timestamp if isinstance(e, Event) else None for e in events]
    return items, ts


def _endpoint(scope) -> str:
    """The metrics label of a request's path (a user's events path under one label)."""
    path = scope.get("path", "?")
    return "/v1/users/{user}/events" if path.startswith("/v1/users/") else path


def create_app(scorer, max_candidates: int = 1000, max_events: int = 1000, max_body: int = 1 << 20) -> FastAPI:
    """The service around a :class:`~seqctr.serving.scorer.Scorer` (its store holds the state)."""
    app = FastAPI(title="seqctr scoring service", version=scorer.bundle.info.get("seqctr", ""),
                  description="Click probabilities for a user's candidates from a seqctr model bundle.")
    reg = CollectorRegistry()
    requests = Counter("seqctr_requests", "HTTP requests", ["endpoint", "status"], registry=reg)
    latency = Histogram("seqctr_request_seconds", "request latency", ["endpoint"], registry=reg,
                        buckets=(.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5))
    hits = Counter("seqctr_cache_hits", "scores served from a stored cache", registry=reg)
    misses = Counter("seqctr_cache_misses", "caches built (missing or stale)", registry=reg)
    cache_bytes = Gauge("seqctr_cache_bytes", "bytes of caches held in process", registry=reg)
    cached_users = Gauge("seqctr_cached_users", "users with a cache held in process", registry=reg)
    fp = scorer.fingerprint

    def error(status: int, message: str, **extra) -> JSONResponse:
        return JSONResponse({"error": message, **extra}, status_code=status)

    @app.middleware("http")
    async def guard(request: Request, call_next):
        t0 = time.perf_counter()
        try:
            resp = await call_next(request)
        except Exception as e:  # a server fault: answered, logged in the status, never a crash
            resp = error(500, f"internal error: {type(e).__name__}")
        count(request.scope, resp.status_code, time.perf_counter() - t0)
        return resp

    def count(scope, status: int, seconds: float) -> None:
        endpoint = _endpoint(scope)
        requests.labels(endpoint, str(status)).inc()
        latency.labels(endpoint).observe(seconds)

    # outermost: an oversized body is refused (and counted) before anything reads it
    app.add_middleware(BodyCap, max_body=max_body, on_reject=lambda scope, seconds: count(scope, 413, seconds))

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError):
        parts = []
        for e in exc.errors():
            where = ".".join(str(x) for x in e.get("loc", ()) if x != "body")
            parts.append(f"{where or 'body'}: {e.get('msg')}")
        return error(422, "; ".join(parts) or "invalid request")

    @app.exception_handler(SeqctrError)
    async def bad_input(request: Request, exc: SeqctrError):
        return error(400, str(exc))

    @app.post("/v1/score")
    def score(req: ScoreRequest) -> dict[str, Any]:
        if len(req.candidates) > max_candidates:
            return error(413, f"candidates: {len(req.candidates)} over the cap of {max_candidates}")
        history, times = (None, None) if req.history is None else _items(req.history)
        probs, cached = scorer.score_ex(req.user, req.candidates, history, times, req.timestamp)
        if history is None:
            (hits if cached else misses).inc()
        return {"scores": [float(p) for p in probs], "model": fp, "cached": cached}

    @app.post("/v1/users/{user}/events")
    def events(user: str, req: EventsRequest) -> dict[str, Any]:
        if len(req.events) > max_events:
            return error(413, f"events: {len(req.events)} over the cap of {max_events}")
        items, ts = _items(req.events)
        n = scorer.append(user, items, ts)
        return {"user": user, "history_len": n, "model": fp}

    @app.get("/healthz")
    def healthz() -> dict[str, Any]:
        return {"status": "ok", "model": fp, "store": getattr(scorer.store, "kind", "?")}

    @app.get("/metrics")
    def metrics() -> Response:
        st = scorer.store.stats()
        if st:
            cache_bytes.set(st.get("cache_bytes", 0))
            cached_users.set(st.get("cached_users", 0))
        return Response(generate_latest(reg), media_type=CONTENT_TYPE_LATEST)

    return app


def app_from_env():
    """uvicorn factory for ``seqctr serve --workers N`` (each worker builds its own app from the
    ``SEQCTR_SERVE_*`` variables that ``seqctr serve`` sets)."""
    import os

    from .scorer import Scorer
    from .bundle import load_bundle
    from .stores import open_store

    from ..utils.malloc import keep_freed_memory

    keep_freed_memory()        # a worker process: keep freed buffers (seqctr.utils.malloc), as the CLI does
    threads = int(os.environ.get("SEQCTR_SERVE_THREADS", 0))
    if threads > 0:
        import torch

        torch.set_num_threads(threads)
    bundle = load_bundle(os.environ["SEQCTR_SERVE_MODEL"])
    store = open_store(os.environ.get("SEQCTR_SERVE_STORE", "memory"), bundle.fingerprint,
                       int(os.environ.get("SEQCTR_SERVE_CACHE_BYTES", 256 << 20)),
                       os.environ.get("SEQCTR_SERVE_HISTORY_FILE") or None)
    return create_app(Scorer(bundle, store), int(os.environ.get("SEQCTR_SERVE_MAX_CANDIDATES", 1000)),
                      int(os.environ.get("SEQCTR_SERVE_MAX_EVENTS", 1000)),
                      int(os.environ.get("SEQCTR_SERVE_MAX_BODY", 1 << 20)))
