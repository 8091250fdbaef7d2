"""Job callbacks: a signed POST when a job reaches its final state, delivered at least once.

Only to hosts `callback_allowed_hosts` names (exact, or `*.example.com` for its subdomains), checked when
the job is submitted and again before each attempt; redirects are not followed (one would leave the list).
The body is `{"event": "job.succeeded", "job": {...}}`, the same job GET /v1/jobs/{id} shows. Headers:
  X-DeepDetect-Event-Id   the same on every retry of one event: receivers drop duplicates by it
  X-DeepDetect-Timestamp  unix seconds of this attempt: receivers refuse stale ones (replays)
  X-Signature             sha256=<hex HMAC-SHA256(secret, "<timestamp>.<body>")>
The secret is the tenant's in `callback_secret_file` (`tenant:secret` lines), else its bare `default` one.

Deliveries are due entries in the store, so they survive a replica's death like the jobs do: any replica
claims a due one for a while, and records delivered, failed (a 4xx other than 408/425/429, or attempts
used up) or when to retry (5xx, 408/425/429, timeouts, connection errors: exponential backoff from
`callback_backoff_s`, doubled each time, at most 5 minutes, or the receiver's Retry-After).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import json
import logging
import random
import time
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

import httpx

from .. import __version__
from ..auth import DEFAULT_TENANT, AuthConfigError, read_keys
from ..errors import BadRequest, StartupError, StoreUnavailable

if TYPE_CHECKING:
    from ..config import ServerSettings
    from ..metrics import Metrics
    from .model import JobRecord
    from .store import JobStore

log = logging.getLogger("deepdetect.callbacks")

MAX_BACKOFF_S = 300.0
RETRYABLE = {408, 425, 429}
MAX_URL = 2048


def sign(secret: bytes, timestamp: str, body: bytes) -> str:
    """The X-Signature value: receivers compute the same and compare in constant time."""
    return "sha256=" + hmac.new(secret, timestamp.encode() + b"." + body, hashlib.sha256).hexdigest()


def host_allowed(host: str, allowed: list[str]) -> bool:
    host = host.lower().rstrip(".")
    for pattern in allowed:
        pattern = pattern.lower().rstrip(".")
        if pattern.startswith("*.") and host.endswith(pattern[1:]):
            return True
        if host == pattern:
            return True
    return False


class CallbackPolicy:
    """Which URLs a job may name, and the secret that signs each tenant's callbacks."""

    def __init__(self, allowed_hosts: list[str], secrets: dict[str, bytes]) -> None:
        self.allowed_hosts = allowed_hosts
        self.secrets = secrets

    @classmethod
    def from_settings(cls, settings: ServerSettings) -> CallbackPolicy:
        secrets: dict[str, bytes] = {}
        if settings.callback_allowed_hosts:
            secrets = _read_secrets(settings.callback_secret_file)
        return cls(list(settings.callback_allowed_hosts), secrets)

    @property
    def enabled(self) -> bool:
        return bool(self.allowed_hosts)

    def secret_for(self, tenant: str) -> bytes | None:
        return self.secrets.get(tenant) or self.secrets.get(DEFAULT_TENANT)

    def check(self, url: str, tenant: str) -> str:
        """The URL if a job of `tenant` may call it back; BadRequest / FeatureDisabled saying why not."""
        if not self.enabled:
            raise BadRequest("callbacks are not enabled on this server (callback_allowed_hosts is empty)")
        if len(url) > MAX_URL:
            raise BadRequest(f"callback_url is longer than {MAX_URL} characters")
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise BadRequest("callback_url must be an absolute http:// or https:// URL")
        if parts.username or parts.password:
            raise BadRequest("callback_url must not carry credentials")
        if not host_allowed(parts.hostname, self.allowed_hosts):
            raise BadRequest(f"callback host {parts.hostname!r} is not in this server's allow-list")
        if self.secret_for(tenant) is None:
            raise BadRequest(f"no callback signing secret is configured for tenant {tenant!r}")
        return url


