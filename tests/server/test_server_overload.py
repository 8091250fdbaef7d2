"""Load shedding over a real socket: a full queue and a missed deadline answer 503, health stays green."""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx
import pytest
from server_helpers import jpeg, make_checkpoint

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(scope="module")
def slow_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    # A bigger input makes each forward pass slow enough on CPU for the queue to fill.
    return make_checkpoint(tmp_path_factory.mktemp("slow") / "m.safetensors", 320)


async def _burst(url: str, image: bytes, n: int) -> tuple[list[httpx.Response], list[int]]:
    async with httpx.AsyncClient(base_url=url, timeout=60, limits=httpx.Limits(max_connections=n + 5)) as ac:
        probes: list[int] = []

        async def probe() -> None:
            for _ in range(10):
                probes.append((await ac.get("/v2/health/ready")).status_code)
                await asyncio.sleep(0.02)

        results = await asyncio.gather(*(ac.post("/v1/detect", content=image) for _ in range(n)), probe())
        return list(results[:n]), probes


def test_full_queue_answers_503_with_retry_after_while_ready_stays_200(
    start_server, slow_checkpoint: Path, photo_arrays
) -> None:
    # One image sent 40 times: without the cache, each copy must reach the queue.
    srv = start_server(checkpoint=slow_checkpoint, cache_enabled=False, max_queue=2, max_batch_size=1,
                       max_delay_ms=0, decode_workers=1)
    image = jpeg(photo_arrays["astronaut"])
    responses, probes = asyncio.run(_burst(srv.url, image, 40))
    statuses = [r.status_code for r in responses]
    assert set(statuses) <= {200, 503}
    assert statuses.count(503) >= 10 and statuses.count(200) >= 2
    shed = next(r for r in responses if r.status_code == 503)
    assert shed.headers["Retry-After"] == "1" and "queue full" in shed.json()["error"]
    assert probes == [200] * 10  # shedding load is not being unhealthy
    assert httpx.post(f"{srv.url}/v1/detect", content=image, timeout=30).status_code == 200


def test_missed_deadline_answers_503_and_the_server_recovers(start_server, photos) -> None:
    srv = start_server(request_timeout_s=0.001, cache_enabled=False)
    resp = httpx.post(f"{srv.url}/v1/detect", content=photos["astronaut"], timeout=30)
    assert resp.status_code == 503 and resp.headers["Retry-After"] == "1"
    assert "longer than" in resp.json()["error"]
    assert httpx.get(f"{srv.url}/v2/health/ready").status_code == 200
