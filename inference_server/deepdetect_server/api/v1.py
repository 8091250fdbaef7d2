"""POST /v1/detect: one image (multipart `file` or a raw body) -> one verdict."""

from __future__ import annotations

import time
from typing import Any

from fastapi import FastAPI, Request
from starlette.datastructures import UploadFile

from ..core import Core
from ..errors import BadRequest


async def read_image(request: Request) -> bytes:
    """The image bytes of a request; the body size limit is enforced by the ASGI middleware below us."""
    content_type = request.headers.get("content-type", "")
    if content_type.startswith("multipart/form-data"):
        async with request.form(max_files=1, max_fields=8) as form:
            part = form.get("file")
            if not isinstance(part, UploadFile):
                raise BadRequest("multipart body needs a 'file' part holding the image")
            return await part.read()
    # Anything else is taken as the raw image: its type is sniffed from the bytes, not from the header.
    return await request.body()


def register(app: FastAPI, core: Core) -> None:
    @app.post("/v1/detect")
    async def detect(request: Request) -> dict[str, Any]:
        started = time.perf_counter()
        core.authorize(request.headers.get("authorization"))
        data = await read_image(request)
        if not data:
            raise BadRequest("no image: send multipart field 'file' or the image as the request body")
        [pred] = await core.predict([data])
        return {
            "label": pred.label,
            "score": pred.score,
            "threshold": core.threshold,
            "model": {"name": core.settings.model_name, "digest": core.digest},
            "latency_ms": round((time.perf_counter() - started) * 1000, 2),
        }
