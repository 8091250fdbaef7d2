"""Turn a checkpoint URI into a digest, so the operator can tell when the bytes behind it changed.

The digest goes into the pod-template annotation `deepdetect.io/checkpoint-digest`; a new digest rolls the
pods. The operator never downloads a checkpoint: it asks the source for a cheap fingerprint (a published
`.sha256`, an ETag, size + mtime) and leaves verification of the bytes to the pods' `fetch` init container.
Every failure is a `CheckpointResolveError` with a one-line message fit for a condition: no stack traces,
no credentials, no query strings (pre-signed URLs carry secrets there).
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import posixpath
import re
import threading
from collections import OrderedDict
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from typing import Any
from urllib.parse import unquote, urlsplit, urlunsplit

from .api import CheckpointSpec

__all__ = [
    "CheckpointResolveError",
    "ResolvedCheckpoint",
    "parse_duration",
    "redact_uri",
    "resolve_checkpoint",
]

_HEX64_TOKEN = re.compile(r"(?<![0-9A-Fa-f])[0-9A-Fa-f]{64}(?![0-9A-Fa-f])")
_DURATION_PART = re.compile(r"([0-9]+(?:\.[0-9]+)?)(ms|s|m|h)")
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}

_HASH_CHUNK = 1 << 20  # 1 MiB: large enough to keep hashlib busy, small enough to stay cheap in memory
_CACHE_MAX = 256
_HTTP_ATTEMPTS = 3
_HTTP_BACKOFF_S = 0.25
_CHECKSUM_MAX_BYTES = 4096  # a .sha256 file is one line; never read a whole checkpoint by mistake


@dataclass(frozen=True)
class ResolvedCheckpoint:
    digest: str  # "sha256:<hex>" when the bytes' hash is known, else "etag:<value>" / "http:<len>-<lastmod>"
    source: str  # "file", "http-etag", "http-sha256", "http-meta", "s3-etag", "pin"


class CheckpointResolveError(Exception):
    """The source could not be asked for a digest; the message is one human-readable line."""


def parse_duration(text: str) -> float:
    """Parse the CRD's duration syntax ("5m", "1h30m", "90s", "250ms", "0") into seconds."""
    s = text.strip()
    if s == "0":
        return 0.0
    pos, total = 0, 0.0
    for m in _DURATION_PART.finditer(s):
        if m.start() != pos:
            break
        total += float(m.group(1)) * _UNIT_SECONDS[m.group(2)]
        pos = m.end()
    if pos == 0 or pos != len(s):
        raise ValueError(f"invalid duration {text!r}: use e.g. 90s, 5m, 1h30m or 0")
    return total


def redact_uri(uri: str) -> str:
    """The URI without user-info, query or fragment: safe to put in a condition or an Event."""
    try:
        parts = urlsplit(uri)
    except ValueError:
        return "<unparseable uri>"
    netloc = parts.netloc.rsplit("@", 1)[-1]
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))


async def resolve_checkpoint(
    spec: CheckpointSpec,
    *,
    secret_data: dict[str, str] | None = None,
    timeout_s: float = 10.0,
    client: Any = None,
) -> ResolvedCheckpoint:
    """Resolve `spec` to a digest. A sha256 pin always wins: the pods verify the bytes against it.

    `secret_data` is the decoded `data` of `credentialsSecret` (str values), or None. `client` is a shared
    `httpx.AsyncClient` for http(s) (the operator's, see resolution.py); without one a client is built for
    this call only (a TLS context and CA bundle each time: fine for one call, not for 1,000 CRs).
    """
    if spec.sha256:
        return ResolvedCheckpoint(digest=f"sha256:{spec.sha256}", source="pin")
    uri = spec.uri
    scheme = uri.split("://", 1)[0].lower() if "://" in uri else ""
    creds = secret_data or {}
    if scheme == "file":
        return await _resolve_file(_file_path(uri))
    if scheme in ("http", "https"):
        if client is None:
            import httpx

            async with httpx.AsyncClient(follow_redirects=True) as own:
                return await _resolve_http(own, uri, creds, timeout_s)
        return await _resolve_http(client, uri, creds, timeout_s)
    if scheme == "s3":
        return await _resolve_s3(uri, spec.s3_endpoint, creds, timeout_s)
    if scheme == "pvc":
        raise CheckpointResolveError(
            "pvc:// checkpoints need spec.model.checkpoint.sha256: the operator cannot read the claim"
        )
    raise CheckpointResolveError(f"unsupported checkpoint URI scheme {scheme or '(none)'!r}")


# ---------------------------------------------------------------- file://

# (path, size, mtime_ns) -> hex. Polling a 300 MB checkpoint every few minutes must not rehash it each time;
# a rewrite changes mtime_ns (and usually size), which misses the cache.
_file_cache: OrderedDict[tuple[str, int, int], str] = OrderedDict()
_file_cache_lock = threading.Lock()


