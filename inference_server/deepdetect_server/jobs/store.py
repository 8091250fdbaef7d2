"""The job store contract, and the in-process store for a single replica.

Every store (this one, `redis_store.RedisJobStore`) passes the same contract tests
(tests/server/jobs/test_jobs_store.py). The rules they pin:
- `submit` is idempotent per (tenant, Idempotency-Key): the same body returns the same job, another body
  raises Conflict; the queue is bounded (Overloaded when full).
- `claim` hands a queued job, or one whose lease lapsed (its replica died), to one worker with a fresh
  token; a job lost `max_attempts` times fails instead of crashing replicas forever.
- `heartbeat`, `finish`, `release` act only for the current token: a worker whose lease was taken over
  cannot write a result, so a job gets exactly one final result even if two workers ran it.
- final states are kept `result_ttl_s` (then gone: 404), together with the idempotency key.
- a final job with a callback URL is due for delivery; `claim_callback` hands it out for a while
  (visibility timeout), `callback_result` records the outcome or when to retry.

This store lives in the process: jobs do not survive a restart and other replicas do not see them.
`/v2` and the docs say so; use Redis for more than one replica.
"""

from __future__ import annotations

import time
import uuid
from collections import deque
from collections.abc import Callable
from dataclasses import replace
from typing import Any, Literal, Protocol

from ..errors import Conflict, Overloaded
from .model import Claim, FinalState, JobRecord, NewJob, Submitted

Beat = Literal["ok", "canceled", "lost"]
CallbackOutcome = Literal["delivered", "retry", "failed"]


class JobStore(Protocol):
    kind: str  # "memory" | "redis"
    durable: bool  # survives a restart of this process, visible to every replica

    async def submit(self, new: NewJob) -> Submitted: ...
    async def get(self, job_id: str, tenant: str) -> JobRecord | None: ...
    async def cancel(self, job_id: str, tenant: str) -> JobRecord | None: ...
    async def claim(self, worker: str, lease_s: float) -> Claim | None: ...
    async def heartbeat(self, claim: Claim, lease_s: float) -> Beat: ...
    async def finish(self, claim: Claim, state: FinalState, result: dict[str, Any] | None = None,
                     error: dict[str, Any] | None = None) -> bool: ...
    async def release(self, claim: Claim) -> bool: ...
    async def depth(self) -> dict[str, int]: ...
    async def claim_callback(self, lease_s: float) -> JobRecord | None: ...
    async def callback_result(self, job_id: str, outcome: CallbackOutcome, error: str = "",
                              retry_in_s: float = 0.0) -> None: ...
    async def ping(self) -> None: ...
    async def close(self) -> None: ...


def conflict(job_id: str) -> Conflict:
    return Conflict(f"Idempotency-Key was already used with a different request (job {job_id}): "
                    "use a new key for a new request")


def queue_full(max_queued: int) -> Overloaded:
    return Overloaded(f"the job queue is full ({max_queued} jobs waiting): retry later")


def not_cancelable(job: JobRecord) -> Conflict:
    return Conflict(f"job {job.id} already {job.state}: nothing to cancel")


