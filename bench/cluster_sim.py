"""The parts of a cluster the emulator leaves out, for bench/operator.py's `--cluster` mode.

- `DeploymentController` plays kube-controller-manager's Deployment and ReplicaSet controllers plus a
  kubelet, over HTTP like they do (so the operator sees the same watch events): for each Deployment
  template a ReplicaSet and its Pods, old Pods deleted on a new template, then, after `ready_after_s`,
  the Pods' init container done and main container Ready, and the ReplicaSet's and Deployment's status.
- `CheckpointServer`: a real HTTPS server (self-signed certificate made with `cryptography`) that answers
  HEAD with an ETag and 404 for `.sha256`, counting what it is asked.
"""

from __future__ import annotations

import asyncio
import copy
import datetime
import hashlib
import ipaddress
import json
import ssl
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import aiohttp
import kmock

DEPLOYMENTS = "apps/v1/deployments"
AGENT = "kube-controller-manager/v1.36.2 (bench)"


def _now() -> str:
    return datetime.datetime.now(tz=datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _template_hash(template: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(template, sort_keys=True).encode()).hexdigest()[:10]


def peek(emu: Any, resource: str, namespace: str | None = None) -> list[dict[str, Any]]:
    """The stored objects without the deep copy `list_objects` makes: the bench polls 1,000 of them every
    half second and only reads (the copy cost more CPU than the operator under test)."""
    res = kmock.resource(resource)
    return [
        obj.raw
        for (r, ns, _), obj in emu._objects._objects.items()
        if r == res and not obj.deleted and (namespace is None or ns == namespace)
    ]


def _owner(obj: dict[str, Any], api_version: str, kind: str) -> dict[str, Any]:
    meta = obj["metadata"]
    return {"apiVersion": api_version, "kind": kind, "name": meta["name"], "uid": meta["uid"],
            "controller": True, "blockOwnerDeletion": True}  # fmt: skip


class DeploymentController:
    def __init__(self, emu: Any, base_url: str, *, ready_after_s: float = 1.0, period_s: float = 0.5) -> None:
        self.emu = emu
        self.base_url = base_url
        self.ready_after_s = ready_after_s
        self.period_s = period_s
        self.requests = 0
        self.errors: list[str] = []  # a failed controller call would silently stall CRs: the bench reports it
        self._seen: dict[tuple[str, str], int] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._main: asyncio.Task[None] | None = None
        self._http: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> DeploymentController:
        self._http = aiohttp.ClientSession(base_url=self.base_url, headers={"User-Agent": AGENT})
        self._main = asyncio.create_task(self._loop())
        return self

    async def __aexit__(self, *_: object) -> None:
        for task in [self._main, *self._tasks]:
            if task is not None:
                task.cancel()
        await asyncio.gather(*(t for t in [self._main, *self._tasks] if t), return_exceptions=True)
        if self._http is not None:
            await self._http.close()

    async def _call(self, method: str, path: str, body: Any = None, content_type: str = "") -> Any:
        assert self._http is not None
        self.requests += 1
        headers = {"Content-Type": content_type} if content_type else {}
        data = json.dumps(body) if body is not None else None
        async with self._http.request(method, path, data=data, headers=headers) as resp:
            if resp.status >= 400 and resp.status != 404 and resp.status != 409:
                raise RuntimeError(f"{method} {path}: {resp.status} {await resp.text()}")
            return await resp.json() if resp.status < 300 else None

    async def _loop(self) -> None:
        sem = asyncio.Semaphore(16)
        while True:
            for dep in peek(self.emu, DEPLOYMENTS):
                meta = dep["metadata"]
                key = (meta["namespace"], meta["name"])
                generation = int(meta.get("generation") or 1)  # a template change bumps it
                if self._seen.get(key) != generation:
                    self._seen[key] = generation
                    dep = copy.deepcopy(dep)
                    want = (generation, _template_hash(dep["spec"]["template"]))
                    task = asyncio.create_task(self._sync(dep, want, sem))
                    self._tasks.add(task)
                    task.add_done_callback(self._tasks.discard)
            await asyncio.sleep(self.period_s)

    async def _sync(self, dep: dict[str, Any], want: tuple[int, str], sem: asyncio.Semaphore) -> None:
        try:
            await self._sync_one(dep, want, sem)
        except (RuntimeError, aiohttp.ClientError, KeyError) as exc:
            self.errors.append(f"{dep['metadata']['name']}: {exc}"[:300])

    async def _sync_one(self, dep: dict[str, Any], want: tuple[int, str], sem: asyncio.Semaphore) -> None:
        meta, spec = dep["metadata"], dep["spec"]
        ns, name = meta["namespace"], meta["name"]
        generation, thash = want
        replicas = int(spec.get("replicas", 1) or 0)
        rs_name = f"{name}-{thash}"
        template = spec["template"]
        labels = {**(template["metadata"].get("labels") or {}), "pod-template-hash": thash}
        async with sem:
            rs = await self._call("POST", f"/apis/apps/v1/namespaces/{ns}/replicasets", {
                "apiVersion": "apps/v1", "kind": "ReplicaSet",
                "metadata": {"name": rs_name, "namespace": ns, "labels": labels,
                             "ownerReferences": [_owner(dep, "apps/v1", "Deployment")]},
                "spec": {"replicas": replicas, "selector": {"matchLabels": labels},
                         "template": {**template, "metadata": {**template["metadata"], "labels": labels}}},
            }, "application/json")  # fmt: skip
            if rs is None:  # 409: this template's ReplicaSet exists already
                rs = await self._call("GET", f"/apis/apps/v1/namespaces/{ns}/replicasets/{rs_name}")
            for pod in list(peek(self.emu, "v1/pods", ns)):
                pm = pod["metadata"]
                if pm["name"].startswith(f"{name}-") and not pm["name"].startswith(rs_name):
                    await self._call("DELETE", f"/api/v1/namespaces/{ns}/pods/{pm['name']}")
            pods = [f"{rs_name}-{i}" for i in range(replicas)]
            for pod_name in pods:
                await self._call("POST", f"/api/v1/namespaces/{ns}/pods", {
                    "apiVersion": "v1", "kind": "Pod",
                    "metadata": {"name": pod_name, "namespace": ns, "labels": labels,
                                 "annotations": template["metadata"].get("annotations") or {},
                                 "ownerReferences": [_owner(rs, "apps/v1", "ReplicaSet")]},
                    "spec": template["spec"],
                }, "application/json")  # fmt: skip
            await self._deployment_status(ns, name, generation, replicas, ready=0)
        await asyncio.sleep(self.ready_after_s)
        async with sem:
            for pod_name in pods:
                await self._call("PATCH", f"/api/v1/namespaces/{ns}/pods/{pod_name}/status",
                                 {"status": self._running(template)}, "application/merge-patch+json")
            await self._call("PATCH", f"/apis/apps/v1/namespaces/{ns}/replicasets/{rs_name}/status",
                             {"status": {"replicas": replicas, "readyReplicas": replicas,
                                         "availableReplicas": replicas, "observedGeneration": 1}},
                             "application/merge-patch+json")  # fmt: skip
            await self._deployment_status(ns, name, generation, replicas, ready=replicas)

    def _running(self, template: dict[str, Any]) -> dict[str, Any]:
        now = _now()
        spec = template["spec"]
        return {
            "phase": "Running",
            "startTime": now,
            "conditions": [{"type": t, "status": "True", "lastTransitionTime": now}
                           for t in ("PodScheduled", "Initialized", "ContainersReady", "Ready")],
            "initContainerStatuses": [
                {"name": c["name"], "image": c.get("image", ""), "imageID": "", "ready": True,
                 "restartCount": 0, "state": {"terminated": {"exitCode": 0, "reason": "Completed"}}}
                for c in spec.get("initContainers") or []
            ],
            "containerStatuses": [
                {"name": c["name"], "image": c.get("image", ""), "imageID": "", "ready": True,
                 "started": True, "restartCount": 0, "state": {"running": {"startedAt": now}}}
                for c in spec.get("containers") or []
            ],
        }  # fmt: skip

    async def _deployment_status(
        self, ns: str, name: str, generation: int, replicas: int, ready: int
    ) -> None:
        now = _now()
        available = "True" if ready >= replicas else "False"
        status = {
            "observedGeneration": generation, "replicas": replicas, "updatedReplicas": replicas,
            "readyReplicas": ready, "availableReplicas": ready, "unavailableReplicas": replicas - ready,
            "conditions": [
                {"type": "Available", "status": available, "reason": "MinimumReplicasAvailable",
                 "lastUpdateTime": now, "lastTransitionTime": now},
                {"type": "Progressing", "status": "True",
                 "reason": "NewReplicaSetAvailable" if ready >= replicas else "ReplicaSetUpdated",
                 "lastUpdateTime": now, "lastTransitionTime": now},
            ],
        }  # fmt: skip
        await self._call("PATCH", f"/apis/apps/v1/namespaces/{ns}/deployments/{name}/status",
                         {"status": status}, "application/merge-patch+json")  # fmt: skip


# ---------------------------------------------------------------- the checkpoint store


def self_signed(workdir: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1/localhost and its key, written as PEM files."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "bench checkpoint store")])
    now = datetime.datetime.now(tz=datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = workdir / "store.crt", workdir / "store.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return cert_path, key_path


class CheckpointServer:
    """HTTPS: HEAD /<name> -> 200 with an ETag; anything else (the `.sha256` probe) -> 404."""

    def __init__(self, workdir: Path) -> None:
        self.cert, key = self_signed(workdir)
        self.requests: list[tuple[float, str, str]] = []
        lock = threading.Lock()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keep-alive, as a real store

            def _answer(self, found: bool) -> None:
                import time

                with lock:
                    outer.requests.append((time.monotonic(), self.command, self.path))
                self.send_response(200 if found else 404)
                if found:
                    self.send_header("ETag", '"bench-v1"')
                self.send_header("Content-Length", "0" if not found else "1048576")
                self.end_headers()

            def do_HEAD(self) -> None:
                self._answer(not self.path.endswith(".sha256"))

            def do_GET(self) -> None:
                self._answer(False)

            def log_message(self, *_: Any) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ctx.load_cert_chain(self.cert, key)
        self.httpd.socket = ctx.wrap_socket(self.httpd.socket, server_side=True)
        self.url = f"https://127.0.0.1:{self.httpd.server_address[1]}"
        self._thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self) -> CheckpointServer:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    def resolutions(self, since: float = 0.0) -> int:
        """Resolution rounds: one HEAD of the checkpoint each."""
        return sum(1 for t, method, _ in self.requests if t >= since and method == "HEAD")
