"""Result cache: backends (memory, real Redis) under one contract, single flight, model-aware keys."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import httpx
import pytest
from deepdetect_server.cache import CacheBackend, MemoryBackend, RedisBackend, ResultCache, cache_key
from deepdetect_server.config import ServerSettings
from deepdetect_server.errors import InferenceFailed
from deepdetect_server.metrics import Metrics
from deepdetect_server.redis_link import RedisLink, connect
from server_helpers import make_checkpoint, metric

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(params=["memory", "redis"])
async def make_backend(request: pytest.FixtureRequest,
                       redis_prefix: str) -> AsyncIterator[Callable[..., CacheBackend]]:
    links: list[RedisLink] = []

    def make(ttl_s: float = 60.0, max_entries: int = 100) -> CacheBackend:
        if request.param == "memory":
            return MemoryBackend(max_entries, ttl_s)
        url = request.getfixturevalue("redis_server").url
        link = RedisLink(connect(url, ServerSettings()), "t", Metrics())
        links.append(link)
        return RedisBackend(link, redis_prefix, ttl_s)

    yield make
    for link in links:
        await link.close()


async def test_backend_stores_and_expires(make_backend) -> None:
    backend = make_backend(ttl_s=0.5)
    assert await backend.get("k") is None
    await backend.set("k", b'{"score":0.5}')
    assert await backend.get("k") == b'{"score":0.5}'
    await asyncio.sleep(0.7)
    assert await backend.get("k") is None


async def test_concurrent_misses_compute_once_and_errors_are_not_cached(make_backend) -> None:
    cache = ResultCache(make_backend(), Metrics())
    calls = 0

    async def compute() -> dict[str, object]:
        nonlocal calls
        calls += 1
        await asyncio.sleep(0.2)
        return {"score": 0.25}

    results = await asyncio.gather(*(cache.get_or_compute("same", compute) for _ in range(10)))
    assert calls == 1
    assert sorted(found for _, found in results) == ["coalesced"] * 9 + ["miss"]
    assert all(value == {"score": 0.25} for value, _ in results)
    assert await cache.get_or_compute("same", compute) == ({"score": 0.25}, "hit")

    async def broken() -> dict[str, object]:
        nonlocal calls
        calls += 1
        await asyncio.sleep(0.05)
        raise InferenceFailed("forward pass failed")

    outcomes = await asyncio.gather(*(cache.get_or_compute("bad", broken) for _ in range(3)),
                                    return_exceptions=True)
    assert calls == 2 and all(isinstance(o, InferenceFailed) for o in outcomes)
    with pytest.raises(InferenceFailed):
        await cache.get_or_compute("bad", broken)
    assert calls == 3  # the failure was not remembered


async def test_redis_down_fails_open_and_counts(redis_prefix: str) -> None:
    from server_helpers import RedisProcess

    redis = RedisProcess().start()
    metrics = Metrics()
    link = RedisLink(connect(redis.url, ServerSettings()), "t", metrics)
    cache = ResultCache(RedisBackend(link, redis_prefix, 60), metrics)

    async def compute() -> dict[str, object]:
        return {"score": 1.0}

    try:
        assert (await cache.get_or_compute("k", compute))[1] == "miss"
        redis.stop()
        assert await cache.get_or_compute("k", compute) == ({"score": 1.0}, "bypass")
        assert metrics.redis_errors.labels(component="cache")._value.get() >= 1
        redis.start()
        await asyncio.sleep(1.1)  # past the link's one-second short circuit
        assert (await cache.get_or_compute("k", compute))[1] == "miss"  # a fresh Redis (no persistence)
        assert (await cache.get_or_compute("k", compute))[1] == "hit"
    finally:
        await link.close()
        redis.stop()


def test_key_changes_with_every_input_that_changes_a_verdict() -> None:
    base = dict(content_sha256="c" * 64, model_digest="sha256:aa", card_hash="h1", params={"threshold": 0.5},
                scope="acme")
    key = cache_key(**base)  # type: ignore[arg-type]
    for field, other in [("content_sha256", "d" * 64), ("model_digest", "sha256:bb"), ("card_hash", "h2"),
                         ("params", {"threshold": 0.6}), ("scope", "globex")]:
        assert cache_key(**{**base, field: other}) != key  # type: ignore[arg-type]
    assert cache_key(**{**base, "params": {"threshold": 0.5}}) == key  # type: ignore[arg-type]


def predictions(url: str) -> float:
    return metric(httpx.get(f"{url}/metrics").text, "deepdetect_predictions_total")


def test_ten_concurrent_identical_requests_compute_once(start_server, photos: dict[str, bytes]) -> None:
    srv = start_server(max_delay_ms=50)
    before = predictions(srv.url)

    async def burst() -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=srv.url, timeout=30) as ac:
            return await asyncio.gather(*(ac.post("/v1/detect", content=photos["astronaut"])
                                          for _ in range(10)))

    responses = asyncio.run(burst())
    assert [r.status_code for r in responses] == [200] * 10
    assert len({r.json()["score"] for r in responses}) == 1
    assert sorted(r.headers["X-Cache"] for r in responses) == ["hit"] * 9 + ["miss"]
    assert predictions(srv.url) - before == 1  # the model ran once
    again = httpx.post(f"{srv.url}/v1/detect", content=photos["astronaut"])
    assert again.headers["X-Cache"] == "hit" and predictions(srv.url) - before == 1
    text = httpx.get(f"{srv.url}/metrics").text
    assert metric(text, "deepdetect_cache_lookups_total", result="miss") == 1
    assert metric(text, "deepdetect_cache_lookups_total", result="coalesced") == 9
    assert metric(text, "deepdetect_cache_lookups_total", result="hit") == 1


def test_a_checkpoint_change_misses_a_shared_cache(start_server, tmp_path: Path, redis_server,
                                                   redis_prefix: str, photos: dict[str, bytes]) -> None:
    # One runtime pinned: with `auto` each replica measures and may pick another (a different key, rightly).
    shared = {"redis_url": redis_server.url, "redis_key_prefix": redis_prefix, "runtime": "torch"}
    image = photos["chelsea"]
    first = start_server(**shared)
    assert httpx.post(f"{first.url}/v1/detect", content=image).headers["X-Cache"] == "miss"
    same_model = start_server(**shared)  # another replica, same checkpoint: served from Redis
    hit = httpx.post(f"{same_model.url}/v1/detect", content=image)
    assert hit.headers["X-Cache"] == "hit"
    new_ckpt = make_checkpoint(tmp_path / "v2.safetensors", version="2")  # a new checkpoint (other bytes)
    rolled = start_server(checkpoint=new_ckpt, **shared)
    fresh = httpx.post(f"{rolled.url}/v1/detect", content=image)
    assert fresh.headers["X-Cache"] == "miss"
    assert fresh.json()["model"]["digest"] != hit.json()["model"]["digest"]
    threshold = start_server(threshold=0.01, **shared)  # same checkpoint, another effective threshold
    assert httpx.post(f"{threshold.url}/v1/detect", content=image).headers["X-Cache"] == "miss"
    onnx = start_server(**{**shared, "runtime": "onnxruntime"})  # same checkpoint, another runtime
    assert httpx.post(f"{onnx.url}/v1/detect", content=image).headers["X-Cache"] == "miss"


def test_tenant_scope_keeps_tenants_apart(start_server, tmp_path: Path, photos: dict[str, bytes]) -> None:
    keys = tmp_path / "keys"
    keys.write_text("acme:a-key\nglobex:g-key\n")
    srv = start_server(auth_mode="apiKey", api_key_file=keys)
    image = photos["coffee"]
    assert httpx.post(f"{srv.url}/v1/detect", content=image, headers={"Authorization": "Bearer a-key"}) \
        .headers["X-Cache"] == "miss"
    assert httpx.post(f"{srv.url}/v1/detect", content=image, headers={"Authorization": "Bearer g-key"}) \
        .headers["X-Cache"] == "miss"  # globex cannot learn that acme sent these bytes
    glob = start_server(auth_mode="apiKey", api_key_file=keys, cache_scope="global")
    httpx.post(f"{glob.url}/v1/detect", content=image, headers={"Authorization": "Bearer a-key"})
    assert httpx.post(f"{glob.url}/v1/detect", content=image, headers={"Authorization": "Bearer g-key"}) \
        .headers["X-Cache"] == "hit"


def test_cache_off_sends_no_header(start_server, photos: dict[str, bytes]) -> None:
    srv = start_server(cache_enabled=False)
    resp = httpx.post(f"{srv.url}/v1/detect", content=photos["rocket"])
    assert resp.status_code == 200 and "X-Cache" not in resp.headers
    assert httpx.get(f"{srv.url}/v2").json()["cache"] == {"enabled": False}