def _read_secrets(path: Path | None) -> dict[str, bytes]:
    if path is None:
        raise StartupError("callback_allowed_hosts is set but callback_secret_file is not: callbacks "
                           "are always signed")
    try:
        entries = read_keys(path)
    except AuthConfigError as exc:
        raise StartupError(exc.message.replace("API key", "callback secret")) from exc
    return {e.name: e.key for e in entries}


class CallbackSender:
    """One loop per replica: claim a due delivery from the store, attempt it, record the outcome."""

    def __init__(self, store: JobStore, policy: CallbackPolicy, settings: ServerSettings, metrics: Metrics,
                 client: httpx.AsyncClient | None = None) -> None:
        self.store = store
        self.policy = policy
        self.metrics = metrics
        self.max_attempts = settings.callback_max_attempts
        self.timeout_s = settings.callback_timeout_s
        self.backoff_s = settings.callback_backoff_s
        self.poll_s = settings.jobs_poll_s
        self.client = client or httpx.AsyncClient(follow_redirects=False, trust_env=False)
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._loop(), name="callbacks")

    def wake(self) -> None:
        self._wake.set()

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()  # an attempt cut short is due again after its lease: at least once
            await asyncio.gather(self._task, return_exceptions=True)
        await self.client.aclose()

    async def _loop(self) -> None:
        while True:
            try:
                job = await self.store.claim_callback(lease_s=self.timeout_s + 5)
            except StoreUnavailable:
                job = None
            if job is None:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), self.poll_s * random.uniform(0.5, 1.0))
                self._wake.clear()
                continue
            # Unrecorded outcome (Redis went away): the delivery is due again after its lease.
            with contextlib.suppress(StoreUnavailable):
                await self.deliver(job)

    async def deliver(self, job: JobRecord) -> None:
        attempt = job.callback_attempts + 1
        parts = urlsplit(job.callback_url)
        secret = self.policy.secret_for(job.tenant)
        if not host_allowed(parts.hostname or "", self.policy.allowed_hosts) or secret is None:
            await self._failed(job, "the callback host is no longer allowed (or its secret was removed)")
            return
        public = job.public()
        public.pop("callback", None)
        body = json.dumps({"event": f"job.{job.state}", "job": public}, separators=(",", ":")).encode()
        timestamp = str(int(time.time()))
        headers = {
            "Content-Type": "application/json",
            "User-Agent": f"deepdetect/{__version__}",
            "X-DeepDetect-Event": f"job.{job.state}",
            "X-DeepDetect-Event-Id": job.event_id,
            "X-DeepDetect-Timestamp": timestamp,
            "X-Signature": sign(secret, timestamp, body),
        }
        retry_after: float | None = None
        try:
            response = await self.client.post(job.callback_url, content=body, headers=headers,
                                              timeout=self.timeout_s)
        except httpx.HTTPError as exc:
            error, retryable = f"{type(exc).__name__}: {exc}"[:300], True
        else:
            if 200 <= response.status_code < 300:
                await self.store.callback_result(job.id, "delivered")
                self.metrics.callbacks.labels(result="delivered").inc()
                log.info("callback delivered",
                         extra={"job": job.id, "tenant": job.tenant, "attempt": attempt})
                return
            error = f"HTTP {response.status_code}"
            retryable = response.status_code >= 500 or response.status_code in RETRYABLE
            retry_after = _retry_after(response.headers.get("retry-after"))
        if not retryable or attempt >= self.max_attempts:
            await self._failed(job, error)
            return
        delay = retry_after if retry_after is not None else self.backoff_s * 2 ** (attempt - 1)
        delay = min(MAX_BACKOFF_S, delay) * random.uniform(0.8, 1.0)
        await self.store.callback_result(job.id, "retry", error=error, retry_in_s=delay)
        self.metrics.callbacks.labels(result="retried").inc()
        log.info("callback will be retried", extra={"job": job.id, "attempt": attempt, "error": error,
                                                    "retry_in_s": round(delay, 2)})

    async def _failed(self, job: JobRecord, error: str) -> None:
        await self.store.callback_result(job.id, "failed", error=error)
        self.metrics.callbacks.labels(result="failed").inc()
        log.warning("callback failed", extra={"job": job.id, "tenant": job.tenant, "error": error})


def _retry_after(value: str | None) -> float | None:
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        return None
