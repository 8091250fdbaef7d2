"""What a shared, multi-tenant service adds around the model: Redis, result cache, rate limits, jobs.

The core scores media; `Services` decides whether it has to (cache), whether the tenant may (limits), and
runs long work as jobs. One scoring path, `score`, serves /v1/detect and the job runner alike, through the
core's detection entry point (`Core.verdict`). Routes reach all of it through `app.state.services`.

Redis is optional. Without it everything lives in this process: fine for one replica, and `/v2` says that
jobs then do not survive a restart. With it, replicas share jobs, cache and counters; if Redis goes away
mid-run, /v1/detect keeps serving without the cache (counted), the jobs API answers 503, and everything
resumes when Redis is back, without a restart.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from .cache import Lookup, MemoryBackend, RedisBackend, ResultCache, cache_key
from .core import Verdict
from .errors import FeatureDisabled, StoreUnavailable
from .jobs.callbacks import CallbackPolicy, CallbackSender
from .jobs.model import Claim
from .jobs.redis_store import RedisJobStore
from .jobs.runner import JobRunner
from .jobs.store import JobStore, MemoryJobStore
from .ratelimit import RateLimiter
from .redis_link import RedisLink

if TYPE_CHECKING:
    from .config import ServerSettings
    from .core import Core

log = logging.getLogger("deepdetect.services")

INLINE_HASH_BYTES = 1 << 20  # larger bodies are hashed off the event loop (hashlib releases the GIL)


async def sha256_hex(data: bytes) -> str:
    if len(data) <= INLINE_HASH_BYTES:
        return hashlib.sha256(data).hexdigest()
    return await asyncio.to_thread(lambda: hashlib.sha256(data).hexdigest())


NOT_DURABLE = ("jobs are kept in this process only: they do not survive a restart and other replicas "
               "cannot see them; configure Redis for durable jobs")


class Services:
    def __init__(self, settings: ServerSettings, core: Core) -> None:
        self.settings = settings
        self.core = core
        self.metrics = core.metrics
        self.link: RedisLink | None = None
        self.cache: ResultCache | None = None
        self.limiter: RateLimiter | None = None
        self.store: JobStore | None = None
        self.callbacks: CallbackPolicy = CallbackPolicy([], {})
        self.runner: JobRunner | None = None
        self.sender: CallbackSender | None = None
        self._reload: asyncio.Task[None] | None = None

    # --- lifecycle -------------------------------------------------------------------------------------

    async def start(self) -> None:
        """Build everything; never fails because Redis is down (that is a runtime state, not a config one)."""
        s = self.settings
        self.link = RedisLink.from_settings(s, self.metrics)
        self.limiter = RateLimiter(s, self.metrics, self.link)
        if s.cache_enabled:
            backend = (RedisBackend(self.link, s.key_prefix, s.cache_ttl_s) if self.link is not None
                       else MemoryBackend(s.cache_max_entries, s.cache_ttl_s))
            self.cache = ResultCache(backend, self.metrics)
        if s.jobs_enabled:
            self.callbacks = CallbackPolicy.from_settings(s)
            self.store = (
                RedisJobStore(self.link, s.key_prefix, s.jobs_result_ttl_s, s.jobs_max_queued,
                              s.jobs_max_attempts) if self.link is not None
                else MemoryJobStore(s.jobs_result_ttl_s, s.jobs_max_queued, s.jobs_max_attempts))
            if self.callbacks.enabled:
                self.sender = CallbackSender(self.store, self.callbacks, s, self.metrics)
                self.sender.start()
            self.runner = JobRunner(
                self.store, self._run_job, concurrency=s.jobs_concurrency, lease_s=s.jobs_lease_s,
                poll_s=s.jobs_poll_s, metrics=self.metrics, can_claim=lambda: self.core.ready,
                on_final=self.sender.wake if self.sender is not None else lambda: None)
            self.runner.start()
        if self.link is not None:
            with contextlib.suppress(StoreUnavailable):
                await self.link.call("startup", lambda r: r.ping())
        if s.auth_mode == "apiKey" and s.api_key_reload_s > 0:
            self._reload = asyncio.create_task(self._reload_keys(), name="api-key-reload")
        log.info("services ready", extra=self.metadata())

    async def stop(self, grace_s: float) -> None:
        if self._reload is not None:
            self._reload.cancel()
        if self.runner is not None:
            await self.runner.stop(grace_s)
        if self.sender is not None:
            await self.sender.stop()
        if self.link is not None:
            await self.link.close()

    async def _reload_keys(self) -> None:
        while True:
            await asyncio.sleep(self.settings.api_key_reload_s)
            await asyncio.to_thread(self.core.auth.reload_if_changed)

    # --- scoring ---------------------------------------------------------------------------------------

    async def score(self, data: bytes, params: Mapping[str, Any], tenant: str, *, charge_media: bool = True,
                    timeout_s: float | None = None) -> tuple[Verdict, Lookup | None]:
        """Verdict for media bytes: from the cache, or computed once (media charged to the tenant)."""

        async def compute() -> dict[str, Any]:
            if charge_media and self.limiter is not None:
                await self.limiter.charge_media(tenant, self.core.media_cost(data, params))
            verdict = await self.core.verdict(data, params, timeout_s=timeout_s)
            return {"body": verdict.body, "cost": verdict.cost}

        if self.cache is None:
            value, found = await compute(), None
        else:
            scope = tenant if self.settings.cache_scope == "tenant" else "*"
            key = cache_key(await sha256_hex(data), self.core.digest, self.core.card_hash,
                            {**params, **self._serving_variant()}, scope)
            value, found = await self.cache.get_or_compute(key, compute)
        return Verdict(value["body"], int(value["cost"])), found

    def _serving_variant(self) -> dict[str, Any]:
        """What besides the checkpoint changes a verdict: the effective threshold (the label) and the runtime
        and precision (an int8 or ONNX runtime scores slightly differently from fp32 torch)."""
        runtime = self.core.detector
        return {"threshold": self.core.threshold, "runtime": runtime.name if runtime else "",
                "precision": runtime.precision if runtime else ""}

    async def _run_job(self, claim: Claim) -> dict[str, Any]:
        verdict, _ = await self.score(claim.payload, claim.job.params, claim.job.tenant, charge_media=False,
                                      timeout_s=self.settings.jobs_timeout_s)
        return verdict.body

    # --- for the routes --------------------------------------------------------------------------------

    def jobs(self) -> JobStore:
        if self.store is None:
            raise FeatureDisabled("the jobs API is not enabled on this server (jobs_enabled: false)")
        return self.store

    def job_submitted(self) -> None:
        self.metrics.job_transitions.labels(state="queued").inc()
        if self.runner is not None:
            self.runner.wake()

    def metadata(self) -> dict[str, Any]:
        """What /v2 tells clients about jobs and the cache (durability first: it changes what to expect)."""
        jobs: dict[str, Any] = {"enabled": self.store is not None}
        if self.store is not None:
            jobs |= {"store": self.store.kind, "durable": self.store.durable,
                     "result_ttl_s": self.settings.jobs_result_ttl_s, "callbacks": self.callbacks.enabled}
            if not self.store.durable:
                jobs["note"] = NOT_DURABLE
        cache: dict[str, Any] = {"enabled": self.cache is not None}
        if self.cache is not None:
            cache |= {"backend": self.cache.backend.kind, "scope": self.settings.cache_scope}
        return {"jobs": jobs, "cache": cache,
                "rate_limits": {"enabled": bool(self.limiter and self.limiter.enabled),
                                "store": self.limiter.kind if self.limiter else "memory"}}