def _file_path(uri: str) -> str:
    # file:///a/b and file://a/b both mean /a/b: the renderer mounts the same path into the fetch container.
    parts = urlsplit(uri)
    return posixpath.normpath("/" + unquote(parts.netloc + parts.path).lstrip("/"))


def _hash_file(path: str) -> tuple[tuple[str, int, int], str]:
    st = os.stat(path)
    key = (os.path.abspath(path), st.st_size, st.st_mtime_ns)
    with _file_cache_lock:
        hit = _file_cache.get(key)
        if hit is not None:
            _file_cache.move_to_end(key)
            return key, hit
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(_HASH_CHUNK):
            h.update(chunk)
    hexdigest = h.hexdigest()
    with _file_cache_lock:
        _file_cache[key] = hexdigest
        while len(_file_cache) > _CACHE_MAX:
            _file_cache.popitem(last=False)
    return key, hexdigest


async def _resolve_file(path: str) -> ResolvedCheckpoint:
    try:
        # Hashing hundreds of MB would stall every other CR's handler if done on the event loop.
        _, hexdigest = await asyncio.to_thread(_hash_file, path)
    except FileNotFoundError:
        raise CheckpointResolveError(f"checkpoint file not found: {path}") from None
    except IsADirectoryError:
        raise CheckpointResolveError(f"checkpoint path is a directory, not a file: {path}") from None
    except PermissionError:
        raise CheckpointResolveError(f"permission denied reading checkpoint file: {path}") from None
    except OSError as exc:
        raise CheckpointResolveError(f"cannot read checkpoint file {path}: {exc.strerror or exc}") from None
    return ResolvedCheckpoint(digest=f"sha256:{hexdigest}", source="file")


# ---------------------------------------------------------------- http(s)://


def _http_auth(creds: dict[str, str]) -> tuple[dict[str, str], Any]:
    """Headers and httpx auth from the credentials Secret: `token` (Bearer) or `username`/`password`."""
    token = creds.get("token") or creds.get("bearerToken")
    if token:
        return {"Authorization": f"Bearer {token.strip()}"}, None
    if creds.get("username"):
        return {}, (creds["username"], creds.get("password", ""))
    return {}, None


def _checksum_url(uri: str) -> str:
    # The published checksum sits next to the object: <path>.sha256, same query (tokens travel along).
    parts = urlsplit(uri)
    return urlunsplit((parts.scheme, parts.netloc, parts.path + ".sha256", parts.query, ""))


def _normalise_etag(raw: str) -> str:
    value = raw.strip()
    if value[:2] in ("W/", "w/"):  # weak and strong validators of the same bytes compare equal
        value = value[2:]
    return value.strip().strip('"')


async def _resolve_http(client: Any, uri: str, creds: dict[str, str], timeout_s: float) -> ResolvedCheckpoint:
    import httpx

    headers, auth = _http_auth(creds)
    # Credentials and timeout go on each request, not on the client: one pooled client serves every CR.
    opts: dict[str, Any] = {"headers": headers, "timeout": httpx.Timeout(timeout_s)}
    if auth is not None:
        opts["auth"] = auth
    shown = redact_uri(uri)
    try:
        published = await _published_sha256(client, _checksum_url(uri), opts)
        if published:
            return ResolvedCheckpoint(digest=f"sha256:{published}", source="http-sha256")
        resp = await _request(client, "HEAD", uri, opts)
        if resp.status_code in (405, 501):
            # Some servers refuse HEAD: a streamed GET gives the same headers; close before the body.
            async with client.stream("GET", uri, **opts) as streamed:
                resp = streamed
    except httpx.TimeoutException:
        raise CheckpointResolveError(f"timed out after {timeout_s:g}s asking {shown}") from None
    except httpx.TransportError as exc:
        raise CheckpointResolveError(f"cannot reach {shown}: {_transport_reason(exc)}") from None
    if resp.status_code >= 400:
        raise CheckpointResolveError(f"HEAD {shown}: HTTP {resp.status_code} {resp.reason_phrase}".rstrip())
    etag = resp.headers.get("etag")
    if etag and _normalise_etag(etag):
        return ResolvedCheckpoint(digest=f"etag:{_normalise_etag(etag)}", source="http-etag")
    length = resp.headers.get("content-length")
    lastmod = resp.headers.get("last-modified")
    if length and lastmod:
        try:
            stamp = str(int(parsedate_to_datetime(lastmod).timestamp()))
        except (TypeError, ValueError):
            stamp = re.sub(r"[^0-9A-Za-z]+", "", lastmod)
        return ResolvedCheckpoint(digest=f"http:{length.strip()}-{stamp}", source="http-meta")
    raise CheckpointResolveError(
        f"{shown} gives no ETag, no Content-Length + Last-Modified and no published .sha256: "
        "cannot detect changes; set spec.model.checkpoint.sha256"
    )


