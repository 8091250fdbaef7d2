"""Two server processes (replicas) on one real Redis: any replica answers any job; a replica that dies,
hangs or is stopped mid-job leaves the job to the other, which finishes it, with exactly one result.

The replica that must be caught mid-job ("A") runs with a 10 s batching delay: a single job's image waits
in its batcher, so the job is reliably running on A when the test kills it. Replica B runs normally.
"""

from __future__ import annotations

import os
import signal
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import redis
from jobs_helpers import ServerProcess, metric, wait_job

pytestmark = [pytest.mark.timeout(240), pytest.mark.slow]

LEASE_S = 1.5
SLOW = {"max_delay_ms": 10_000, "max_batch_size": 8}  # A holds a lone image 10 s before its batch runs


@pytest.fixture(scope="module")
def prefix() -> str:
    return f"replicas:{uuid.uuid4().hex[:8]}"


@pytest.fixture(scope="module")
def shared(redis_server, prefix: str) -> dict[str, object]:
    return {"redis_url": redis_server.url, "redis_key_prefix": prefix, "jobs_poll_s": 0.1,
            "jobs_lease_s": LEASE_S}


@pytest.fixture(scope="module")
def replica_b(checkpoint: Path, tmp_path_factory: pytest.TempPathFactory, shared) -> Iterator[ServerProcess]:
    srv = ServerProcess(checkpoint, tmp_path_factory.mktemp("b") / "b.log", **shared).wait_ready()
    yield srv
    srv.stop()


@pytest.fixture
def start_a(checkpoint: Path, tmp_path: Path, shared) -> Iterator:
    started: list[ServerProcess] = []

    def start(**settings: object) -> ServerProcess:
        srv = ServerProcess(checkpoint, tmp_path / f"a{len(started)}.log", **{**shared, **settings})
        started.append(srv)
        return srv.wait_ready()

    yield start
    for srv in started:
        srv.stop()


@pytest.fixture
def raw(redis_server) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(redis_server.url, decode_responses=True)
    yield client
    client.close()


def job_hash(raw: redis.Redis, prefix: str, job_id: str) -> dict[str, str]:
    return raw.hgetall(f"{{{prefix}}}:job:{job_id}")


