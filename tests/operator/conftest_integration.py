"""Harness for the operator integration tests: the real kopf operator, in-process, against a cluster.

Not a `conftest.py` (another engineer owns those): test modules import `cluster` and the helpers.

Two backends behind one `Cluster` (DEEPDETECT_TEST_CLUSTER):
- `emulator` (default): the kmock-based test API server (tests/kube_emulator) in the test's event loop,
  our real CRD installed through its CRD endpoint; after each test, nothing the operator sent may have
  been refused (4xx other than an expected 404/409) or stripped of unknown fields (a `Warning`).
- `existing`: the cluster in KUBECONFIG, over plain HTTP with the kubeconfig's credentials: the CRD
  applied server-side once per run, a fresh namespace per test (deleted after it), the operator watching
  only that namespace.

Both log the operator in through the same kubeconfig, exactly as `deepdetect-operator run` outside a
cluster. Tests that need what only the emulator allows are marked `emulator_only(reason)`; tests that
need kube-controller-manager (a Deployment controller that writes status) are marked
`needs_controllers(reason)`; each is skipped with its reason where the backend cannot run it.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import aiohttp
import httpx
import kmock
import kopf
import pytest
import yaml

sys.path.append(str(Path(__file__).resolve().parents[1]))  # tests/kube_emulator (last: no shadowing)
from deepdetect_operator import naming
from deepdetect_operator.api import API_VERSION, KIND
from deepdetect_operator.reconcile import OperatorConfig
from deepdetect_operator.runtime import build_memo, run_operator
from kube_emulator import KubeEmulator, make_emulator, project_crds

NS = "ns1"  # the emulator backend's namespace (the existing backend makes a fresh one per test)
CRS = "deepdetect.io/v1alpha1/deepdetectservices"
DEPLOYMENTS = "apps/v1/deployments"
MERGE = {"Content-Type": "application/merge-patch+json"}
APPLY = {"Content-Type": "application/apply-patch+yaml"}
OPERATOR_UA = "deepdetect-operator"
TEST_MANAGER = "deepdetect-tests"
BACKEND = os.environ.get("DEEPDETECT_TEST_CLUSTER", "emulator")

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


def emulator_only(reason: str) -> pytest.MarkDecorator:
    """A test that needs what only the test API server allows (hand-written status, faults, recordings)."""
    return pytest.mark.emulator_only(reason=reason)


def needs_controllers(reason: str) -> pytest.MarkDecorator:
    """A test that needs kube-controller-manager (e.g. a Deployment controller that reports status)."""
    return pytest.mark.needs_controllers(reason=reason)


def write_kubeconfig(path: Path, server: str, token: str = "test-token") -> None:
    path.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [{"name": "emu", "cluster": {"server": server}}],
                "users": [{"name": "emu", "user": {"token": token}}],
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


def resource_path(resource: str, namespace: str | None, name: str | None = None) -> str:
    """`apps/v1/deployments` (kmock's notation) -> `/apis/apps/v1/namespaces/NS/deployments[/NAME]`."""
    res = kmock.resource(resource)
    base = f"/apis/{res.group}/{res.version}" if res.group else f"/api/{res.version}"
    path = f"{base}/namespaces/{namespace}/{res.plural}" if namespace else f"{base}/{res.plural}"
    return f"{path}/{name}" if name else path


# ---------------------------------------------------------------- backends


class Backend(Protocol):
    """What a test may ask of the cluster under it, beyond plain HTTP."""

    name: str
    has_controllers: bool
    server: str

    def get(self, resource: str, namespace: str | None, name: str) -> dict[str, Any] | None: ...
    def list(self, resource: str, namespace: str | None) -> list[dict[str, Any]]: ...
    def write_count(self, memo: Any) -> int: ...


class EmulatorBackend:
    """The test API server: reads straight from its store."""

    name = "emulator"
    has_controllers = False

    def __init__(self, emu: KubeEmulator, server: str) -> None:
        self.emu = emu
        self.server = server

    def get(self, resource: str, namespace: str | None, name: str) -> dict[str, Any] | None:
        return self.emu.stored(resource, namespace, name)

    def list(self, resource: str, namespace: str | None) -> list[dict[str, Any]]:
        return self.emu.list_objects(resource, namespace)

    def write_count(self, memo: Any) -> int:
        return len(self.emu.writes())

    def check_operator_answers(self) -> None:
        """Nothing the operator sent was refused or stripped: a real server would have done the same."""
        refused = [
            (a.request.method.value, a.request.url.path, a.status, a.message)
            for a in self.emu.refused(OPERATOR_UA, allowed=(404, 409))
        ]
        assert not refused, f"the API server refused the operator: {refused}"
        dropped = self.emu.warnings(OPERATOR_UA) + self.emu.warnings("kopf")
        assert not dropped, f"the API server dropped fields the operator sent: {dropped}"


class ExistingBackend:
    """The cluster in KUBECONFIG, read with synchronous HTTP (the operator runs in its own thread)."""

    name = "existing"

    def __init__(self, info: kopf.ConnectionInfo, client: httpx.Client, has_controllers: bool) -> None:
        self.info = info
        self.client = client
        self.server = info.server.rstrip("/")
        self.has_controllers = has_controllers

    def get(self, resource: str, namespace: str | None, name: str) -> dict[str, Any] | None:
        response = self.client.get(resource_path(resource, namespace, name))
        if response.status_code == 404:
            return None
        response.raise_for_status()
        return dict(response.json())

    def list(self, resource: str, namespace: str | None) -> list[dict[str, Any]]:
        response = self.client.get(resource_path(resource, namespace))
        response.raise_for_status()
        return list(response.json().get("items") or [])

    def write_count(self, memo: Any) -> int:
        calls = memo.reconciler.api.calls
        return sum(calls[verb] for verb in ("create", "apply", "delete", "status"))


class ClusterUnusable(Exception):
    pass


def connect_existing(kubeconfig: str | None = None, timeout: float = 10.0) -> ExistingBackend:
    """The backend for the cluster in KUBECONFIG, or ClusterUnusable saying why not (fast)."""
    path = kubeconfig or os.environ.get("KUBECONFIG") or str(Path("~/.kube/config").expanduser())
    where = f"KUBECONFIG={path}"
    if not all(Path(p).expanduser().exists() for p in path.split(os.pathsep) if p):
        raise ClusterUnusable(f"{where}: no such file")
    previous = os.environ.get("KUBECONFIG")
    os.environ["KUBECONFIG"] = path
    try:
        info = kopf.login_with_kubeconfig(settings=kopf.OperatorSettings())
    except Exception as exc:
        raise ClusterUnusable(f"{where} cannot be read: {type(exc).__name__}: {exc}") from exc
    finally:
        if previous is None:
            os.environ.pop("KUBECONFIG", None)
        else:
            os.environ["KUBECONFIG"] = previous
    if info is None or not info.server:
        raise ClusterUnusable(f"{where} names no server in its current context")
    client = httpx.Client(
        base_url=info.server.rstrip("/"),
        headers=info.as_http_headers(),
        verify=info.as_ssl_context(),
        timeout=timeout,
    )
    try:
        version = client.get("/version")
    except httpx.HTTPError as exc:
        client.close()
        raise ClusterUnusable(f"{where}: the API server {info.server} does not answer: {exc}") from exc
    if version.status_code in (401, 403):
        client.close()
        raise ClusterUnusable(f"{where}: the API server refuses these credentials ({version.status_code})")
    if version.status_code != 200:
        client.close()
        raise ClusterUnusable(f"{where}: GET {info.server}/version answered {version.status_code}")
    # kube-controller-manager holds a leader-election lease in kube-system on every real control plane.
    lease = client.get("/apis/coordination.k8s.io/v1/namespaces/kube-system/leases/kube-controller-manager")
    return ExistingBackend(info, client, has_controllers=lease.status_code == 200)


def install_crds(backend: ExistingBackend) -> None:
    """`kubectl apply --server-side -f crds/`, then wait until the API server serves the kind."""
    for crd in project_crds():
        name = crd["metadata"]["name"]
        path = f"/apis/apiextensions.k8s.io/v1/customresourcedefinitions/{name}"
        response = backend.client.patch(
            path,
            params={"fieldManager": TEST_MANAGER, "force": "true"},
            content=yaml.safe_dump(crd),
            headers=APPLY,
        )
        if response.status_code >= 300:
            raise ClusterUnusable(
                f"the API server refused the CRD {name}: {response.status_code} {response.text}"
            )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            conditions = (backend.client.get(path).json().get("status") or {}).get("conditions") or []
            if any(c.get("type") == "Established" and c.get("status") == "True" for c in conditions):
                break
            time.sleep(0.2)
        else:
            raise ClusterUnusable(f"the CRD {name} was never Established")


_EXISTING: list[ExistingBackend | str] = []


def existing_backend() -> ExistingBackend:
    """One connection (and one CRD install) per test run; a cluster that cannot be used stops the run."""
    if not _EXISTING:
        try:
            backend = connect_existing()
            install_crds(backend)
            _EXISTING.append(backend)
        except ClusterUnusable as exc:
            _EXISTING.append(str(exc))
    found = _EXISTING[0]
    if isinstance(found, str):
        pytest.exit(f"DEEPDETECT_TEST_CLUSTER=existing: {found}", returncode=4)
    return found


# ---------------------------------------------------------------- the cluster a test sees


@dataclass
class Cluster:
    backend: Backend
    http: aiohttp.ClientSession
    memo: Any
    config: OperatorConfig
    ns: str = NS

    @property
    def emu(self) -> KubeEmulator:
        """The test API server itself (emulator-only tests: hand-written status, faults, recordings)."""
        if not isinstance(self.backend, EmulatorBackend):
            raise RuntimeError("this test needs the emulator: mark it emulator_only(reason)")
        return self.backend.emu

    @property
    def cr_url(self) -> str:
        return resource_path(CRS, self.ns)

    # ------------------------------------------------------------ writes, as kubectl would send them

    async def create(self, manifest: dict[str, Any]) -> dict[str, Any]:
        body = {**manifest, "metadata": {**manifest["metadata"], "namespace": self.ns}}
        resp = await self.http.post(self.cr_url, json=body)
        assert resp.status == 201, await resp.text()
        return dict(await resp.json())

    async def patch_spec(self, name: str, spec: dict[str, Any]) -> None:
        resp = await self.http.patch(f"{self.cr_url}/{name}", json={"spec": spec}, headers=MERGE)
        assert resp.status == 200, await resp.text()

    async def delete(self, name: str) -> None:
        resp = await self.http.delete(f"{self.cr_url}/{name}")
        assert resp.status == 200, await resp.text()

    async def edit(self, resource: str, name: str, patch: dict[str, Any]) -> None:
        """`kubectl patch --type merge` of any object in the test namespace."""
        resp = await self.http.patch(resource_path(resource, self.ns, name), json=patch, headers=MERGE)
        assert resp.status == 200, await resp.text()

    async def remove(self, resource: str, name: str) -> None:
        """`kubectl delete` (background propagation)."""
        resp = await self.http.delete(resource_path(resource, self.ns, name))
        assert resp.status == 200, await resp.text()

    async def install_crd(self, crd: dict[str, Any]) -> bool:
        """Serve a kind: on the emulator, create its CRD; on a real cluster only check that it is served
        (its real CRD is not ours to replace). True when the kind is served."""
        spec = crd["spec"]
        discovery = await self.http.get(f"/apis/{spec['group']}/{spec['versions'][0]['name']}")
        if discovery.status == 200 and any(
            r.get("name") == spec["names"]["plural"] for r in (await discovery.json()).get("resources") or []
        ):
            return True
        if self.backend.name != "emulator":
            return False
        resp = await self.http.post("/apis/apiextensions.k8s.io/v1/customresourcedefinitions", json=crd)
        assert resp.status == 201, await resp.text()
        return True

    # ------------------------------------------------------------ reads (synchronous, for eventually())

    def get(self, resource: str, name: str) -> dict[str, Any] | None:
        return self.backend.get(resource, self.ns, name)

    def cr(self, name: str) -> dict[str, Any] | None:
        return self.get(CRS, name)

    def status(self, name: str) -> dict[str, Any]:
        return (self.cr(name) or {}).get("status") or {}

    def condition(self, name: str, type_: str) -> dict[str, Any]:
        return next((c for c in self.status(name).get("conditions") or [] if c["type"] == type_), {})

    def deployment(self, name: str) -> dict[str, Any] | None:
        return self.get(DEPLOYMENTS, naming.deployment_name(name))

    def events(self, reason: str | None = None) -> list[dict[str, Any]]:
        found = self.backend.list("v1/events", self.ns)
        return [e for e in found if reason is None or e.get("reason") == reason]

    # ------------------------------------------------------------ what a Deployment controller reports

    async def make_available(self, name: str, *, replicas: int = 1) -> None:
        """What the Deployment controller reports when every replica of the current template is up."""
        dep = self.deployment(name)
        assert dep is not None
        await self.emu.set_status(
            DEPLOYMENTS,
            self.ns,
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
            self.ns,
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
        """Wait until nothing has been written for a while; return the index of the next request (the
        emulator's recording; on a real cluster, a count of the operator's own writes)."""
        span = seconds if seconds is not None else self.config.resync_seconds * 1.5
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            before = self.backend.write_count(self.memo)
            await asyncio.sleep(span)
            if self.backend.write_count(self.memo) == before:
                return len(self.emu.recorded) if self.backend.name == "emulator" else before
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


def _skip_unsupported(request: pytest.FixtureRequest, backend: str, controllers: bool) -> None:
    only = request.node.get_closest_marker("emulator_only")
    if only is not None and backend != "emulator":
        pytest.skip(f"emulator only: {only.kwargs.get('reason', '')}")
    needs = request.node.get_closest_marker("needs_controllers")
    if needs is not None and not controllers:
        where = (
            "the emulator runs no controllers"
            if backend == "emulator"
            else ("this cluster runs no kube-controller-manager (no leader lease in kube-system)")
        )
        pytest.skip(f"needs kube-controller-manager ({where}): {needs.kwargs.get('reason', '')}")


async def _delete_crs(cluster: Cluster, within: float) -> list[str]:
    """Delete the test's CRs while the operator runs (its finalizer goes, kopf stops their timers).
    Returns the names still there after `within` seconds."""
    for cr in cluster.backend.list(CRS, cluster.ns):
        with contextlib.suppress(AssertionError):
            await cluster.delete(cr["metadata"]["name"])
    with contextlib.suppress(AssertionError):
        await eventually(lambda: not cluster.backend.list(CRS, cluster.ns), within=within)
    return [cr["metadata"]["name"] for cr in cluster.backend.list(CRS, cluster.ns)]


async def _release(cluster: Cluster, left: list[str], within: float) -> None:
    """After the operator stopped: drop the finalizers it failed to remove (so the namespace can go),
    then fail the test, since `kubectl delete` would have hung the same way for a user."""
    if not left:
        return
    for name in left:
        with contextlib.suppress(AssertionError):
            await cluster.edit(CRS, name, {"metadata": {"finalizers": None}})
    raise AssertionError(f"the operator did not release {left} within {within}s of their deletion")


@contextlib.asynccontextmanager
async def _emulator_cluster(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Cluster]:
    emu = make_emulator(namespaces=(NS,))
    async with emu, kmock.Server(emu) as server:
        url = str(server.url).rstrip("/")
        write_kubeconfig(tmp_path / "kubeconfig", url)
        monkeypatch.setenv("KUBECONFIG", str(tmp_path / "kubeconfig"))
        memo, thread, stop = await asyncio.to_thread(start_operator, FAST)
        backend = EmulatorBackend(emu, url)
        try:
            async with aiohttp.ClientSession(base_url=url) as http:
                cluster = Cluster(backend=backend, http=http, memo=memo, config=FAST)
                yield cluster
                left = await _delete_crs(cluster, within=10)
                stop.set()
                await asyncio.to_thread(thread.join, 15)
                await _release(cluster, left, within=10)
        finally:
            stop.set()
            await asyncio.to_thread(thread.join, 15)
        backend.check_operator_answers()


@contextlib.asynccontextmanager
async def existing_cluster(
    backend: ExistingBackend, *, kubeconfig: str | None = None
) -> AsyncIterator[Cluster]:
    """A fresh namespace on the cluster, the operator watching only it; the namespace goes afterwards."""
    ns = f"dd-test-{uuid.uuid4().hex[:8]}"
    created = backend.client.post(
        "/api/v1/namespaces", json={"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}}
    )
    assert created.status_code == 201, created.text
    config = OperatorConfig(**{**FAST.__dict__, "namespaces": (ns,)})
    previous = os.environ.get("KUBECONFIG")
    if kubeconfig:
        os.environ["KUBECONFIG"] = kubeconfig
    try:
        memo, thread, stop = await asyncio.to_thread(start_operator, config)
        ssl = backend.info.as_ssl_context()
        try:
            async with aiohttp.ClientSession(
                base_url=backend.server,
                headers=backend.info.as_http_headers(),
                connector=aiohttp.TCPConnector(ssl=ssl),
            ) as http:
                cluster = Cluster(backend=backend, http=http, memo=memo, config=config, ns=ns)
                yield cluster
                left = await _delete_crs(cluster, within=30)
                stop.set()
                await asyncio.to_thread(thread.join, 15)
                await _release(cluster, left, within=30)
        finally:
            stop.set()
            await asyncio.to_thread(thread.join, 15)
    finally:
        if kubeconfig:
            if previous is None:
                os.environ.pop("KUBECONFIG", None)
            else:
                os.environ["KUBECONFIG"] = previous
        backend.client.delete(f"/api/v1/namespaces/{ns}")


@pytest.fixture()
def cluster_backend() -> ExistingBackend | None:
    """The cluster in KUBECONFIG under DEEPDETECT_TEST_CLUSTER=existing (None: the emulator). Checked
    before anything else is set up, so an unusable cluster stops the run with one clear line."""
    if BACKEND == "emulator":
        return None
    if BACKEND != "existing":
        pytest.exit(
            f"DEEPDETECT_TEST_CLUSTER={BACKEND!r}: expected 'emulator' (default) or 'existing'", returncode=4
        )
    return existing_backend()


@pytest.fixture()
async def cluster(
    cluster_backend: ExistingBackend | None,
    request: pytest.FixtureRequest,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> AsyncIterator[Cluster]:
    if cluster_backend is None:
        _skip_unsupported(request, "emulator", controllers=False)
        async with _emulator_cluster(tmp_path, monkeypatch) as found:
            yield found
        return
    _skip_unsupported(request, "existing", controllers=cluster_backend.has_controllers)
    async with existing_cluster(cluster_backend) as found:
        yield found