async def _request(client: Any, method: str, url: str, opts: dict[str, Any]) -> Any:
    """One request with a small retry on connection errors and 5xx (a restarting server, a flaky LB)."""
    import httpx

    for attempt in range(_HTTP_ATTEMPTS):
        last = attempt == _HTTP_ATTEMPTS - 1
        try:
            resp = await client.request(method, url, **opts)
        except (httpx.ConnectError, httpx.RemoteProtocolError, httpx.ReadError):
            if last:
                raise
        else:
            if resp.status_code < 500 or last:
                return resp
        await asyncio.sleep(_HTTP_BACKOFF_S * (2**attempt))
    raise AssertionError("unreachable")


async def _published_sha256(client: Any, url: str, opts: dict[str, Any]) -> str | None:
    """The hex digest from `<uri>.sha256` when the server publishes one, else None."""
    import httpx

    for attempt in range(_HTTP_ATTEMPTS):
        last = attempt == _HTTP_ATTEMPTS - 1
        try:
            async with client.stream("GET", url, **opts) as resp:
                if resp.status_code >= 500 and not last:
                    pass  # retried below
                elif resp.status_code != 200:
                    return None
                else:
                    body = b""
                    async for chunk in resp.aiter_bytes():
                        body += chunk
                        if len(body) >= _CHECKSUM_MAX_BYTES:
                            break
                    m = _HEX64_TOKEN.search(body[:_CHECKSUM_MAX_BYTES].decode("utf-8", "replace"))
                    # A 200 without a digest (an HTML fallback page, say) is not a checksum file.
                    return m.group(0).lower() if m else None
        except (httpx.ConnectError, httpx.RemoteProtocolError, httpx.ReadError):
            if last:
                raise
        await asyncio.sleep(_HTTP_BACKOFF_S * (2**attempt))
    return None


def _transport_reason(exc: Exception) -> str:
    text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return text[:200]


# ---------------------------------------------------------------- s3://


def _parse_s3(uri: str) -> tuple[str, str]:
    parts = urlsplit(uri)
    bucket, key = parts.netloc, unquote(parts.path.lstrip("/"))
    if not bucket or not key:
        raise CheckpointResolveError(f"invalid s3 URI {redact_uri(uri)!r}: expected s3://BUCKET/KEY")
    return bucket, key


def _s3_client(endpoint: str, creds: dict[str, str], timeout_s: float) -> Any:
    from deepdetect_server.s3 import make_s3_client  # shared with the fetch init container

    return make_s3_client(endpoint, creds, timeout_s)


def _head_s3(uri: str, endpoint: str, creds: dict[str, str], timeout_s: float) -> str:
    from botocore.exceptions import (
        BotoCoreError,
        ClientError,
        EndpointConnectionError,
        NoCredentialsError,
        NoRegionError,
    )

    bucket, key = _parse_s3(uri)
    shown = f"s3://{bucket}/{key}"
    try:
        head = _s3_client(endpoint, creds, timeout_s).head_object(Bucket=bucket, Key=key)
    except ClientError as exc:
        code = str(exc.response.get("Error", {}).get("Code", ""))
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        if code in ("404", "NoSuchKey", "NotFound", "NoSuchBucket"):
            raise CheckpointResolveError(f"s3 object not found: {shown}") from None
        if code in ("403", "AccessDenied", "Forbidden"):
            raise CheckpointResolveError(
                f"access denied to {shown}: check the credentials in credentialsSecret"
            ) from None
        raise CheckpointResolveError(f"s3 HEAD {shown} failed: {code or status}") from None
    except NoCredentialsError:
        raise CheckpointResolveError(
            f"no S3 credentials for {shown}: set AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY in credentialsSecret"
        ) from None
    except NoRegionError:
        raise CheckpointResolveError(
            f"no S3 region for {shown}: set AWS_REGION in credentialsSecret"
        ) from None
    except EndpointConnectionError:
        where = redact_uri(endpoint) if endpoint else "the S3 endpoint"
        raise CheckpointResolveError(f"cannot reach {where} for {shown}") from None
    except (BotoCoreError, ValueError) as exc:
        raise CheckpointResolveError(f"s3 HEAD {shown} failed: {type(exc).__name__}") from None
    etag = _normalise_etag(str(head.get("ETag", "")))
    if not etag:
        raise CheckpointResolveError(f"{shown} has no ETag: set spec.model.checkpoint.sha256")
    return etag


async def _resolve_s3(uri: str, endpoint: str, creds: dict[str, str], timeout_s: float) -> ResolvedCheckpoint:
    _parse_s3(uri)  # fail fast on a malformed URI before spinning up a thread
    try:
        # boto3 is blocking; botocore retries inside, so the outer cap allows for them.
        etag = await asyncio.wait_for(
            asyncio.to_thread(_head_s3, uri, endpoint, creds, timeout_s), timeout=timeout_s * 4 + 1
        )
    except TimeoutError:
        raise CheckpointResolveError(f"timed out asking S3 for {redact_uri(uri)}") from None
    return ResolvedCheckpoint(digest=f"etag:{etag}", source="s3-etag")
