"""Leader election on a `coordination.k8s.io/v1` Lease, as client-go's leaderelection does it.

Several replicas run; only the holder of the Lease runs kopf (so only it watches and writes), the others
wait. The holder renews every `renew_s`; a standby takes the Lease over once it has seen the same
record unchanged for `lease_s` (judged on its own monotonic clock, so clock skew between nodes does
not matter). Every write is a PUT carrying the resourceVersion just read, so two candidates can never
both win: the API server refuses the second with 409.

No double writes: a leader that cannot renew within `renew_deadline_s` (< `lease_s`) stops kopf and
exits before any standby may take over; a SIGKILLed leader writes nothing more, and the standby waits
out the lease. Takeover after a leader dies: at most `lease_s + retry_s` (15 s + 2 s by default).
A leader that stops cleanly releases the Lease (holder emptied) so a standby takes over at once.
"""

from __future__ import annotations

import asyncio
import datetime
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

from deepdetect_operator.kubeapi import LEASES, Conflict, Invalid, KubeAPI

__all__ = ["LeaderElector"]

log = logging.getLogger(__name__)


def _micro_now() -> str:
    # MicroTime: RFC 3339 with microseconds, as the API server stores renewTime/acquireTime.
    return datetime.datetime.now(tz=datetime.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class LeaderElector:
    def __init__(
        self,
        api: KubeAPI,
        *,
        namespace: str,
        name: str,
        identity: str,
        lease_s: int = 15,
        renew_deadline_s: float = 10.0,
        renew_s: float = 2.0,
        retry_s: float = 2.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not renew_s < renew_deadline_s < lease_s:
            raise ValueError("need renew interval < renew deadline < lease duration")
        self.api = api
        self.namespace, self.name, self.identity = namespace, name, identity
        self.lease_s, self.renew_deadline_s = lease_s, renew_deadline_s
        self.renew_s, self.retry_s = renew_s, retry_s
        self.clock = clock
        self._observed: tuple[str, str, str] | None = None  # (holder, renewTime, resourceVersion)
        self._observed_at = 0.0

    # ------------------------------------------------------------ one attempt

    async def try_acquire_or_renew(self) -> bool:
        """One read and at most one write; True when we hold the Lease afterwards."""
        live = await self.api.get(LEASES, self.namespace, self.name)
        now = _micro_now()
        if live is None:
            lease = {
                "apiVersion": "coordination.k8s.io/v1",
                "kind": "Lease",
                "metadata": {"name": self.name, "namespace": self.namespace},
                "spec": self._spec(now, acquire=now, transitions=0),
            }
            try:
                await self.api.create(lease)
            except Conflict:  # another candidate created it first
                return False
            return True
        spec = live.get("spec") or {}
        holder = str(spec.get("holderIdentity") or "")
        record = (holder, str(spec.get("renewTime") or ""), str(live["metadata"].get("resourceVersion")))
        if record != self._observed:
            self._observed, self._observed_at = record, self.clock()
        duration = int(spec.get("leaseDurationSeconds") or self.lease_s)
        if holder and holder != self.identity and self.clock() - self._observed_at < duration:
            return False  # someone else holds a lease we have not seen expire
        ours = holder == self.identity
        transitions = int(spec.get("leaseTransitions") or 0) + (0 if ours else 1)
        acquire = str(spec.get("acquireTime") or now) if ours else now
        updated = {**live, "spec": self._spec(now, acquire=acquire, transitions=transitions)}
        try:
            await self.api.replace(updated)
        except Conflict:  # written meanwhile (a renewal or another candidate): re-read next round
            return False
        return True

    def _spec(self, now: str, *, acquire: str, transitions: int, holder: str | None = None) -> dict[str, Any]:
        return {
            "holderIdentity": self.identity if holder is None else holder,
            "leaseDurationSeconds": self.lease_s,
            "acquireTime": acquire,
            "renewTime": now,
            "leaseTransitions": transitions,
        }

    async def release(self) -> None:
        """Give the Lease up (holder emptied, as client-go's ReleaseOnCancel) so a standby need not wait."""
        try:
            live = await self.api.get(LEASES, self.namespace, self.name)
            spec = (live or {}).get("spec") or {}
            if live is None or spec.get("holderIdentity") != self.identity:
                return
            released = {**spec, "holderIdentity": "", "leaseDurationSeconds": 1, "renewTime": _micro_now()}
            await self.api.replace({**live, "spec": released})
        except (Conflict, Invalid) as exc:
            log.warning("could not release the lease %s/%s: %s", self.namespace, self.name, exc)

    # ------------------------------------------------------------ the loops

    async def acquire(self) -> None:
        """Return once we hold the Lease."""
        waiting_logged = False
        while not await self._attempt():
            if not waiting_logged:
                log.info("standby: lease %s/%s is held by %s", self.namespace, self.name,
                         self._observed[0] if self._observed else "?")  # fmt: skip
                waiting_logged = True
            await asyncio.sleep(self.retry_s)
        log.info("leader: holding lease %s/%s as %s", self.namespace, self.name, self.identity)

    async def keep(self) -> None:
        """Renew until a renewal deadline passes without success, then return (leadership is lost)."""
        last_ok = self.clock()
        while True:
            await asyncio.sleep(self.renew_s)
            if await self._attempt():
                last_ok = self.clock()
            elif self.clock() - last_ok >= self.renew_deadline_s:
                log.error("lost lease %s/%s: not renewed for %.0fs", self.namespace, self.name,
                          self.clock() - last_ok)  # fmt: skip
                return

    async def _attempt(self) -> bool:
        try:
            return await self.try_acquire_or_renew()
        except Exception as exc:  # an API outage is a failed attempt, never a crash of the loop
            log.warning("lease %s/%s: %s", self.namespace, self.name, exc)
            return False

    async def run_while_leader(self, work: Callable[[asyncio.Event], Awaitable[None]]) -> bool:
        """Acquire, then run `work(stop)` while renewing. Returns False when leadership was lost (`stop`
        was set and `work` returned), True when `work` ended by itself (the Lease is then released)."""
        await self.acquire()
        stop = asyncio.Event()
        worker = asyncio.ensure_future(work(stop))
        keeper = asyncio.ensure_future(self.keep())
        try:
            done, _ = await asyncio.wait({worker, keeper}, return_when=asyncio.FIRST_COMPLETED)
            if keeper in done:
                stop.set()
                try:
                    # the lease expires lease_s - renew_deadline_s after our last renewal: stop before
                    await asyncio.wait_for(asyncio.shield(worker), self.lease_s - self.renew_deadline_s)
                except TimeoutError:
                    worker.cancel()
                return False
            await worker  # re-raise its error, if any
            return True
        finally:
            keeper.cancel()
            if worker.done() and not worker.cancelled() and worker.exception() is None:
                await self.release()
