"""Harness for the operator integration tests: the real kopf operator against the kmock-based API server.

Not a `conftest.py` (another engineer owns those): test modules import `cluster` and the helpers. The
operator runs as a task in the test's event loop (TESTING.md, second way) and logs in through a kubeconfig
that points at the emulator, exactly as `deepdetect-operator run` would outside a cluster.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
import threading
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import kmock
import pytest
import yaml

sys.path.append(str(Path(__file__).resolve().parents[1]))  # tests/kube_emulator.py (last: no shadowing)
from deepdetect_operator import naming
from deepdetect_operator.api import API_VERSION, KIND
from deepdetect_operator.reconcile import OperatorConfig
from deepdetect_operator.runtime import build_memo, run_operator
from kube_emulator import KubeEmulator, make_emulator

NS = "ns1"
CRS = "deepdetect.io/v1alpha1/deepdetectservices"
DEPLOYMENTS = "apps/v1/deployments"
CR_URL = f"/apis/deepdetect.io/v1alpha1/namespaces/{NS}/deepdetectservices"
MERGE = {"Content-Type": "application/merge-patch+json"}
OPERATOR_UA = "deepdetect-operator"

FAST = OperatorConfig(
    tick_seconds=0.25,
    resync_seconds=1.0,
    liveness="",
    metrics_port=0,
    watch_server_timeout_s=30,
    watch_client_timeout_s=40,
    resolve_timeout_s=3.0,
    retry_delay_s=0.5,
)


def write_kubeconfig(path: Path, server: str) -> None:
    path.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [{"name": "emu", "cluster": {"server": server}}],
                "users": [{"name": "emu", "user": {"token": "test-token"}}],
                "contexts": [{"name": "emu", "context": {"cluster": "emu", "user": "emu"}}],
                "current-context": "emu",
            }
        )
    )


def cr_manifest(name: str, uri: str, **spec: Any) -> dict[str, Any]:
    model = {
        "architecture": "test_efficientnet",
        "inputSize": 160,
        "precision": "fp32",
        "checkpoint": {"uri": uri, "pollInterval": "0"},
    }
    model.update(spec.pop("model", {}))
    body = {
        "model": model,
        "resources": {"gpus": 0, "cpu": "1", "memory": "1Gi"},
        "autoscaling": {"enabled": True, "minReplicas": 1, "maxReplicas": 3},
        **spec,
    }
    return {
        "apiVersion": API_VERSION,
        "kind": KIND,
        "metadata": {"name": name, "namespace": NS},
        "spec": body,
    }


@dataclass
class Cluster:
    emu: KubeEmulator
    http: aiohttp.ClientSession
    memo: Any
    config: OperatorConfig

    async def create(self, manifest: dict[str, Any]) -> dict[str, Any]:
        resp = await self.http.post(CR_URL, json=manifest)
        assert resp.status == 201, await resp.text()
        return dict(await resp.json())

    async def patch_spec(self, name: str, spec: dict[str, Any]) -> None:
        resp = await self.http.patch(f"{CR_URL}/{name}", json={"spec": spec}, headers=MERGE)
        assert resp.status == 200, await resp.text()

    async def delete(self, name: str) -> None:
        resp = await self.http.delete(f"{CR_URL}/{name}")
        assert resp.status == 200, await resp.text()

    def cr(self, name: str) -> dict[str, Any] | None:
        return self.emu.stored(CRS, NS, name)

    def status(self, name: str) -> dict[str, Any]:
        return (self.cr(name) or {}).get("status") or {}

    def condition(self, name: str, type_: str) -> dict[str, Any]:
        return next((c for c in self.status(name).get("conditions") or [] if c["type"] == type_), {})

    def deployment(self, name: str) -> dict[str, Any] | None:
        return self.emu.stored(DEPLOYMENTS, NS, naming.deployment_name(name))

    def events(self, reason: str | None = None) -> list[dict[str, Any]]:
        found = self.emu.list_objects("v1/events", NS)
        return [e for e in found if reason is None or e.get("reason") == reason]

    async def make_available(self, name: str, *, replicas: int = 1) -> None:
        """What the Deployment controller reports when every replica of the current template is up."""
        dep = self.deployment(name)
        assert dep is not None
        await self.emu.set_status(
            DEPLOYMENTS,
            NS,
            dep["metadata"]["name"],
            {
                "observedGeneration": dep["metadata"]["generation"],
                "replicas": replicas,
                "updatedReplicas": replicas,
                "readyReplicas": replicas,
                "availableReplicas": replicas,
                "unavailableReplicas": None,
                "conditions": [
                    {"type": "Available", "status": "True", "reason": "MinimumReplicasAvailable"},
                    {"type": "Progressing", "status": "True", "reason": "NewReplicaSetAvailable"},
                ],
            },
        )

    async def miss_deadline(self, name: str, *, ready: int = 0) -> None:
        dep = self.deployment(name)
        assert dep is not None
        await self.emu.set_status(
            DEPLOYMENTS,
            NS,
            dep["metadata"]["name"],
            {
                "observedGeneration": dep["metadata"]["generation"],
                "replicas": 1 + ready,
                "updatedReplicas": 1,
                "readyReplicas": ready,
                "availableReplicas": ready,
                "unavailableReplicas": 1,
                "conditions": [
                    {"type": "Available", "status": "True" if ready else "False", "reason": "x"},
                    {"type": "Progressing", "status": "False", "reason": "ProgressDeadlineExceeded"},
                ],
            },
        )

    async def quiet(self, seconds: float | None = None) -> int:
        """Wait until no request has arrived for a while; return the index of the next request."""
        span = seconds if seconds is not None else self.config.resync_seconds * 1.5
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            before = len(self.emu.writes())
            await asyncio.sleep(span)
            if len(self.emu.writes()) == before:
                return len(self.emu.recorded)
        raise AssertionError("the operator never went quiet")


async def eventually(check: Callable[[], Any], within: float = 15.0, message: str = "") -> Any:
    """Poll `check` until it returns something truthy (or raise with its last value)."""
    deadline = time.monotonic() + within
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = check()
        except (KeyError, TypeError, AssertionError, IndexError) as exc:
            last = exc
        else:
            if last:
                return last
        await asyncio.sleep(0.05)
    raise AssertionError(f"timed out waiting for {message or check}: last={last!r}")


def start_operator(config: OperatorConfig) -> tuple[Any, threading.Thread, threading.Event]:
    """The operator in its own thread and event loop, as in production (kopf treats every task of its
    loop as its own: sharing the test's loop would make it wait for the test's tasks at exit)."""
    memo = build_memo(config)
    stop, ready = threading.Event(), threading.Event()
    thread = threading.Thread(
        target=lambda: asyncio.run(run_operator(config, memo=memo, stop_flag=stop, ready_flag=ready)),
        name="operator",
        daemon=True,
    )
    thread.start()
    if not ready.wait(15):
        raise RuntimeError("the operator did not start")
    return memo, thread, stop


@pytest.fixture()
async def cluster(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Cluster]:
    emu = make_emulator()
    async with emu, kmock.Server(emu) as server:
        write_kubeconfig(tmp_path / "kubeconfig", str(server.url).rstrip("/"))
        monkeypatch.setenv("KUBECONFIG", str(tmp_path / "kubeconfig"))
        memo, thread, stop = await asyncio.to_thread(start_operator, FAST)
        try:
            async with aiohttp.ClientSession(base_url=str(server.url)) as http:
                yield Cluster(emu=emu, http=http, memo=memo, config=FAST)
        finally:
            # Delete the CRs first: kopf stops their timers then, instead of waiting ~5 s for them at exit.
            for cr in emu.list_objects(CRS):
                await emu.remove(CRS, cr["metadata"]["namespace"], cr["metadata"]["name"])
            with contextlib.suppress(AssertionError):
                await eventually(lambda: not emu.list_objects(CRS), within=5)
            stop.set()
            await asyncio.to_thread(thread.join, 15)
