"""Redis stops mid-run: /v1/detect keeps serving without the cache (counted), the jobs API answers 503 with a
clear message; Redis starts again (same port, append-only file): everything resumes, no server restart."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from jobs_helpers import metric, wait_job
from server_helpers import RedisProcess

pytestmark = pytest.mark.timeout(120)


@pytest.fixture
def redis_aof(tmp_path: Path) -> Iterator[RedisProcess]:
    (tmp_path / "redis").mkdir()
    proc = RedisProcess(persist_dir=tmp_path / "redis").start()
    yield proc
    proc.stop()


def until(check, timeout: float = 15.0):  # -> the first truthy result of check()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = check()
        if result:
            return result
        time.sleep(0.1)
    raise AssertionError("condition never held")


def test_redis_outage_and_recovery_without_restart(start_server, redis_aof: RedisProcess,
                                                   photos: dict[str, bytes]) -> None:
    srv = start_server(redis_url=redis_aof.url, jobs_poll_s=0.05)
    image = photos["astronaut"]
    assert httpx.post(f"{srv.url}/v1/detect", content=image).headers["X-Cache"] == "miss"
    assert httpx.post(f"{srv.url}/v1/detect", content=image).headers["X-Cache"] == "hit"
    before_outage = httpx.post(f"{srv.url}/v1/jobs", content=photos["coffee"]).headers["Location"]
    assert wait_job(srv.url, before_outage, {})["status"] == "succeeded"

    redis_aof.stop()
    served = [httpx.post(f"{srv.url}/v1/detect", content=img, timeout=10)
              for img in (image, photos["rocket"])]
    assert [r.status_code for r in served] == [200, 200]
    assert [r.headers["X-Cache"] for r in served] == ["bypass", "bypass"]
    submit = httpx.post(f"{srv.url}/v1/jobs", content=photos["chelsea"], timeout=10)
    assert submit.status_code == 503 and submit.headers["Retry-After"] == "5"
    assert "job store is unavailable" in submit.json()["error"] and redis_aof.url.split("//")[1] in \
        submit.json()["error"]
    read = httpx.get(srv.url + before_outage, timeout=10)
    assert read.status_code == 503 and "retry later" in read.json()["error"]
    text = httpx.get(f"{srv.url}/metrics").text
    assert metric(text, "deepdetect_redis_up") == 0
    assert metric(text, "deepdetect_redis_errors_total", component="cache") >= 2
    assert metric(text, "deepdetect_cache_lookups_total", result="bypass") == 2
    assert httpx.get(f"{srv.url}/v2/health/ready").status_code == 200  # still a healthy replica

    redis_aof.start()  # same port; the append-only file brings back what was written
    until(lambda: httpx.get(srv.url + before_outage, timeout=10).status_code == 200)
    assert httpx.get(srv.url + before_outage).json()["status"] == "succeeded"  # nothing accepted was lost
    assert httpx.post(f"{srv.url}/v1/detect", content=image).headers["X-Cache"] == "hit"
    after = httpx.post(f"{srv.url}/v1/jobs", content=photos["chelsea"], timeout=10)
    assert after.status_code == 202
    assert wait_job(srv.url, after.headers["Location"], {})["status"] == "succeeded"
    assert metric(httpx.get(f"{srv.url}/metrics").text, "deepdetect_redis_up") == 1


def test_server_starts_while_redis_is_down(start_server, redis_aof: RedisProcess,
                                           photos: dict[str, bytes]) -> None:
    redis_aof.stop()
    srv = start_server(redis_url=redis_aof.url, jobs_poll_s=0.05)  # ready: the model does not need Redis
    assert httpx.post(f"{srv.url}/v1/detect", content=photos["coffee"]).status_code == 200
    assert httpx.post(f"{srv.url}/v1/jobs", content=photos["coffee"]).status_code == 503
    redis_aof.start()
    resp = until(lambda: (r := httpx.post(f"{srv.url}/v1/jobs", content=photos["coffee"])).status_code == 202
                 and r)
    assert wait_job(srv.url, resp.headers["Location"], {})["status"] == "succeeded"
