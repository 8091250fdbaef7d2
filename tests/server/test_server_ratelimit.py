"""Rate limits: the in-process and Redis storages pass the same tests; over HTTP one tenant's 429 leaves
another tenant served, and the 429 says when to retry."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import httpx
import pytest
from deepdetect_server.config import ServerSettings
from deepdetect_server.errors import TooManyRequests, headers_for, status_for
from deepdetect_server.metrics import Metrics
from deepdetect_server.ratelimit import RateLimiter
from deepdetect_server.redis_link import RedisLink, connect
from pydantic import ValidationError
from server_helpers import metric

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(params=["memory", "redis"])
async def make_limiter(request: pytest.FixtureRequest,
                       redis_prefix: str) -> AsyncIterator[Callable[..., RateLimiter]]:
    links: list[RedisLink] = []

    def make(**settings: object) -> RateLimiter:
        s = ServerSettings(redis_key_prefix=redis_prefix, **settings)  # type: ignore[arg-type]
        if request.param == "memory":
            return RateLimiter(s, Metrics())
        link = RedisLink(connect(request.getfixturevalue("redis_server").url, s), "t", Metrics())
        links.append(link)
        return RateLimiter(s, Metrics(), link)

    yield make
    for link in links:
        await link.close()


async def test_requests_over_the_limit_get_429_with_retry_after(make_limiter) -> None:
    limiter = make_limiter(rate_limit_requests="3/minute")
    for _ in range(3):
        await limiter.admit("acme")
    with pytest.raises(TooManyRequests, match="over its requests limit of 3 per 1 minute") as err:
        await limiter.admit("acme")
    assert status_for(err.value) == 429 and 1 <= int(headers_for(err.value)["Retry-After"]) <= 60
    await limiter.admit("globex")  # its own budget
    assert limiter.metrics.rate_limited.labels(tenant="acme", limit="requests")._value.get() == 1


async def test_media_is_charged_by_cost_and_overrides_apply(make_limiter) -> None:
    limiter = make_limiter(rate_limit_media="10/minute", rate_limit_tenants={"vip": {"media": "100/minute"}})
    await limiter.charge_media("acme", 8)  # e.g. a video sampled into 8 frames
    await limiter.charge_media("acme", 2)
    with pytest.raises(TooManyRequests, match="media limit"):
        await limiter.charge_media("acme", 1)
    with pytest.raises(TooManyRequests, match="more than the whole media budget of tenant 'acme'"):
        await limiter.charge_media("acme", 11)
    await limiter.charge_media("vip", 60)
    await limiter.charge_media("vip", 40)
    assert not limiter._rates("vip", "requests")  # no request limit configured: unlimited


async def test_no_limits_configured_admits_everything(make_limiter) -> None:
    limiter = make_limiter()
    assert not limiter.enabled
    for _ in range(50):
        await limiter.admit("acme", media_cost=100)


def test_bad_rates_are_refused_at_start() -> None:
    with pytest.raises(ValidationError, match="is not a rate"):
        ServerSettings(rate_limit_requests="fast")
    with pytest.raises(ValidationError, match="is not a rate"):
        ServerSettings(rate_limit_tenants={"acme": {"media": "10 per"}})


def test_a_tenant_over_its_limit_gets_429_while_another_is_served(start_server, tmp_path: Path,
                                                                  photos: dict[str, bytes]) -> None:
    keys = tmp_path / "api-key"
    keys.write_text("acme:acme-key\nglobex:globex-key\n")
    srv = start_server(auth_mode="apiKey", api_key_file=keys, rate_limit_requests="3/minute",
                       rate_limit_tenants={"globex": {"requests": "100/minute"}})
    acme, globex = {"Authorization": "Bearer acme-key"}, {"Authorization": "Bearer globex-key"}
    statuses = [httpx.post(f"{srv.url}/v1/detect", content=photos["coffee"], headers=acme).status_code
                for _ in range(3)]
    refused = httpx.post(f"{srv.url}/v1/detect", content=photos["coffee"], headers=acme)
    assert statuses == [200, 200, 200] and refused.status_code == 429
    assert 1 <= int(refused.headers["Retry-After"]) <= 60 and "acme" in refused.json()["error"]
    assert httpx.post(f"{srv.url}/v1/jobs", content=photos["coffee"], headers=acme).status_code == 429
    for _ in range(5):
        assert httpx.post(f"{srv.url}/v1/detect", content=photos["coffee"], headers=globex).status_code == 200
    text = httpx.get(f"{srv.url}/metrics").text
    assert metric(text, "deepdetect_rate_limited_total", tenant="acme", limit="requests") == 2
    assert metric(text, "deepdetect_rate_limited_total", tenant="globex") == 0
    assert metric(text, "deepdetect_tenant_requests_total", tenant="acme", status="429") == 2
    assert "acme-key" not in text and "globex-key" not in text  # names, never keys


def test_v2_infer_is_limited_too(start_server, photos: dict[str, bytes]) -> None:
    import base64

    srv = start_server(rate_limit_media="3/minute")
    image = base64.b64encode(photos["coffee"]).decode()

    def infer(n: int) -> httpx.Response:
        body = {"inputs": [{"name": "image", "shape": [n], "datatype": "BYTES", "data": [image] * n}]}
        return httpx.post(f"{srv.url}/v2/models/deepdetect/infer", content=json.dumps(body))

    assert infer(2).status_code == 200
    over = infer(2)  # 4 images of a 3-image budget
    assert over.status_code == 429 and "media limit" in over.json()["error"]