def wait_running_on(raw: redis.Redis, prefix: str, job_id: str, pid: int, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        fields = job_hash(raw, prefix, job_id)
        if fields.get("state") == "running" and f"-{pid}/" in fields.get("worker", ""):
            return
        time.sleep(0.02)
    raise AssertionError(f"job never ran on pid {pid}: {job_hash(raw, prefix, job_id)}")


def submit_while_b_is_paused(a: ServerProcess, b: ServerProcess, image: bytes, raw: redis.Redis,
                             prefix: str) -> tuple[str, str]:
    """Submit to A while B is stopped (SIGSTOP), so that A claims the job; B resumes once A runs it."""
    os.kill(b.pid, signal.SIGSTOP)
    try:
        resp = httpx.post(f"{a.url}/v1/jobs", content=image, timeout=10)
        assert resp.status_code == 202, resp.text
        job_id = resp.json()["id"]
        wait_running_on(raw, prefix, job_id, a.pid)
    finally:
        os.kill(b.pid, signal.SIGCONT)
    return job_id, resp.headers["Location"]


def test_a_job_submitted_to_one_replica_is_answered_by_another(start_a, replica_b: ServerProcess, raw, prefix,
                                                               photos: dict[str, bytes]) -> None:
    a = start_a(jobs_concurrency=0)  # A only accepts: whatever runs the job, it is not A
    resp = httpx.post(f"{a.url}/v1/jobs", content=photos["chelsea"], timeout=10)
    assert resp.status_code == 202
    job = wait_job(replica_b.url, resp.headers["Location"], {})
    assert job["status"] == "succeeded" and job["attempts"] == 1
    assert httpx.get(a.url + resp.headers["Location"]).json() == job  # both replicas see the same record
    assert f"-{replica_b.pid}/" in job_hash(raw, prefix, job["id"])["worker"]
    for srv in (a, replica_b):
        meta = httpx.get(f"{srv.url}/v2").json()["jobs"]
        assert meta["store"] == "redis" and meta["durable"] is True and "note" not in meta


def test_a_killed_replicas_job_is_finished_by_the_other_once(start_a, replica_b: ServerProcess, raw, prefix,
                                                             photos: dict[str, bytes]) -> None:
    a = start_a(**SLOW)
    job_id, location = submit_while_b_is_paused(a, replica_b, photos["astronaut"], raw, prefix)
    a.proc.kill()  # SIGKILL: no shutdown, no release; only the lapsing lease tells
    a.proc.wait()
    job = wait_job(replica_b.url, location, {}, timeout=30)
    fields = job_hash(raw, prefix, job_id)
    assert job["status"] == "succeeded" and job["attempts"] == 2 and fields["lost"] == "1"
    assert f"-{replica_b.pid}/" in fields["worker"]
    direct = httpx.post(f"{replica_b.url}/v1/detect", content=photos["astronaut"], timeout=30).json()
    assert job["result"]["score"] == pytest.approx(direct["score"], abs=1e-6)
    assert raw.zcard(f"{{{prefix}}}:leases") == 0 and not raw.exists(f"{{{prefix}}}:payload:{job_id}")


def test_a_hung_replica_that_wakes_up_cannot_write_a_second_result(start_a, replica_b: ServerProcess, raw,
                                                                   prefix, photos: dict[str, bytes]) -> None:
    a = start_a(**{**SLOW, "max_delay_ms": 4000})
    job_id, location = submit_while_b_is_paused(a, replica_b, photos["rocket"], raw, prefix)
    os.kill(a.pid, signal.SIGSTOP)  # a hung pod: no heartbeats, but it is not dead
    try:
        job = wait_job(replica_b.url, location, {}, timeout=30)
        assert job["status"] == "succeeded" and job["attempts"] == 2
    finally:
        os.kill(a.pid, signal.SIGCONT)
    # A wakes up with the job's batch overdue: it runs it, then learns the lease is gone.
    deadline = time.monotonic() + 20
    notes: list[str] = []
    while time.monotonic() < deadline:
        notes = [r["msg"] for r in a.logs() if r.get("job") == job_id]
        if "job result discarded: the lease was taken over or the job canceled" in notes or \
                "job stopped" in notes:
            break
        time.sleep(0.1)
    else:
        raise AssertionError(f"A never noticed it lost the job: {notes}")
    assert "job finished" not in notes
    assert httpx.get(replica_b.url + location).json() == job  # the one result stands
    a_metrics = httpx.get(f"{a.url}/metrics").text
    assert metric(a_metrics, "deepdetect_job_transitions_total", state="succeeded") == 0


def test_a_replica_stopped_with_sigterm_hands_its_job_over_at_once(start_a, replica_b: ServerProcess, raw,
                                                                    prefix, photos: dict[str, bytes]) -> None:
    a = start_a(**SLOW, jobs_lease_s=60, shutdown_grace_s=3)  # a lease far longer than the test
    job_id, location = submit_while_b_is_paused(a, replica_b, photos["coffee"], raw, prefix)
    stopped = time.monotonic()
    a.proc.send_signal(signal.SIGTERM)
    job = wait_job(replica_b.url, location, {}, timeout=30)
    assert time.monotonic() - stopped < 20  # released on shutdown, not left to the 60 s lease
    fields = job_hash(raw, prefix, job_id)
    assert job["status"] == "succeeded" and job["attempts"] == 2 and fields.get("lost", "0") == "0"
    assert f"-{replica_b.pid}/" in fields["worker"]
    assert a.proc.wait(timeout=20) == 0
    assert any(r["msg"] == "job released" and r.get("job") == job_id for r in a.logs())
