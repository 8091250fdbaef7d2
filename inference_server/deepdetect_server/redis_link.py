"""One Redis connection for the jobs store, the result cache and the rate limiter, and what an outage means.

Every Redis call goes through `RedisLink.call`. When Redis is unreachable the call fails fast with
`StoreUnavailable` (message names host:port, never the password), the error is counted per component, and
for the next second every call fails at once instead of each paying a connect timeout: /v1/detect keeps its
latency while the cache is off. After that second one call probes again; redis-py's pool reconnects, so
Redis coming back is noticed without a restart.
"""

from __future__ import annotations

import logging
import ssl
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, TypeVar
from urllib.parse import urlsplit

from .errors import StartupError, StoreUnavailable

if TYPE_CHECKING:
    import redis.asyncio as aioredis

    from .config import ServerSettings
    from .metrics import Metrics

log = logging.getLogger("deepdetect.redis")

T = TypeVar("T")
RETRY_AFTER_DOWN_S = 1.0


def redis_url(settings: ServerSettings) -> str:
    """The configured URL ("" without Redis): inline, or read from the Secret-mounted file."""
    if settings.redis_url_file is not None:
        try:
            url = settings.redis_url_file.read_text().strip()
        except OSError as exc:
            raise StartupError(f"cannot read redis_url_file {settings.redis_url_file}: {exc.strerror}") \
                from exc
        if not url:
            raise StartupError(f"redis_url_file {settings.redis_url_file} is empty")
    else:
        url = settings.redis_url.get_secret_value().strip()
    if url and urlsplit(url).scheme not in ("redis", "rediss", "unix"):
        raise StartupError("the Redis URL must start with redis://, rediss:// (TLS) or unix://")
    return url


def describe(url: str) -> str:
    """host:port/db of a Redis URL, without user or password: safe for logs and error messages."""
    parts = urlsplit(url)
    if parts.scheme == "unix":
        return parts.path
    return f"{parts.hostname}:{parts.port or 6379}{parts.path or '/0'}"


def connect(url: str, settings: ServerSettings) -> aioredis.Redis:
    import redis.asyncio as aioredis
    from redis.asyncio.retry import Retry
    from redis.backoff import NoBackoff

    options: dict[str, object] = {
        "socket_timeout": settings.redis_timeout_s,
        "socket_connect_timeout": settings.redis_timeout_s,
        # One immediate retry covers a pooled connection that died with a Redis restart; more would only
        # multiply the timeout while Redis is really down.
        "retry": Retry(NoBackoff(), 1),
        "health_check_interval": 30,
    }
    if url.startswith("rediss://"):
        options["ssl_cert_reqs"] = ssl.CERT_REQUIRED
        if settings.redis_ca_file is not None:
            options["ssl_ca_certs"] = str(settings.redis_ca_file)
    return aioredis.Redis.from_url(url, **options)  # type: ignore[arg-type]


class RedisLink:
    """The shared client plus a short circuit breaker; `call` is the only way in."""

    def __init__(self, client: aioredis.Redis, where: str, metrics: Metrics) -> None:
        self.client = client
        self.where = where
        self.metrics = metrics
        self.up = True
        self._retry_at = 0.0
        metrics.redis_up.set_function(lambda: float(self.up))

    @classmethod
    def from_settings(cls, settings: ServerSettings, metrics: Metrics) -> RedisLink | None:
        url = redis_url(settings)
        if not url:
            return None
        return cls(connect(url, settings), describe(url), metrics)

    def unavailable(self, component: str) -> StoreUnavailable:
        if component == "jobs":
            return StoreUnavailable(f"the job store is unavailable (Redis at {self.where} is unreachable): "
                                    "jobs can be neither accepted nor read right now; retry later")
        return StoreUnavailable(f"Redis at {self.where} is unreachable: retry later")

    async def call(self, component: str, fn: Callable[[aioredis.Redis], Awaitable[T]]) -> T:
        import redis.exceptions

        if not self.up and time.monotonic() < self._retry_at:
            self.metrics.redis_errors.labels(component=component).inc()
            raise self.unavailable(component)
        try:
            result = await fn(self.client)
        except (redis.exceptions.RedisError, OSError, TimeoutError) as exc:
            self.metrics.redis_errors.labels(component=component).inc()
            self._retry_at = time.monotonic() + RETRY_AFTER_DOWN_S
            if self.up:
                self.up = False
                log.error("Redis unreachable", extra={"redis": self.where, "component": component,
                                                      "error": f"{type(exc).__name__}: {exc}"})
            raise self.unavailable(component) from exc
        if not self.up:
            self.up = True
            log.info("Redis reachable again", extra={"redis": self.where, "component": component})
        return result

    async def close(self) -> None:
        await self.client.aclose()
