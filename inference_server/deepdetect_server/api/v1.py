"""POST /v1/detect: one image or video (multipart `file` or a raw body) -> one verdict.

`max_frames` (query or form field) lowers the number of frames a video is sampled into.
"""

from __future__ import annotations

import time

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from ..core import Core
from ..errors import BadRequest
from ..services import Services
from .tenancy import authorize
from .uploads import read_upload


def cache_header(found: str | None) -> dict[str, str]:
    """X-Cache: hit (also when an identical request in flight computed it), miss, or bypass (Redis down)."""
    if found is None:
        return {}
    return {"X-Cache": "hit" if found in ("hit", "coalesced") else found}


def register(app: FastAPI, core: Core, services: Services) -> None:
    @app.post("/v1/detect")
    async def detect(request: Request) -> JSONResponse:
        started = time.perf_counter()
        tenant = authorize(request, core)
        if services.limiter is not None:
            await services.limiter.admit(tenant)  # before the body is read: refusing is cheap
        data, fields = await read_upload(request, ("max_frames",))
        if not data:
            raise BadRequest("no media: send multipart field 'file' or the media as the request body")
        params = {"max_frames": core.frames_for(fields)} if "max_frames" in fields else {}
        verdict, found = await services.score(data, params, tenant)
        body = {**verdict.body, "latency_ms": round((time.perf_counter() - started) * 1000, 2)}
        return JSONResponse(body, headers=cache_header(found))
