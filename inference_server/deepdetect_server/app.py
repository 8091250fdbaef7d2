"""`create_app(settings)`: the ASGI app, its lifespan, and the two middlewares every request passes.

Nothing happens at import time: settings come in, an app comes out, so tests and benchmarks can build
several side by side. Middlewares are plain ASGI (not BaseHTTPMiddleware) because they must see the body
stream itself: the upload limit counts bytes as they arrive and stops reading at the limit, so an
unbounded body is never buffered, whatever Content-Length claims.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI
from starlette.routing import Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from . import __version__
from .api import install_error_handlers, register_routes
from .config import ServerSettings
from .core import Core
from .errors import BadRequest, PayloadTooLarge, StartupError, headers_for, status_for
from .metrics import Metrics

log = logging.getLogger("deepdetect.app")
access_log = logging.getLogger("deepdetect.access")

_PROBES = {"/v2/health/live", "/v2/health/ready", "/metrics"}


async def _send_error(send: Send, exc: PayloadTooLarge | BadRequest) -> None:
    import json

    body = json.dumps({"error": exc.message}).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
               (b"connection", b"close")]
    headers += [(k.lower().encode(), v.encode()) for k, v in headers_for(exc).items()]
    await send({"type": "http.response.start", "status": status_for(exc), "headers": headers})
    await send({"type": "http.response.body", "body": body})


class BodyLimitMiddleware:
    """413 for bodies over the limit: refused up front by Content-Length, or cut off while streaming."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.max_bytes
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None:
            if not declared.isdigit():
                await _send_error(send, BadRequest("invalid Content-Length"))
                return
            if int(declared) > limit:
                await _send_error(send, _too_large(limit))
                return
        received = 0

        async def counted() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise _too_large(limit)  # the route's body read fails; the error table answers 413
            return message

        await self.app(scope, counted, send)


def _too_large(limit: int) -> PayloadTooLarge:
    return PayloadTooLarge(f"request body is over the upload limit of {limit} bytes")


class ObserveMiddleware:
    """requests_total, request_duration_seconds, inflight_requests by route template; one log line each."""

    def __init__(self, app: ASGIApp, metrics: Metrics, routes: list[Any]) -> None:
        self.app = app
        self.metrics = metrics
        self.routes = routes

    def _template(self, scope: Scope) -> str:
        for route in self.routes:
            match, _ = route.matches(scope)
            if match == Match.FULL:
                return str(route.path)
        return "unmatched"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        route = self._template(scope)
        status = 500
        started = time.perf_counter()

        async def send_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        self.metrics.inflight.inc()
        try:
            await self.app(scope, receive, send_status)
        finally:
            elapsed = time.perf_counter() - started
            self.metrics.inflight.dec()
            self.metrics.requests.labels(route=route, status=str(status)).inc()
            self.metrics.request_duration.labels(route=route).observe(elapsed)
            level = logging.DEBUG if route in _PROBES else logging.INFO
            fields = {"method": scope["method"], "route": route, "status": status,
                      "duration_ms": round(elapsed * 1000, 2)}
            access_log.log(level, "request", extra=fields)


def create_app(settings: ServerSettings, core: Core | None = None) -> FastAPI:
    """The server app; the model loads and warms in the lifespan, before the socket takes traffic."""
    core = core or Core(settings)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        try:
            await core.start()
        except StartupError as exc:
            log.error("startup failed", extra={"error": exc.message})
            await core.stop(grace_s=0)
            raise
        try:
            yield
        finally:
            # uvicorn has already waited for in-flight requests; this frees the queue, threads and GPU.
            await core.stop(grace_s=max(0.5, settings.shutdown_grace_s / 4))

    app = FastAPI(title="DeepDetect inference server", version=__version__, lifespan=lifespan)
    app.state.core = core
    install_error_handlers(app)
    register_routes(app, core)
    app.add_middleware(BodyLimitMiddleware, max_bytes=settings.max_upload_bytes)
    app.add_middleware(ObserveMiddleware, metrics=core.metrics, routes=app.router.routes)
    return app
