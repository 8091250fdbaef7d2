"""Run jobs from the store on this replica: claim, keep the lease alive, write exactly one final result.

`jobs_concurrency` slots each loop: claim a job (only while the model is ready: a draining replica
leaves new work to the others), score it while a heartbeat renews the lease every third of `jobs_lease_s`,
then `finish` with the claim's token. The store refuses a finish from a worker whose lease lapsed and was
taken over, so a job that two replicas ran still gets one answer; the heartbeat notices a cancel or a lost
lease and stops the scoring at once.

Errors: a bad input (400/413/415/422) or a deadline fails the job with its status and message; a
temporary condition (model not ready, batch queue full) puts the job back for later. On shutdown the
running jobs get what is left of the grace period; those that cannot finish are released, so another
replica starts them at once instead of waiting for the lease to lapse. A crashed replica's jobs come back
when their lease lapses.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
import socket
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from ..errors import DeepDetectError, NotReady, Overloaded, StoreUnavailable, status_for
from .model import Claim, FinalState

if TYPE_CHECKING:
    from ..metrics import Metrics
    from .store import JobStore

log = logging.getLogger("deepdetect.jobs")

Run = Callable[[Claim], Awaitable[dict[str, Any]]]
TRANSIENT = (NotReady, Overloaded, StoreUnavailable)
GAUGE_REFRESH_S = 2.0


def worker_name() -> str:
    return f"{socket.gethostname()}-{os.getpid()}"


class JobRunner:
    def __init__(self, store: JobStore, run: Run, *, concurrency: int, lease_s: float, poll_s: float,
                 metrics: Metrics, can_claim: Callable[[], bool], on_final: Callable[[], None] = lambda: None,
                 worker: str | None = None) -> None:
        self.store = store
        self.run = run
        self.concurrency = concurrency
        self.lease_s = lease_s
        self.poll_s = poll_s
        self.metrics = metrics
        self.can_claim = can_claim
        self.on_final = on_final
        self.worker = worker or worker_name()
        self._wake = asyncio.Event()
        self._stopping = False
        self._slots: list[asyncio.Task[None]] = []
        self._gauge_task: asyncio.Task[None] | None = None
        self._running: dict[str, Claim] = {}

    @property
    def running(self) -> list[str]:
        return list(self._running)

    def start(self) -> None:
        self._slots = [asyncio.create_task(self._slot(i), name=f"job-slot-{i}")
                       for i in range(self.concurrency)]
        self._gauge_task = asyncio.create_task(self._gauges(), name="job-gauges")

    def wake(self) -> None:
        self._wake.set()

    async def stop(self, grace_s: float) -> None:
        """Claim nothing more; give running jobs `grace_s`, then release what is left to other replicas."""
        self._stopping = True
        self._wake.set()
        if self._gauge_task is not None:
            self._gauge_task.cancel()
        if not self._slots:
            return
        _, pending = await asyncio.wait(self._slots, timeout=grace_s)
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)

    async def _idle(self, seconds: float) -> None:
        # Jitter: replicas started together should not poll Redis in lockstep.
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._wake.wait(), seconds * random.uniform(0.5, 1.0))
        self._wake.clear()

    async def _slot(self, index: int) -> None:
        worker = f"{self.worker}/{index}"
        while not self._stopping:
            if not self.can_claim():
                await self._idle(self.poll_s)
                continue
            try:
                claim = await self.store.claim(worker, self.lease_s)
            except StoreUnavailable:
                await self._idle(max(self.poll_s, 1.0))
                continue
            if claim is None:
                await self._idle(self.poll_s)
                continue
            self._wake.set()  # there may be more: let an idle sibling look too
            await self._execute(claim)

    async def _execute(self, claim: Claim) -> None:
        job = claim.job
        self.metrics.job_transitions.labels(state="running").inc()
        log.info("job started", extra={"job": job.id, "tenant": job.tenant, "attempt": job.attempts})
        started = time.monotonic()
        self._running[job.id] = claim
        work = asyncio.create_task(self.run(claim))
        beat = asyncio.create_task(self._heartbeat(claim, work))
        outcome: tuple[FinalState, dict[str, Any] | None, dict[str, Any] | None] | None = None
        try:
            result = await work
            outcome = ("succeeded", result, None)
        except asyncio.CancelledError:
            if beat.done() and not beat.cancelled():  # canceled by the client, or the lease was taken over
                log.info("job stopped", extra={"job": job.id, "reason": beat.result()})
                return
            await self._release(claim, "shutdown")
            raise
        except TRANSIENT as exc:
            log.warning("job put back", extra={"job": job.id, "error": exc.message})
            await self._release(claim, "retry")
            await asyncio.sleep(min(5.0, self.poll_s * 4))
            return
        except DeepDetectError as exc:
            outcome = ("failed", None, {"status": status_for(exc), "message": exc.message})
        except Exception:
            log.exception("job crashed", extra={"job": job.id})
            outcome = ("failed", None, {"status": 500, "message": "internal error while scoring"})
        finally:
            beat.cancel()
            self._running.pop(job.id, None)
        await self._finish(claim, *outcome, run_s=time.monotonic() - started)

    async def _heartbeat(self, claim: Claim, work: asyncio.Task[Any]) -> str:
        while True:
            await asyncio.sleep(self.lease_s / 3)
            try:
                beat = await self.store.heartbeat(claim, self.lease_s)
            except StoreUnavailable:
                continue  # keep working: the finish will tell whether the lease survived
            if beat != "ok":
                work.cancel()
                return beat

    async def _finish(self, claim: Claim, state: FinalState, result: dict[str, Any] | None,
                      error: dict[str, Any] | None, run_s: float) -> None:
        deadline = time.monotonic() + self.lease_s
        while True:
            try:
                done = await self.store.finish(claim, state, result, error)
                break
            except StoreUnavailable:
                if time.monotonic() > deadline:  # the lease lapsed meanwhile: another replica has it
                    log.error("job result lost: the store stayed unreachable", extra={"job": claim.job.id})
                    return
                await asyncio.sleep(0.5)
        if not done:
            log.warning("job result discarded: the lease was taken over or the job canceled",
                        extra={"job": claim.job.id})
            return
        self.metrics.job_transitions.labels(state=state).inc()
        self.metrics.job_run.observe(run_s)
        self.metrics.job_latency.labels(state=state).observe(max(0.0, time.time() - claim.job.created_at))
        log.info("job finished", extra={"job": claim.job.id, "tenant": claim.job.tenant, "state": state,
                                        "run_s": round(run_s, 3)})
        self.on_final()

    async def _release(self, claim: Claim, why: str) -> None:
        try:
            async with asyncio.timeout(2.0):
                if await self.store.release(claim):
                    self.metrics.job_transitions.labels(state="queued").inc()
                    log.info("job released", extra={"job": claim.job.id, "reason": why})
        except (StoreUnavailable, TimeoutError):
            log.warning("job not released: its lease will lapse", extra={"job": claim.job.id})

    async def _gauges(self) -> None:
        while True:
            with contextlib.suppress(StoreUnavailable):
                for state, n in (await self.store.depth()).items():
                    self.metrics.jobs.labels(state=state).set(n)
            await asyncio.sleep(GAUGE_REFRESH_S)
