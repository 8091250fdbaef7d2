"""The job store contract: the in-process and the Redis store (a real redis-server) pass the same tests."""

from __future__ import annotations

import asyncio
import hashlib
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from deepdetect_server.config import ServerSettings
from deepdetect_server.errors import Conflict, Overloaded
from deepdetect_server.jobs.model import NewJob
from deepdetect_server.jobs.redis_store import RedisJobStore
from deepdetect_server.jobs.store import JobStore, MemoryJobStore
from deepdetect_server.metrics import Metrics
from deepdetect_server.redis_link import RedisLink, connect

pytestmark = pytest.mark.timeout(60)

StoreFactory = Callable[..., JobStore]


@pytest.fixture(params=["memory", "redis"])
async def make_store(request: pytest.FixtureRequest, redis_prefix: str) -> AsyncIterator[StoreFactory]:
    links: list[RedisLink] = []

    def make(result_ttl_s: float = 3600, max_queued: int = 100, max_attempts: int = 3) -> JobStore:
        if request.param == "memory":
            return MemoryJobStore(result_ttl_s, max_queued, max_attempts)
        redis = request.getfixturevalue("redis_server")
        link = RedisLink(connect(redis.url, ServerSettings()), "test", Metrics())
        links.append(link)
        return RedisJobStore(link, redis_prefix, result_ttl_s, max_queued, max_attempts)

    yield make
    for link in links:
        await link.close()


def new_job(tenant: str = "acme", payload: bytes = b"media", key: str | None = None,
            callback_url: str = "", params: dict[str, Any] | None = None) -> NewJob:
    return NewJob(id=uuid.uuid4().hex, tenant=tenant, payload=payload, params=params or {},
                  callback_url=callback_url, body_sha256=hashlib.sha256(payload).hexdigest(),
                  idempotency_key=key)


async def test_submitted_job_is_queued_and_visible_to_its_tenant_only(make_store: StoreFactory) -> None:
    store = make_store()
    sub = await store.submit(new_job(params={"frames": 8}))
    assert sub.created and sub.job.state == "queued" and sub.job.size == len(b"media")
    got = await store.get(sub.job.id, "acme")
    assert got is not None and got.state == "queued" and got.params == {"frames": 8}
    assert got.created_at > 1_600_000_000  # wall clock seconds, from the store's clock
    assert await store.get(sub.job.id, "globex") is None
    assert await store.get("no-such-job", "acme") is None
    assert await store.depth() == {"queued": 1, "running": 0}


async def test_idempotency_key_same_body_same_job_other_body_conflict_scoped_per_tenant(
        make_store: StoreFactory) -> None:
    store = make_store()
    first = await store.submit(new_job(key="k1"))
    again = await store.submit(new_job(key="k1"))
    assert again.job.id == first.job.id and not again.created
    with pytest.raises(Conflict, match="Idempotency-Key was already used"):
        await store.submit(new_job(key="k1", payload=b"other media"))
    other_tenant = await store.submit(new_job(tenant="globex", key="k1", payload=b"other media"))
    assert other_tenant.created and other_tenant.job.id != first.job.id
    assert (await store.depth())["queued"] == 2


async def test_queue_is_bounded(make_store: StoreFactory) -> None:
    store = make_store(max_queued=2)
    await store.submit(new_job())
    await store.submit(new_job())
    with pytest.raises(Overloaded, match="job queue is full"):
        await store.submit(new_job())


async def test_claim_is_fifo_and_hands_the_payload(make_store: StoreFactory) -> None:
    store = make_store()
    a = await store.submit(new_job(payload=b"first"))
    b = await store.submit(new_job(payload=b"second"))
    c1 = await store.claim("w1", lease_s=10)
    c2 = await store.claim("w2", lease_s=10)
    assert c1 is not None and c2 is not None
    assert (c1.job.id, c1.payload, c2.job.id, c2.payload) == (a.job.id, b"first", b.job.id, b"second")
    assert c1.job.state == "running" and c1.job.attempts == 1 and c1.job.worker == "w1"
    assert c1.token != c2.token
    assert await store.claim("w3", lease_s=10) is None
    assert await store.depth() == {"queued": 0, "running": 2}
    running = await store.get(a.job.id, "acme")
    assert running is not None and running.state == "running" and running.started_at is not None


