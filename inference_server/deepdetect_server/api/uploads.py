"""The uploaded media of a request, multipart or raw, shared by /v1/detect and /v1/jobs."""

from __future__ import annotations

from fastapi import Request
from starlette.datastructures import UploadFile

from ..errors import BadRequest


async def read_upload(request: Request, fields: tuple[str, ...] = ()) -> tuple[bytes, dict[str, str]]:
    """(media bytes, the named text fields). Multipart: part `file` plus the fields; anything else: the raw
    body, fields from the query string. The body size limit is enforced by the ASGI middleware below us."""
    content_type = request.headers.get("content-type", "")
    if not content_type.startswith("multipart/form-data"):
        # Taken as the raw media: its type is sniffed from the bytes, never from this header.
        found = {f: request.query_params[f] for f in fields if f in request.query_params}
        return await request.body(), found
    async with request.form(max_files=1, max_fields=8) as form:
        part = form.get("file")
        if not isinstance(part, UploadFile):
            raise BadRequest("multipart body needs a 'file' part holding the media")
        found = {}
        for name in fields:
            value = form.get(name, request.query_params.get(name))
            if value is None:
                continue
            if not isinstance(value, str):
                raise BadRequest(f"{name} must be a text field")
            found[name] = value
        return await part.read(), found
