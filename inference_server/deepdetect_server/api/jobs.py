"""The jobs API: POST /v1/jobs (same input as /v1/detect) -> 202 + Location; GET; DELETE cancels.

A job belongs to its tenant (the API key's name): another tenant's job is a 404, like one that never existed
or whose result expired. `Idempotency-Key` (at most 255 printable characters) is scoped to the tenant: the
same key with the same body answers the first job again (`Idempotent-Replayed: true`), with another body 409.
`callback_url` comes as a multipart field next to `file`, or as a query parameter with a raw body.
"""

from __future__ import annotations

import hashlib
import json
import re
import uuid
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from ..core import Core
from ..errors import BadRequest, JobNotFound, PayloadTooLarge
from ..jobs.model import JobRecord, NewJob
from ..services import Services, sha256_hex
from .tenancy import authorize
from .uploads import read_upload

MAX_IDEMPOTENCY_KEY = 255
_JOB_ID = re.compile(r"^[0-9a-f]{32}$")


def not_found(job_id: str) -> JobNotFound:
    return JobNotFound(f"no job {job_id[:64]!r}: unknown, another API key's, or expired")


def idempotency_key(request: Request) -> str | None:
    """sha256 of the Idempotency-Key header (bounded, never stored as sent); None without one."""
    key = request.headers.get("idempotency-key")
    if key is None:
        return None
    if not 0 < len(key) <= MAX_IDEMPOTENCY_KEY or not key.isprintable():
        raise BadRequest(f"Idempotency-Key must be 1-{MAX_IDEMPOTENCY_KEY} printable characters")
    return hashlib.sha256(key.encode()).hexdigest()


async def fingerprint(data: bytes, params: dict[str, Any], callback: str) -> str:
    """What makes two submissions "the same body" for an Idempotency-Key."""
    extra = json.dumps([params, callback], sort_keys=True)
    return hashlib.sha256(f"{await sha256_hex(data)}|{extra}".encode()).hexdigest()


def register(app: FastAPI, core: Core, services: Services) -> None:
    @app.post("/v1/jobs", status_code=202)
    async def submit(request: Request) -> JSONResponse:
        tenant = authorize(request, core)
        store = services.jobs()
        idem = idempotency_key(request)
        if services.limiter is not None:
            await services.limiter.admit(tenant)
        data, fields = await read_upload(request, ("callback_url", "max_frames"))
        callback = fields.get("callback_url", "")
        if not data:
            raise BadRequest("no media: send multipart field 'file' or the media as the request body")
        if len(data) > core.settings.jobs_max_payload_bytes:
            limit = core.settings.jobs_max_payload_bytes
            raise PayloadTooLarge(f"media is over the job payload limit of {limit} bytes")
        core.check_media(data)  # refuse now what could never be scored, not after it queued
        if callback:
            services.callbacks.check(callback, tenant)
        params: dict[str, Any] = {}
        if "max_frames" in fields:
            params["max_frames"] = core.frames_for(fields)
        if services.limiter is not None:
            await services.limiter.charge_media(tenant, core.media_cost(data, params))
        new = NewJob(id=uuid.uuid4().hex, tenant=tenant, payload=data, params=params, callback_url=callback,
                     body_sha256=await fingerprint(data, params, callback), idempotency_key=idem)
        submitted = await store.submit(new)
        headers = {"Location": f"/v1/jobs/{submitted.job.id}"}
        if submitted.created:
            services.job_submitted()
        else:
            headers["Idempotent-Replayed"] = "true"
        return JSONResponse(submitted.job.public(), status_code=202, headers=headers)

    async def find(job_id: str, request: Request, cancel: bool = False) -> JobRecord:
        tenant = authorize(request, core)
        store = services.jobs()
        job = None
        if _JOB_ID.match(job_id):
            job = await (store.cancel(job_id, tenant) if cancel else store.get(job_id, tenant))
        if job is None:
            raise not_found(job_id)
        return job

    @app.get("/v1/jobs/{job_id}")
    async def get(job_id: str, request: Request) -> JSONResponse:
        return JSONResponse((await find(job_id, request)).public())

    @app.delete("/v1/jobs/{job_id}")
    async def cancel(job_id: str, request: Request) -> JSONResponse:
        job = await find(job_id, request, cancel=True)
        services.metrics.job_transitions.labels(state="canceled").inc()
        if services.sender is not None:
            services.sender.wake()
        return JSONResponse(job.public())
