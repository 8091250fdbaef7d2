"""GET /metrics: Prometheus text format from the app's own registry. Open, like the probes."""

from __future__ import annotations

from fastapi import FastAPI
from fastapi.responses import Response

from ..core import Core
from ..metrics import CONTENT_TYPE


def register(app: FastAPI, core: Core) -> None:
    @app.get("/metrics")
    async def metrics() -> Response:
        return Response(core.metrics.render(), media_type=CONTENT_TYPE)
