"""Leader election on a Lease against the emulator: the elector's rules, then two real operator processes
with the leader SIGKILLed mid-reconcile (the standby finishes: no duplicate child, no lost status)."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import kmock
import kopf
import pytest
from conftest_integration import NS, cr_manifest, write_kubeconfig
from deepdetect_operator import naming
from deepdetect_operator.kubeapi import KubeAPI
from deepdetect_operator.leader import LeaderElector
from kube_emulator import KubeEmulator, make_emulator

ROOT = Path(__file__).resolve().parents[2]
LEASES = "coordination.k8s.io/v1/leases"
CRS = "deepdetect.io/v1alpha1/deepdetectservices"


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
async def served() -> AsyncIterator[tuple[KubeEmulator, str]]:
    emu = make_emulator(namespaces=(NS,))
    async with emu, kmock.Server(emu) as server:
        yield emu, str(server.url).rstrip("/")


def elector(url: str, identity: str, clock: Clock) -> LeaderElector:
    api = KubeAPI(kopf.ConnectionInfo(server=url, token="t"))
    return LeaderElector(api, namespace="default", name="op", identity=identity, lease_s=15, clock=clock)


async def test_one_holder_and_takeover_only_after_the_lease_is_seen_expired(
    served: tuple[KubeEmulator, str],
) -> None:
    emu, url = served
    clock = Clock()
    a, b = elector(url, "a", clock), elector(url, "b", clock)
    try:
        assert await a.try_acquire_or_renew()
        assert not await b.try_acquire_or_renew()
        clock.now += 10
        assert await a.try_acquire_or_renew()  # renewed: b's view of the record changes
        clock.now += 10
        assert not await b.try_acquire_or_renew()  # b first sees the renewal now: its 15 s start here
        clock.now += 14
        assert not await b.try_acquire_or_renew()
        clock.now += 2
        assert await b.try_acquire_or_renew()  # unchanged for 16 s on b's clock: taken over
        lease = emu.stored(LEASES, "default", "op")
        assert lease is not None
        assert lease["spec"]["holderIdentity"] == "b" and lease["spec"]["leaseTransitions"] == 1
        assert not await a.try_acquire_or_renew()  # the old leader sees b's fresh record and yields
    finally:
        await a.api.close()
        await b.api.close()


async def test_racing_candidates_never_both_win(served: tuple[KubeEmulator, str]) -> None:
    _, url = served
    clock = Clock()
    candidates = [elector(url, f"c{i}", clock) for i in range(6)]
    try:
        won = await asyncio.gather(*(c.try_acquire_or_renew() for c in candidates))
        assert sum(won) == 1
        standbys = [c for c, w in zip(candidates, won, strict=True) if not w]
        assert not any(await asyncio.gather(*(c.try_acquire_or_renew() for c in standbys)))  # they see it
        clock.now += 20  # the winner died; every standby has seen the same record for 20 s
        won = await asyncio.gather(*(c.try_acquire_or_renew() for c in standbys))
        assert sum(won) == 1  # the PUTs carry the resourceVersion read: the API server refuses all but one
    finally:
        for c in candidates:
            await c.api.close()


async def test_release_lets_a_standby_take_over_at_once(served: tuple[KubeEmulator, str]) -> None:
    _, url = served
    clock = Clock()
    a, b = elector(url, "a", clock), elector(url, "b", clock)
    try:
        assert await a.try_acquire_or_renew()
        assert not await b.try_acquire_or_renew()
        await a.release()
        assert await b.try_acquire_or_renew()
    finally:
        await a.api.close()
        await b.api.close()


# ---------------------------------------------------------------- two operator processes


def _operator(kubeconfig: Path, pod: str, log: Path) -> subprocess.Popen[bytes]:
    env = {
        **os.environ,
        "KUBECONFIG": str(kubeconfig),
        "POD_NAME": pod,
        "PYTHONPATH": os.pathsep.join([str(ROOT / "operator"), str(ROOT / "inference_server")]),
    }
    cmd = [
        sys.executable, "-m", "deepdetect_operator", "run", "--leader-elect", "--leader-namespace", "default",
        "--lease-seconds", "3", "--tick-seconds", "0.5", "--resync-seconds", "2", "--metrics-port", "0",
        "--liveness", "", "--log-format", "plain", "--namespace", NS,
    ]  # fmt: skip
    return subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=log.open("wb"))


async def _until(check: Any, within: float, what: str, logs: list[Path]) -> Any:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        await asyncio.sleep(0.1)
    tails = "\n".join(p.read_text()[-1500:] for p in logs)
    raise AssertionError(f"{what} not within {within}s\n{tails}")


def _holder(emu: KubeEmulator) -> str:
    lease = emu.stored(LEASES, "default", "deepdetect-operator")
    return str(((lease or {}).get("spec") or {}).get("holderIdentity") or "")


def _is_cr_watch(req: Any) -> bool:
    return "watch=true" in str(req.url.query_string) and "/deepdetectservices" in str(req.url.path)


async def test_standby_finishes_after_the_leader_is_killed_mid_reconcile(
    served: tuple[KubeEmulator, str], tmp_path: Path
) -> None:
    emu, url = served
    kubeconfig = tmp_path / "kubeconfig"
    write_kubeconfig(kubeconfig, url)
    ckpt = tmp_path / "model.safetensors"
    ckpt.write_bytes(b"weights")
    logs = [tmp_path / "a.log", tmp_path / "b.log"]
    leader = _operator(kubeconfig, "op-a", logs[0])
    standby: subprocess.Popen[bytes] | None = None
    try:
        await _until(lambda: _holder(emu).startswith("op-a_"), 30, "op-a leading", logs)
        standby = _operator(kubeconfig, "op-b", logs[1])
        await asyncio.sleep(2.0)  # op-b is up and polling the Lease
        assert _holder(emu).startswith("op-a_")
        count = 30
        for i in range(count):
            emu_obj = cr_manifest(f"svc-{i:02d}", f"file://{ckpt}")
            await asyncio.to_thread(_post, url, emu_obj)
        # Mid-reconcile: some children are there, not all.
        started = lambda: len(emu.list_objects("apps/v1/deployments", NS)) >= 3  # noqa: E731
        await _until(started, 30, "first children", logs)
        leader.send_signal(signal.SIGKILL)
        await asyncio.to_thread(leader.wait, 10)
        await asyncio.sleep(0.5)  # requests the leader sent before it died are served (and recorded) now
        killed_at = len(emu.recorded)
        done_before = len(emu.list_objects("apps/v1/deployments", NS))
        assert done_before < count, "the leader finished before it was killed: nothing left to take over"
        watches_before = [r for r in emu.recorded[:killed_at] if _is_cr_watch(r)]
        assert len(watches_before) == 1, "only the leader watches the CRs while both run"
        # Takeover: lease 3 s + retry 2 s after the last renewal, plus the operator's start.
        t_kill = time.monotonic()
        await _until(lambda: _holder(emu).startswith("op-b_"), 15, "op-b taking over", logs)
        takeover_s = time.monotonic() - t_kill
        assert takeover_s < 3 + 2 + 5  # lease + retry, and slack for a loaded 2-core machine

        def finished() -> bool:
            crs = emu.list_objects(CRS, NS)
            return len(crs) == count and all(
                (cr.get("status") or {}).get("observedGeneration") == cr["metadata"]["generation"]
                and (cr.get("status") or {}).get("conditions")
                and emu.stored("apps/v1/deployments", NS, naming.deployment_name(cr["metadata"]["name"]))
                for cr in crs
            )

        await _until(finished, 60, "the standby finishing every CR", logs)
        # Between the kill and the takeover nobody but Lease polling touched the API server.
        between = [r for r in emu.recorded[killed_at:] if "/leases" not in str(r.url.path)]
        first_after = between[0] if between else None
        lease_puts = [i for i, r in enumerate(emu.recorded[killed_at:], killed_at)
                      if r.method.value == "PUT" and "/leases" in str(r.url.path)]  # fmt: skip
        assert first_after is None or emu.recorded.index(first_after) > lease_puts[0]
        # No duplicate child: one Deployment, Service and API-key Secret per CR, each created once.
        assert len(emu.list_objects("apps/v1/deployments", NS)) == count
        assert len(emu.list_objects("v1/services", NS)) == count
        created = [a for a in emu.answers if a.status == 201 and a.request.method.value == "POST"
                   and "/secrets" in str(a.request.url.path)]  # fmt: skip
        assert len(created) == len(emu.list_objects("v1/secrets", NS)) == count  # an API key is made once
        lease = emu.stored(LEASES, "default", "deepdetect-operator")
        assert lease is not None and lease["spec"]["leaseTransitions"] == 1
    finally:
        for proc in (leader, standby):
            if proc is not None and proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(15)
                except subprocess.TimeoutExpired:
                    proc.kill()


def _post(url: str, body: dict[str, Any]) -> None:
    import httpx

    ns = body["metadata"]["namespace"]
    resp = httpx.post(f"{url}/apis/deepdetect.io/v1alpha1/namespaces/{ns}/deepdetectservices", json=body)
    resp.raise_for_status()
