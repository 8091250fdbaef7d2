"""HTTP edge: thin FastAPI routes over the core, and the one place errors become statuses.

`register_routes(app, core, services)` attaches every route; `install_error_handlers(app)` maps our
exceptions through `errors.HTTP_STATUS` to `{"error": msg}` bodies (the v2 protocol's error shape, used by
v1 too). `authorize` is how every authenticated route learns its tenant.
"""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from ..core import Core
from ..errors import DeepDetectError, headers_for, status_for
from ..services import Services
from . import health, jobs, metrics, v1, v2

log = logging.getLogger("deepdetect.api")


def register_routes(app: FastAPI, core: Core, services: Services) -> None:
    health.register(app, core)
    v1.register(app, core, services)
    jobs.register(app, core, services)
    v2.register(app, core, services)
    metrics.register(app, core)


def install_error_handlers(app: FastAPI) -> None:
    async def ours(_: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, DeepDetectError)
        return JSONResponse({"error": exc.message}, status_code=status_for(exc), headers=headers_for(exc))

    async def starlette(_: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, StarletteHTTPException)
        return JSONResponse({"error": str(exc.detail)}, status_code=exc.status_code, headers=exc.headers)

    async def unexpected(_: Request, exc: Exception) -> JSONResponse:
        log.error("unhandled error", exc_info=exc)
        return JSONResponse({"error": "internal server error"}, status_code=500)

    app.add_exception_handler(DeepDetectError, ours)
    app.add_exception_handler(StarletteHTTPException, starlette)
    app.add_exception_handler(Exception, unexpected)