class MemoryJobStore:
    """Dicts and a deque in this process; every method runs without awaiting, so each is atomic."""

    kind = "memory"
    durable = False

    def __init__(self, result_ttl_s: float, max_queued: int, max_attempts: int,
                 clock: Callable[[], float] = time.time) -> None:
        self.result_ttl_s = result_ttl_s
        self.max_queued = max_queued
        self.max_attempts = max_attempts
        self.clock = clock
        self._jobs: dict[str, JobRecord] = {}
        self._payloads: dict[str, bytes] = {}
        self._queue: deque[str] = deque()
        self._leases: dict[str, tuple[str, float]] = {}  # id -> (token, expires at)
        self._expires: dict[str, float] = {}  # final jobs -> when they are forgotten
        self._idem: dict[tuple[str, str], tuple[str, str]] = {}  # (tenant, key) -> (id, body sha)
        self._idem_of: dict[str, tuple[str, str]] = {}
        self._callbacks: dict[str, float] = {}  # id -> due at

    def _sweep(self) -> None:
        now = self.clock()
        for job_id in [j for j, at in self._expires.items() if at <= now]:
            del self._expires[job_id]
            self._jobs.pop(job_id, None)
            self._callbacks.pop(job_id, None)
            idem = self._idem_of.pop(job_id, None)
            if idem is not None:
                self._idem.pop(idem, None)

    async def submit(self, new: NewJob) -> Submitted:
        self._sweep()
        idem = (new.tenant, new.idempotency_key) if new.idempotency_key else None
        if idem is not None and idem in self._idem:
            job_id, sha = self._idem[idem]
            if sha != new.body_sha256:
                raise conflict(job_id)
            return Submitted(replace(self._jobs[job_id]), created=False)
        if len(self._queue) >= self.max_queued:
            raise queue_full(self.max_queued)
        now = self.clock()
        job = JobRecord(id=new.id, tenant=new.tenant, state="queued", created_at=now, updated_at=now,
                        params=dict(new.params), callback_url=new.callback_url, size=len(new.payload))
        self._jobs[job.id] = job
        self._payloads[job.id] = new.payload
        self._queue.appendleft(job.id)
        if idem is not None:
            self._idem[idem] = (job.id, new.body_sha256)
            self._idem_of[job.id] = idem
        return Submitted(replace(job), created=True)

    async def get(self, job_id: str, tenant: str) -> JobRecord | None:
        self._sweep()
        job = self._jobs.get(job_id)
        return replace(job) if job is not None and job.tenant == tenant else None

    def _finalize(self, job: JobRecord, state: FinalState, result: dict[str, Any] | None,
                  error: dict[str, Any] | None) -> None:
        now = self.clock()
        job.state, job.result, job.error = state, result, error
        job.finished_at = job.updated_at = now
        job.event_id = uuid.uuid4().hex
        self._leases.pop(job.id, None)
        self._payloads.pop(job.id, None)
        self._expires[job.id] = now + self.result_ttl_s
        if job.callback_url:
            job.callback_state = "pending"
            self._callbacks[job.id] = now

    async def cancel(self, job_id: str, tenant: str) -> JobRecord | None:
        self._sweep()
        job = self._jobs.get(job_id)
        if job is None or job.tenant != tenant:
            return None
        if job.terminal:
            raise not_cancelable(job)
        if job.state == "queued":
            self._queue.remove(job.id)
        self._finalize(job, "canceled", None, None)
        return replace(job)

    async def claim(self, worker: str, lease_s: float) -> Claim | None:
        self._sweep()
        now = self.clock()
        while True:
            expired = next((j for j, (_, at) in self._leases.items() if at <= now), None)
            if expired is not None:
                job = self._jobs[expired]
                job.lost += 1
                if job.lost >= self.max_attempts:
                    self._finalize(job, "failed", None, lost_error(job.lost))
                    continue
            elif self._queue:
                job = self._jobs[self._queue.pop()]
            else:
                return None
            token = uuid.uuid4().hex
            job.state, job.worker = "running", worker
            job.attempts += 1
            job.started_at = job.updated_at = now
            self._leases[job.id] = (token, now + lease_s)
            return Claim(replace(job), self._payloads[job.id], token)

    def _holds(self, claim: Claim) -> JobRecord | None:
        job = self._jobs.get(claim.job.id)
        lease = self._leases.get(claim.job.id)
        if job is None or job.state != "running" or lease is None or lease[0] != claim.token:
            return None
        return job

    async def heartbeat(self, claim: Claim, lease_s: float) -> Beat:
        job = self._holds(claim)
        if job is None:
            current = self._jobs.get(claim.job.id)
            return "canceled" if current is not None and current.state == "canceled" else "lost"
        self._leases[job.id] = (claim.token, self.clock() + lease_s)
        return "ok"

    async def finish(self, claim: Claim, state: FinalState, result: dict[str, Any] | None = None,
                     error: dict[str, Any] | None = None) -> bool:
        job = self._holds(claim)
        if job is None:
            return False
        self._finalize(job, state, result, error)
        return True

    async def release(self, claim: Claim) -> bool:
        job = self._holds(claim)
        if job is None:
            return False
        del self._leases[job.id]
        job.state, job.worker, job.updated_at = "queued", "", self.clock()
        self._queue.append(job.id)  # the next one out
        return True

    async def depth(self) -> dict[str, int]:
        return {"queued": len(self._queue), "running": len(self._leases)}

    async def claim_callback(self, lease_s: float) -> JobRecord | None:
        self._sweep()
        now = self.clock()
        job_id = next((j for j, at in sorted(self._callbacks.items(), key=lambda x: x[1]) if at <= now), None)
        if job_id is None:
            return None
        self._callbacks[job_id] = now + lease_s
        return replace(self._jobs[job_id])

    async def callback_result(self, job_id: str, outcome: CallbackOutcome, error: str = "",
                              retry_in_s: float = 0.0) -> None:
        job = self._jobs.get(job_id)
        if job is None:
            self._callbacks.pop(job_id, None)
            return
        job.callback_attempts += 1
        job.callback_error = error
        if outcome == "retry":
            self._callbacks[job_id] = self.clock() + retry_in_s
            return
        self._callbacks.pop(job_id, None)
        job.callback_state = outcome

    async def ping(self) -> None:
        return None

    async def close(self) -> None:
        return None


def lost_error(times: int) -> dict[str, Any]:
    return {"status": 500, "message": f"the replica running this job was lost {times} times: given up "
            "(an input that crashes the server?)"}