async def test_only_the_lease_holder_finishes_once(make_store: StoreFactory) -> None:
    store = make_store()
    sub = await store.submit(new_job())
    claim = await store.claim("w1", lease_s=10)
    assert claim is not None
    assert await store.finish(claim, "succeeded", result={"label": "fake", "score": 0.9})
    assert not await store.finish(claim, "failed", error={"status": 500, "message": "again"})
    job = await store.get(sub.job.id, "acme")
    assert job is not None and job.state == "succeeded" and job.result == {"label": "fake", "score": 0.9}
    assert job.error is None and job.finished_at is not None and job.event_id
    assert await store.depth() == {"queued": 0, "running": 0}


async def test_a_lapsed_lease_is_taken_over_and_the_first_worker_cannot_write(
        make_store: StoreFactory) -> None:
    store = make_store()
    sub = await store.submit(new_job(payload=b"video"))
    stale = await store.claim("w1", lease_s=0.2)
    assert stale is not None
    assert await store.claim("w2", lease_s=10) is None  # lease still held
    await asyncio.sleep(0.35)
    fresh = await store.claim("w2", lease_s=10)
    assert fresh is not None and fresh.job.id == sub.job.id and fresh.payload == b"video"
    assert fresh.job.attempts == 2 and fresh.job.lost == 1 and fresh.job.worker == "w2"
    assert await store.heartbeat(stale, lease_s=10) == "lost"
    assert not await store.finish(stale, "succeeded", result={"score": 0.1})  # late answer refused
    assert await store.finish(fresh, "succeeded", result={"score": 0.7})
    job = await store.get(sub.job.id, "acme")
    assert job is not None and job.result == {"score": 0.7} and job.worker == "w2"


async def test_heartbeat_keeps_the_lease(make_store: StoreFactory) -> None:
    store = make_store()
    await store.submit(new_job())
    claim = await store.claim("w1", lease_s=0.4)
    assert claim is not None
    for _ in range(3):
        await asyncio.sleep(0.2)
        assert await store.heartbeat(claim, lease_s=0.4) == "ok"
    assert await store.claim("w2", lease_s=10) is None


async def test_a_job_that_keeps_losing_its_replica_fails(make_store: StoreFactory) -> None:
    store = make_store(max_attempts=2)
    sub = await store.submit(new_job())
    assert await store.claim("w1", lease_s=0.1) is not None
    await asyncio.sleep(0.2)
    assert await store.claim("w2", lease_s=0.1) is not None  # lost once: tried again
    await asyncio.sleep(0.2)
    assert await store.claim("w3", lease_s=0.1) is None  # lost twice: given up
    job = await store.get(sub.job.id, "acme")
    assert job is not None and job.state == "failed"
    assert job.error is not None and "lost 2 times" in job.error["message"]
    assert await store.depth() == {"queued": 0, "running": 0}


async def test_cancel_queued_running_and_final(make_store: StoreFactory) -> None:
    store = make_store()
    queued = await store.submit(new_job(payload=b"q"))
    running = await store.submit(new_job(payload=b"r"))
    assert await store.cancel(queued.job.id, "globex") is None  # another tenant's: not found
    canceled = await store.cancel(queued.job.id, "acme")
    assert canceled is not None and canceled.state == "canceled"
    claim = await store.claim("w1", lease_s=10)
    assert claim is not None and claim.job.id == running.job.id  # the canceled one is skipped
    assert (await store.cancel(running.job.id, "acme")).state == "canceled"  # type: ignore[union-attr]
    assert await store.heartbeat(claim, lease_s=10) == "canceled"
    assert not await store.finish(claim, "succeeded", result={})
    with pytest.raises(Conflict, match="already canceled"):
        await store.cancel(running.job.id, "acme")
    assert await store.claim("w1", lease_s=10) is None
    assert await store.depth() == {"queued": 0, "running": 0}


