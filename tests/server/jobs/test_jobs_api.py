"""The jobs API over a real socket, with the in-process store: lifecycle, tenancy, idempotency, limits."""

from __future__ import annotations

import time
from pathlib import Path

import httpx
import pytest
from jobs_helpers import bearer, key_file, metric, wait_job
from server_helpers import ThreadedServer

pytestmark = pytest.mark.timeout(120)

ACME, GLOBEX = bearer("acme-key-1"), bearer("globex-key-1")


@pytest.fixture
def keys(tmp_path: Path) -> Path:
    return key_file(tmp_path / "api-key", "acme:acme-key-1\nglobex:globex-key-1\n")


@pytest.fixture
def server(start_server, keys: Path) -> ThreadedServer:
    return start_server(auth_mode="apiKey", api_key_file=keys, jobs_poll_s=0.05)


def test_job_lifecycle_gives_the_detect_verdict(server: ThreadedServer, photos: dict[str, bytes]) -> None:
    direct = httpx.post(f"{server.url}/v1/detect", content=photos["coffee"], headers=ACME, timeout=30).json()
    resp = httpx.post(f"{server.url}/v1/jobs", files={"file": ("c.jpg", photos["coffee"])}, headers=ACME)
    assert resp.status_code == 202, resp.text
    location = resp.headers["Location"]
    assert location == f"/v1/jobs/{resp.json()['id']}" and resp.json()["status"] in ("queued", "running")
    job = wait_job(server.url, location, ACME)
    assert job["status"] == "succeeded" and job["attempts"] == 1
    assert job["result"]["score"] == pytest.approx(direct["score"], abs=1e-6)
    assert job["result"]["label"] == direct["label"] and job["result"]["model"] == direct["model"]
    assert job["created_at"] <= job["started_at"] <= job["finished_at"]
    text = httpx.get(f"{server.url}/metrics").text
    assert metric(text, "deepdetect_job_transitions_total", state="succeeded") == 1
    assert metric(text, "deepdetect_job_latency_seconds_count", state="succeeded") == 1
    assert metric(text, "deepdetect_tenant_requests_total", tenant="acme") >= 3


def test_raw_body_submission_and_errors(server: ThreadedServer, photos: dict[str, bytes]) -> None:
    resp = httpx.post(f"{server.url}/v1/jobs", content=photos["rocket"], headers=ACME)
    assert resp.status_code == 202
    assert wait_job(server.url, resp.headers["Location"], ACME)["status"] == "succeeded"
    assert httpx.post(f"{server.url}/v1/jobs", content=b"", headers=ACME).status_code == 400
    not_media = httpx.post(f"{server.url}/v1/jobs", content=b"%PDF-1.7 not media", headers=ACME)
    assert not_media.status_code == 415  # refused at submission, not after queueing
    assert httpx.post(f"{server.url}/v1/jobs", content=photos["rocket"]).status_code == 401


def test_a_job_is_visible_to_its_tenant_only(server: ThreadedServer, photos: dict[str, bytes]) -> None:
    resp = httpx.post(f"{server.url}/v1/jobs", content=photos["chelsea"], headers=ACME)
    location = resp.headers["Location"]
    other = httpx.get(server.url + location, headers=GLOBEX)
    assert other.status_code == 404 and "another API key's" in other.json()["error"]
    assert httpx.delete(server.url + location, headers=GLOBEX).status_code == 404
    assert httpx.get(f"{server.url}/v1/jobs/{'0' * 32}", headers=ACME).status_code == 404
    assert httpx.get(f"{server.url}/v1/jobs/../../etc", headers=ACME).status_code == 404


