"""Result cache: the same bytes, the same model, the same parameters -> the verdict computed before.

The key is a sha256 over the content's sha256, the model digest (the checkpoint's bytes), the hash of the
card (preprocessing, aggregation, labels), the request parameters that change a verdict, and, in `tenant`
scope, the tenant: a new checkpoint never serves an old verdict, and one tenant never learns that another
sent the same file. In-process LRU by default; Redis when configured, so replicas share it.

Only successes are cached: an error is returned to everyone waiting on it and computed again next time.
Concurrent misses for one key compute once (single flight): the first caller computes, the others wait for
its result. Redis errors fail open: the request is served without the cache and the error is counted.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
from collections.abc import Awaitable, Callable, Mapping
from typing import TYPE_CHECKING, Any, Literal, Protocol

from cachetools import TTLCache

from .errors import StoreUnavailable

if TYPE_CHECKING:
    from .metrics import Metrics
    from .redis_link import RedisLink

Lookup = Literal["hit", "miss", "coalesced", "bypass"]


def cache_key(content_sha256: str, model_digest: str, card_hash: str, params: Mapping[str, Any],
              scope: str) -> str:
    material = json.dumps([content_sha256, model_digest, card_hash, dict(params), scope],
                          sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(material.encode()).hexdigest()


class CacheBackend(Protocol):
    kind: str

    async def get(self, key: str) -> bytes | None: ...
    async def set(self, key: str, value: bytes) -> None: ...


class MemoryBackend:
    kind = "memory"

    def __init__(self, max_entries: int, ttl_s: float) -> None:
        self._lru: TTLCache[str, bytes] = TTLCache(maxsize=max_entries, ttl=ttl_s)

    async def get(self, key: str) -> bytes | None:
        return self._lru.get(key)

    async def set(self, key: str, value: bytes) -> None:
        self._lru[key] = value


class RedisBackend:
    kind = "redis"

    def __init__(self, link: RedisLink, prefix: str, ttl_s: float) -> None:
        self.link = link
        self.prefix = f"{prefix}:cache:"
        self.ttl_ms = max(1, int(ttl_s * 1000))

    async def get(self, key: str) -> bytes | None:
        value = await self.link.call("cache", lambda r: r.get(self.prefix + key))
        return bytes(value) if value is not None else None

    async def set(self, key: str, value: bytes) -> None:
        await self.link.call("cache", lambda r: r.set(self.prefix + key, value, px=self.ttl_ms))


Compute = Callable[[], Awaitable[dict[str, Any]]]


class ResultCache:
    """`get_or_compute(key, compute)` -> (value, how it was found); values are JSON-able dicts."""

    def __init__(self, backend: CacheBackend, metrics: Metrics) -> None:
        self.backend = backend
        self.metrics = metrics
        self._inflight: dict[str, asyncio.Task[tuple[dict[str, Any], Lookup]]] = {}

    async def get_or_compute(self, key: str, compute: Compute) -> tuple[dict[str, Any], Lookup]:
        task = self._inflight.get(key)
        if task is not None:
            value, _ = await asyncio.shield(task)  # a caller that goes away leaves the others their answer
            self.metrics.cache_lookups.labels(result="coalesced").inc()
            return value, "coalesced"
        task = asyncio.create_task(self._fill(key, compute))
        self._inflight[key] = task  # before any await: every later caller finds it
        task.add_done_callback(lambda done: self._forget(key, done))
        value, found = await asyncio.shield(task)
        self.metrics.cache_lookups.labels(result=found).inc()
        return value, found

    def _forget(self, key: str, done: asyncio.Task[Any]) -> None:
        self._inflight.pop(key, None)
        if not done.cancelled():
            done.exception()  # retrieved here too: every waiter may have gone away

    async def _fill(self, key: str, compute: Compute) -> tuple[dict[str, Any], Lookup]:
        try:
            cached = await self.backend.get(key)
        except StoreUnavailable:
            return await compute(), "bypass"  # fail open: counted by the Redis link
        if cached is not None:
            return json.loads(cached), "hit"
        value = await compute()
        try:
            await self.backend.set(key, json.dumps(value, separators=(",", ":")).encode())
        except StoreUnavailable:
            return value, "bypass"
        return value, "miss"