async def test_release_puts_the_job_back_first_in_line(make_store: StoreFactory) -> None:
    store = make_store()
    first = await store.submit(new_job(payload=b"1"))
    await store.submit(new_job(payload=b"2"))
    claim = await store.claim("w1", lease_s=10)
    assert claim is not None and await store.release(claim)
    assert not await store.release(claim)
    job = await store.get(first.job.id, "acme")
    assert job is not None and job.state == "queued"
    again = await store.claim("w2", lease_s=10)
    assert again is not None and again.job.id == first.job.id and again.payload == b"1"
    assert again.job.attempts == 2 and again.job.lost == 0


async def test_final_jobs_and_their_idempotency_keys_expire(make_store: StoreFactory) -> None:
    store = make_store(result_ttl_s=1)
    sub = await store.submit(new_job(key="k"))
    claim = await store.claim("w1", lease_s=10)
    assert claim is not None and await store.finish(claim, "succeeded", result={})
    assert await store.get(sub.job.id, "acme") is not None
    await asyncio.sleep(1.3)
    assert await store.get(sub.job.id, "acme") is None
    again = await store.submit(new_job(key="k", payload=b"new body"))  # the key is free again
    assert again.created and again.job.id != sub.job.id


async def test_running_jobs_do_not_expire(make_store: StoreFactory) -> None:
    store = make_store(result_ttl_s=1)
    sub = await store.submit(new_job())
    claim = await store.claim("w1", lease_s=10)
    await asyncio.sleep(1.3)
    assert (await store.get(sub.job.id, "acme")) is not None
    assert claim is not None and await store.finish(claim, "succeeded", result={})


async def test_callbacks_are_due_after_the_final_state_and_retried(make_store: StoreFactory) -> None:
    store = make_store()
    plain = await store.submit(new_job(payload=b"no callback"))
    hooked = await store.submit(new_job(payload=b"callback", callback_url="http://127.0.0.1:1/hook"))
    assert await store.claim_callback(lease_s=10) is None  # nothing final yet
    for _ in range(2):
        claim = await store.claim("w1", lease_s=10)
        assert claim is not None
        await store.finish(claim, "succeeded", result={"score": 0.5})
    due = await store.claim_callback(lease_s=10)
    assert due is not None and due.id == hooked.job.id and due.state == "succeeded" and due.event_id
    assert due.callback_state == "pending"
    assert await store.claim_callback(lease_s=10) is None  # handed out: invisible for the lease
    await store.callback_result(due.id, "retry", error="HTTP 500", retry_in_s=0.2)
    assert await store.claim_callback(lease_s=10) is None
    await asyncio.sleep(0.3)
    retried = await store.claim_callback(lease_s=10)
    assert retried is not None and retried.id == due.id and retried.event_id == due.event_id
    assert retried.callback_attempts == 1 and retried.callback_error == "HTTP 500"
    await store.callback_result(due.id, "delivered")
    await asyncio.sleep(0.05)
    assert await store.claim_callback(lease_s=0) is None
    job = await store.get(hooked.job.id, "acme")
    assert job is not None and job.callback_state == "delivered" and job.callback_attempts == 2
    assert job.public()["callback"] == {"url": "http://127.0.0.1:1/hook", "state": "delivered", "attempts": 2}
    assert (await store.get(plain.job.id, "acme")).callback_state == ""  # type: ignore[union-attr]


async def test_a_canceled_job_with_a_callback_notifies(make_store: StoreFactory) -> None:
    store = make_store()
    sub = await store.submit(new_job(callback_url="http://127.0.0.1:1/hook"))
    await store.cancel(sub.job.id, "acme")
    due = await store.claim_callback(lease_s=10)
    assert due is not None and due.state == "canceled"
    await store.callback_result(due.id, "failed", error="HTTP 404")
    job = await store.get(sub.job.id, "acme")
    assert job is not None and job.callback_state == "failed" and job.callback_error == "HTTP 404"