def test_idempotency_key_is_scoped_to_the_api_key(server: ThreadedServer, photos: dict[str, bytes]) -> None:
    def submit(body: bytes, headers: dict[str, str]) -> httpx.Response:
        return httpx.post(f"{server.url}/v1/jobs", content=body,
                          headers={**headers, "Idempotency-Key": "order-7"})

    first = submit(photos["astronaut"], ACME)
    again = submit(photos["astronaut"], ACME)
    assert first.status_code == again.status_code == 202
    assert again.json()["id"] == first.json()["id"] and again.headers["Location"] == first.headers["Location"]
    assert again.headers["Idempotent-Replayed"] == "true" and "Idempotent-Replayed" not in first.headers
    clash = submit(photos["coffee"], ACME)
    assert clash.status_code == 409 and "different request" in clash.json()["error"]
    theirs = submit(photos["coffee"], GLOBEX)  # same key, another tenant: its own job
    assert theirs.status_code == 202 and theirs.json()["id"] != first.json()["id"]
    too_long = httpx.post(f"{server.url}/v1/jobs", content=photos["coffee"],
                          headers={**ACME, "Idempotency-Key": "x" * 300})
    assert too_long.status_code == 400


def test_cancel_a_queued_job_then_cancel_again_is_409(start_server, keys: Path,
                                                      photos: dict[str, bytes]) -> None:
    srv = start_server(auth_mode="apiKey", api_key_file=keys, jobs_concurrency=0)  # accepts, never runs
    location = httpx.post(f"{srv.url}/v1/jobs", content=photos["coffee"], headers=ACME).headers["Location"]
    assert httpx.get(srv.url + location, headers=ACME).json()["status"] == "queued"
    time.sleep(2.5)  # the queue gauge refreshes every 2 s
    assert metric(httpx.get(f"{srv.url}/metrics").text, "deepdetect_jobs", state="queued") == 1
    canceled = httpx.delete(srv.url + location, headers=ACME)
    assert canceled.status_code == 200 and canceled.json()["status"] == "canceled"
    again = httpx.delete(srv.url + location, headers=ACME)
    assert again.status_code == 409 and "already canceled" in again.json()["error"]


def test_results_expire(start_server, photos: dict[str, bytes]) -> None:
    srv = start_server(jobs_result_ttl_s=1.0, jobs_poll_s=0.05)
    location = httpx.post(f"{srv.url}/v1/jobs", content=photos["coffee"]).headers["Location"]
    assert wait_job(srv.url, location, {})["status"] == "succeeded"
    time.sleep(1.2)
    gone = httpx.get(srv.url + location)
    assert gone.status_code == 404 and "expired" in gone.json()["error"]


def test_payload_cap(start_server, photos: dict[str, bytes]) -> None:
    srv = start_server(jobs_max_payload_mb=0.01)
    resp = httpx.post(f"{srv.url}/v1/jobs", content=photos["astronaut"])
    assert resp.status_code == 413 and "job payload limit" in resp.json()["error"]


def test_in_process_store_says_jobs_do_not_survive_a_restart(server: ThreadedServer) -> None:
    meta = httpx.get(f"{server.url}/v2").json()
    assert meta["name"] == "deepdetect" and "extensions" in meta
    assert meta["jobs"]["store"] == "memory" and meta["jobs"]["durable"] is False
    assert "do not survive a restart" in meta["jobs"]["note"]
    assert meta["cache"] == {"enabled": True, "backend": "memory", "scope": "tenant"}


def test_jobs_disabled_is_a_clear_404(start_server, photos: dict[str, bytes]) -> None:
    srv = start_server(jobs_enabled=False)
    resp = httpx.post(f"{srv.url}/v1/jobs", content=photos["coffee"])
    assert resp.status_code == 404 and "not enabled" in resp.json()["error"]
    assert httpx.get(f"{srv.url}/v2").json()["jobs"] == {"enabled": False}


def test_callbacks_need_an_allowed_host(server: ThreadedServer, photos: dict[str, bytes]) -> None:
    resp = httpx.post(f"{server.url}/v1/jobs", files={"file": ("c.jpg", photos["coffee"])},
                      data={"callback_url": "http://127.0.0.1:9/hook"}, headers=ACME)
    assert resp.status_code == 400 and "callbacks are not enabled" in resp.json()["error"]
