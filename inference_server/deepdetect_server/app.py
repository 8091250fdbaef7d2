"""`create_app(settings)`: the ASGI app, its lifespan, and the two middlewares every request passes.

Nothing happens at import time: settings come in, an app comes out, so tests and benchmarks can build
several side by side. Middlewares are plain ASGI (not BaseHTTPMiddleware) because they must see the body
stream itself: the upload limit counts bytes as they arrive and stops reading at the limit, so an
unbounded body is never buffered, whatever Content-Length claims.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI
from starlette.routing import Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from . import __version__
from .api import install_error_handlers, register_routes
from .config import ServerSettings
from .core import Core
from .errors import (
    BadRequest,
    DeepDetectError,
    NotReady,
    PayloadTooLarge,
    StartupError,
    headers_for,
    status_for,
)
from .metrics import Metrics
from .services import Services

log = logging.getLogger("deepdetect.app")
access_log = logging.getLogger("deepdetect.access")

_PROBES = {"/v2/health/live", "/v2/health/ready", "/metrics"}


# An early answer (413, 401, 415...) while the client is still sending would make the kernel reset the
# connection, and the client would see "connection reset" instead of our status. So before the last byte of
# such a response we read and discard what is left of the body, bounded in bytes and time (nginx's
# lingering close), never keeping it.
_LINGER_BYTES = 8 * 1024 * 1024
_LINGER_S = 2.0


async def _linger(receive: Receive) -> None:
    deadline = time.monotonic() + _LINGER_S
    seen = 0
    while seen <= _LINGER_BYTES:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return
        try:
            message = await asyncio.wait_for(receive(), remaining)
        except TimeoutError:
            return
        if message["type"] != "http.request":
            return
        seen += len(message.get("body", b""))
        if not message.get("more_body", False):
            return


def _error_messages(exc: DeepDetectError) -> tuple[Message, bytes]:
    body = json.dumps({"error": exc.message}).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
               (b"connection", b"close")]
    headers += [(k.lower().encode(), v.encode()) for k, v in headers_for(exc).items()]
    return {"type": "http.response.start", "status": status_for(exc), "headers": headers}, body


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
        headers = dict(scope["headers"])
        declared = headers.get(b"content-length")
        has_body = (declared not in (None, b"0")) or b"chunked" in headers.get(b"transfer-encoding", b"")
        if declared is not None and (not declared.isdigit() or int(declared) > limit):
            error = BadRequest("invalid Content-Length") if not declared.isdigit() else _too_large(limit)
            start, body = _error_messages(error)
            await send(start)
            await send({"type": "http.response.body", "body": body, "more_body": True})
            await _linger(receive)
            await send({"type": "http.response.body", "body": b""})
            return
        received = 0
        body_done = not has_body

        async def counted() -> Message:
            nonlocal received, body_done
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                body_done = not message.get("more_body", False)
                if received > limit:
                    raise _too_large(limit)  # the route's body read fails; the error table answers 413
            return message

        async def lingering_send(message: Message) -> None:
            final = message["type"] == "http.response.body" and not message.get("more_body", False)
            if final and not body_done:
                await _linger(receive)
            await send(message)

        await self.app(scope, counted, lingering_send)


def _too_large(limit: int) -> PayloadTooLarge:
    return PayloadTooLarge(f"request body is over the upload limit of {limit} bytes")


class ObserveMiddleware:
    """requests_total, request_duration_seconds, inflight_requests by route template; one log line each."""

    def __init__(
        self, app: ASGIApp, metrics: Metrics, routes: list[Any], draining: Callable[[], bool]
    ) -> None:
        self.app = app
        self.metrics = metrics
        self.routes = routes
        self.draining = draining

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
        responded = False
        started = time.perf_counter()

        async def send_status(message: Message) -> None:
            nonlocal status, responded
            if message["type"] == "http.response.start":
                status, responded = message["status"], True
            await send(message)

        self.metrics.inflight.inc()
        try:
            await self.app(scope, receive, send_status)
        except asyncio.CancelledError:
            # uvicorn cancels what is left when the grace period runs out. A clean 503 tells the client
            # to retry elsewhere; a dropped connection would not. Nothing else cancels a request task.
            if responded or not self.draining():
                raise
            start, body = _error_messages(NotReady("server is shutting down: request not processed, retry"))
            status = 503
            await send(start)
            await send({"type": "http.response.body", "body": body})
        finally:
            elapsed = time.perf_counter() - started
            self.metrics.inflight.dec()
            self.metrics.requests.labels(route=route, status=str(status)).inc()
            self.metrics.request_duration.labels(route=route).observe(elapsed)
            level = logging.DEBUG if route in _PROBES else logging.INFO
            fields = {"method": scope["method"], "route": route, "status": status,
                      "duration_ms": round(elapsed * 1000, 2)}
            tenant = (scope.get("state") or {}).get("tenant")  # set by api.tenancy.authorize: a name
            if tenant is not None:
                fields["tenant"] = tenant
                self.metrics.tenant_requests.labels(tenant=tenant, status=str(status)).inc()
            access_log.log(level, "request", extra=fields)


def create_app(settings: ServerSettings, core: Core | None = None) -> FastAPI:
    """The server app; the model loads and warms in the lifespan, before the socket takes traffic."""
    core = core or Core(settings)
    services = Services(settings, core)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        try:
            await core.start()
            await services.start()
        except StartupError as exc:
            log.error("startup failed", extra={"error": exc.message})
            await services.stop(grace_s=0)
            await core.stop(grace_s=0)
            raise
        try:
            yield
        finally:
            # uvicorn has already waited for in-flight requests. Running jobs get half of what is left of
            # the grace period (the rest are released to other replicas), then the queue, threads and GPU.
            budget = core.stop_budget(default_s=max(0.5, settings.shutdown_grace_s / 4))
            await services.stop(grace_s=budget / 2)
            await core.stop(grace_s=core.stop_budget(default_s=budget / 2))

    app = FastAPI(title="DeepDetect inference server", version=__version__, lifespan=lifespan)
    app.state.core = core
    app.state.services = services
    install_error_handlers(app)
    register_routes(app, core, services)
    app.add_middleware(BodyLimitMiddleware, max_bytes=settings.max_upload_bytes)
    app.add_middleware(ObserveMiddleware, metrics=core.metrics, routes=app.router.routes,
                       draining=lambda: core.state in ("draining", "stopped"))
    return app
