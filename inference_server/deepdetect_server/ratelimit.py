"""Per-tenant rate limits on requests and on media cost, with the `limits` library (memory or Redis).

Two budgets per tenant (the API key's name): `requests` counts every authenticated call to a scoring route,
`media` counts work: an image costs 1, a video the frames it is sampled into. Each budget is one or more
`limits` rates ("10/second;600/minute"), a sliding window counter (cheap in Redis, smooth at window
edges); per-tenant overrides replace the defaults. Over budget -> 429 with `Retry-After` (seconds until
the window frees enough). Media is charged before the work starts, at the cost the request will incur, so
a budget is never overdrawn by a burst of long videos.

With Redis the counters are shared by every replica; without, each replica counts on its own. Redis
errors fail open (the request is served, the error counted): an outage of the limiter's store must not
become an outage of the service.
"""

from __future__ import annotations

import math
import time
from typing import TYPE_CHECKING, Literal

from limits import RateLimitItem, parse_many
from limits.aio.storage import MemoryStorage, RedisStorage, Storage
from limits.aio.strategies import SlidingWindowCounterRateLimiter

from .errors import StoreUnavailable, TooManyRequests

if TYPE_CHECKING:
    from .config import ServerSettings
    from .metrics import Metrics
    from .redis_link import RedisLink

Budget = Literal["requests", "media"]


class RateLimiter:
    def __init__(self, settings: ServerSettings, metrics: Metrics, link: RedisLink | None = None) -> None:
        self.metrics = metrics
        self.link = link
        storage: Storage
        if link is not None:
            # Shares the link's connection pool; errors surface as redis errors, which `link.call` turns
            # into StoreUnavailable (fail open below).
            storage = RedisStorage("async+redis://", implementation="redispy",
                                   connection_pool=link.client.connection_pool,
                                   key_prefix=f"{settings.key_prefix}:limits")
        else:
            storage = MemoryStorage()
        self.kind = "redis" if link is not None else "memory"
        self._limiter = SlidingWindowCounterRateLimiter(storage)
        self._defaults: dict[Budget, list[RateLimitItem]] = {
            "requests": _items(settings.rate_limit_requests),
            "media": _items(settings.rate_limit_media),
        }
        self._tenants: dict[str, dict[Budget, list[RateLimitItem]]] = {}
        for name, override in settings.rate_limit_tenants.items():
            self._tenants[name] = {
                "requests": _items(override.requests) if override.requests is not None
                else self._defaults["requests"],
                "media": _items(override.media) if override.media is not None else self._defaults["media"],
            }

    @property
    def enabled(self) -> bool:
        return any(self._defaults.values()) or any(any(b.values()) for b in self._tenants.values())

    def _rates(self, tenant: str, budget: Budget) -> list[RateLimitItem]:
        return self._tenants.get(tenant, self._defaults)[budget]

    async def admit(self, tenant: str, media_cost: int = 0) -> None:
        """Charge one request (and `media_cost` media units) to the tenant, or raise TooManyRequests."""
        await self._charge(tenant, "requests", 1)
        if media_cost > 0:
            await self._charge(tenant, "media", media_cost)

    async def charge_media(self, tenant: str, cost: int) -> None:
        if cost > 0:
            await self._charge(tenant, "media", cost)

    async def _charge(self, tenant: str, budget: Budget, cost: int) -> None:
        for item in self._rates(tenant, budget):
            if cost > item.amount:
                self._refuse(tenant, budget)
                raise TooManyRequests(
                    f"this request costs {cost} {budget} units, more than the whole {budget} budget of "
                    f"tenant {tenant!r} ({item})", retry_after_s=item.get_expiry())
            if await self._hit(item, tenant, budget, cost):
                continue
            self._refuse(tenant, budget)
            reset = await self._reset_time(item, tenant, budget)
            raise TooManyRequests(f"tenant {tenant!r} is over its {budget} limit of {item}: retry later",
                                  retry_after_s=math.ceil(max(0.0, reset - time.time())))

    def _refuse(self, tenant: str, budget: Budget) -> None:
        self.metrics.rate_limited.labels(tenant=tenant, limit=budget).inc()

    async def _hit(self, item: RateLimitItem, tenant: str, budget: Budget, cost: int) -> bool:
        if self.link is None:
            return await self._limiter.hit(item, tenant, budget, cost=cost)
        try:
            return await self.link.call(
                "ratelimit", lambda _: self._limiter.hit(item, tenant, budget, cost=cost))
        except StoreUnavailable:
            return True  # fail open; the link counted the error

    async def _reset_time(self, item: RateLimitItem, tenant: str, budget: Budget) -> float:
        try:
            stats = await self._limiter.get_window_stats(item, tenant, budget)
        except Exception:  # only the Retry-After hint is lost
            return time.time() + item.get_expiry()
        return float(stats.reset_time)


def _items(text: str) -> list[RateLimitItem]:
    return list(parse_many(text)) if text.strip() else []
