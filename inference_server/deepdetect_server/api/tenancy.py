"""Who is calling: the API key's name (the tenant), checked once per request and remembered for the log."""

from __future__ import annotations

from fastapi import Request

from ..core import Core


def authorize(request: Request, core: Core) -> str:
    """The tenant of a request (401 without a valid key); the access log and metrics read it back."""
    tenant = core.authorize(request.headers.get("authorization"))
    request.state.tenant = tenant
    return tenant
