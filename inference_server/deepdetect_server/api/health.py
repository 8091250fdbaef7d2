"""Probes: liveness, readiness, per-model readiness. Always open (no API key): kubelets carry none."""

from __future__ import annotations

from fastapi import FastAPI
from fastapi.responses import JSONResponse

from ..core import Core


def register(app: FastAPI, core: Core) -> None:
    @app.get("/v2/health/live")
    async def live() -> JSONResponse:
        return JSONResponse({"live": True})

    @app.get("/v2/health/ready")
    async def ready() -> JSONResponse:
        # 503 rather than 200 + false: kubelet and load balancers only read the status code.
        return JSONResponse({"ready": core.ready}, status_code=200 if core.ready else 503)

    @app.get("/v2/models/{name}/ready")
    async def model_ready(name: str) -> JSONResponse:
        core.check_model(name)
        return JSONResponse({"name": name, "ready": core.ready}, status_code=200 if core.ready else 503)

    @app.get("/v2/models/{name}/versions/{version}/ready")
    async def model_version_ready(name: str, version: str) -> JSONResponse:
        core.check_model(name, version)
        return JSONResponse({"name": name, "ready": core.ready}, status_code=200 if core.ready else 503)
