"""The operator's shared resolver against a real local HTTP server: one request round per URI per interval."""

from __future__ import annotations

import asyncio

import pytest
from deepdetect_operator.api import CheckpointSpec
from deepdetect_operator.checkpoints import CheckpointResolveError
from deepdetect_operator.resolution import CheckpointResolver
from rollout_helpers import FileServer

CRS = 1000


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
async def resolver() -> CheckpointResolver:
    r = CheckpointResolver(timeout_s=5, clock=Clock())
    yield r
    await r.close()


def rounds(server: FileServer, path: str) -> int:
    """Resolutions the server saw: each one is a GET of `<path>.sha256` (then a HEAD when there is none)."""
    return sum(1 for method, p in server.requests if (method, p) == ("GET", f"{path}.sha256"))


async def many(resolver: CheckpointResolver, uri: str, n: int, poll: float, **kw: object) -> set[str]:
    results = await asyncio.gather(
        *(resolver.resolve(CheckpointSpec(uri=uri), max_age_s=poll, **kw) for _ in range(n))  # type: ignore[arg-type]
    )
    return {r.digest for r in results}


async def test_a_thousand_crs_on_one_uri_cost_one_resolution_per_interval(
    file_server: FileServer, resolver: CheckpointResolver
) -> None:
    clock: Clock = resolver.clock  # type: ignore[assignment]
    file_server.put("/m.safetensors", b"v1", etag='"e1"')
    file_server.delay_s = 0.05  # slow enough that the thousand callers overlap the first request
    uri = f"{file_server.url}/m.safetensors"
    assert await many(resolver, uri, CRS, 60) == {"etag:e1"}
    assert rounds(file_server, "/m.safetensors") == 1
    assert file_server.requests.count(("HEAD", "/m.safetensors")) == 1
    # Within the interval: from the cache, even one by one (no overlap to coalesce).
    clock.now += 30
    file_server.put("/m.safetensors", b"v2", etag='"e2"')
    for _ in range(CRS):
        assert (await resolver.resolve(CheckpointSpec(uri=uri), max_age_s=60)).digest == "etag:e1"
    assert rounds(file_server, "/m.safetensors") == 1
    # The interval is over: one more round, which sees the new bytes.
    clock.now += 31
    assert await many(resolver, uri, CRS, 60) == {"etag:e2"}
    assert rounds(file_server, "/m.safetensors") == 2
    assert resolver.fetches == 2


async def test_the_shortest_poll_interval_sets_the_pace(
    file_server: FileServer, resolver: CheckpointResolver
) -> None:
    clock: Clock = resolver.clock  # type: ignore[assignment]
    file_server.put("/m.safetensors", b"v1", etag='"e1"')
    uri = f"{file_server.url}/m.safetensors"
    await many(resolver, uri, 10, 300)
    clock.now += 61
    assert await many(resolver, uri, 10, 300) == {"etag:e1"}  # the 5-minute CRs reuse the result
    assert rounds(file_server, "/m.safetensors") == 1
    await resolver.resolve(CheckpointSpec(uri=uri), max_age_s=60)  # a 1-minute CR asks again
    assert rounds(file_server, "/m.safetensors") == 2
    assert await many(resolver, uri, 10, 300) == {"etag:e1"}
    assert rounds(file_server, "/m.safetensors") == 2


async def test_different_credentials_never_share_an_answer(
    file_server: FileServer, resolver: CheckpointResolver
) -> None:
    file_server.require_token = "tok3n"
    file_server.put("/m.safetensors", b"w", etag='"e"')
    spec = CheckpointSpec(uri=f"{file_server.url}/m.safetensors")
    good, bad = {"token": "tok3n"}, {"token": "wrong"}
    outcomes = await asyncio.gather(
        *(resolver.resolve(spec, secret_data=good if i % 2 else bad, max_age_s=60) for i in range(200)),
        return_exceptions=True,
    )
    assert {o.digest for o in outcomes[1::2]} == {"etag:e"}  # type: ignore[union-attr]
    refused = outcomes[0::2]
    assert all(isinstance(o, CheckpointResolveError) and "HTTP 401" in str(o) for o in refused)
    assert all("tok3n" not in str(o) and "wrong" not in str(o) for o in refused)
    assert rounds(file_server, "/m.safetensors") == 2  # one round per credential set


async def test_an_error_reaches_every_caller_and_is_cached_for_the_interval(
    file_server: FileServer, resolver: CheckpointResolver
) -> None:
    clock: Clock = resolver.clock  # type: ignore[assignment]
    uri = f"{file_server.url}/missing.safetensors"
    outcomes = await asyncio.gather(
        *(resolver.resolve(CheckpointSpec(uri=uri), max_age_s=60) for _ in range(50)), return_exceptions=True
    )
    assert all(isinstance(o, CheckpointResolveError) and "HTTP 404" in str(o) for o in outcomes)
    assert rounds(file_server, "/missing.safetensors") == 1
    file_server.put("/missing.safetensors", b"w", etag='"now-here"')
    clock.now += 61
    assert (await resolver.resolve(CheckpointSpec(uri=uri), max_age_s=60)).digest == "etag:now-here"


async def test_a_cancelled_caller_does_not_cancel_the_others(
    file_server: FileServer, resolver: CheckpointResolver
) -> None:
    file_server.put("/m.safetensors", b"w", etag='"e"')
    file_server.delay_s = 0.3
    spec = CheckpointSpec(uri=f"{file_server.url}/m.safetensors")
    first = asyncio.create_task(resolver.resolve(spec, max_age_s=60))
    second = asyncio.create_task(resolver.resolve(spec, max_age_s=60))
    await asyncio.sleep(0.1)
    first.cancel()
    assert (await second).digest == "etag:e"
    with pytest.raises(asyncio.CancelledError):
        await first
    assert rounds(file_server, "/m.safetensors") == 1


async def test_one_client_for_the_operator_closed_on_shutdown(
    file_server: FileServer, resolver: CheckpointResolver
) -> None:
    file_server.put("/a", b"w", etag='"a"')
    file_server.put("/b", b"w", etag='"b"')
    await resolver.resolve(CheckpointSpec(uri=f"{file_server.url}/a"), max_age_s=60)
    client = resolver.client()
    await resolver.resolve(CheckpointSpec(uri=f"{file_server.url}/b"), max_age_s=60)
    assert resolver.client() is client
    await resolver.close()
    assert client.is_closed


async def test_per_host_limit_bounds_requests_in_flight(file_server: FileServer) -> None:
    resolver = CheckpointResolver(timeout_s=5, per_host=2)
    try:
        for i in range(6):
            file_server.put(f"/m{i}", b"w", etag=f'"e{i}"')
        file_server.delay_s = 0.2
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        await asyncio.gather(
            *(resolver.resolve(CheckpointSpec(uri=f"{file_server.url}/m{i}"), max_age_s=60) for i in range(6))
        )
        # 6 sources, 2 at a time, 2 requests of 0.2 s each (the .sha256 GET, the HEAD): 3 waves of 0.4 s.
        assert loop.time() - t0 >= 1.1
    finally:
        await resolver.close()
