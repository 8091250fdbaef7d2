"""Issue 4, done-when: checkpoint rollouts end to end, the operator on the emulator and a real HTTP server.

The checkpoint is served by `http.server` on a real socket, with an ETag per content like an object store;
the test rewrites the bytes and watches the operator notice within `pollInterval`, roll the pod template,
fail on ProgressDeadlineExceeded and roll back to the last good digest, and keep the running digest when
the source breaks. Rollouts that complete need ready pods: where the test reports them by hand (the
emulator, which runs no controller), it is emulator-only; a real cluster without a kubelet never gets
ready pods, so those parts are left to the kind e2e suite (e2e/README.md), and a counterpart checks what
needs no ready pod.
"""

from __future__ import annotations

import hashlib
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from conftest_integration import Cluster, cluster, cluster_backend, cr_manifest, emulator_only, eventually
from deepdetect_operator.api import ANNOTATION_CHECKPOINT_DIGEST

__all__ = ["cluster", "cluster_backend"]

pytestmark = pytest.mark.timeout(60)


class _Handler(BaseHTTPRequestHandler):
    server: CheckpointServer

    def _reply(self, body: bool) -> None:
        srv = self.server
        srv.in_flight.set()
        try:
            time.sleep(srv.delay_s)
            self._answer(srv, body)
        finally:
            srv.in_flight.clear()

    def _answer(self, srv: CheckpointServer, body: bool) -> None:
        if srv.fail_status:
            self.send_error(srv.fail_status)
            return
        data = srv.files.get(self.path)
        if data is None:
            self.send_error(404)
            return
        self.send_response(200)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(len(data)))
        self.send_header("ETag", f'"{hashlib.sha256(data).hexdigest()[:20]}"')
        self.end_headers()
        if body:
            self.wfile.write(data)

    def do_GET(self) -> None:
        self._reply(body=True)

    def do_HEAD(self) -> None:
        self._reply(body=False)

    def log_message(self, *args: Any) -> None:
        pass


class CheckpointServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.files: dict[str, bytes] = {}
        self.fail_status = 0
        self.delay_s = 0.0  # a slow object store: each answer waits this long
        self.in_flight = threading.Event()  # set while a request is being answered

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/models/b4.safetensors"

    def publish(self, data: bytes) -> str:
        self.files["/models/b4.safetensors"] = data
        return f"etag:{hashlib.sha256(data).hexdigest()[:20]}"


@pytest.fixture()
def http_checkpoint() -> Iterator[CheckpointServer]:
    server = CheckpointServer()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()


def template_digest(c: Cluster, name: str) -> str:
    dep = c.deployment(name)
    return (
        ""
        if dep is None
        else dep["spec"]["template"]["metadata"]["annotations"][ANNOTATION_CHECKPOINT_DIGEST]
    )


async def _rolled_out(c: Cluster, name: str, digest: str) -> None:
    await eventually(lambda: template_digest(c, name) == digest, message=f"template at {digest}")
    await c.make_available(name)
    await eventually(
        lambda: (
            c.status(name)["rollout"]["state"] == "Complete"
            and c.status(name)["model"]["lastGoodDigest"] == digest
        ),
        message="rollout Complete",
    )


def polled_cr(name: str, uri: str) -> dict[str, Any]:
    """A CR whose checkpoint the operator re-resolves every second (the push flow)."""
    return cr_manifest(name, uri, model={"checkpoint": {"uri": uri, "pollInterval": "1s"}})


READY_BY_HAND = "reports the pods ready and the deadline missed by hand (a real rollout needs a kubelet)"


@emulator_only(READY_BY_HAND)
async def test_new_digest_rolls_and_deadline_rolls_back(
    cluster: Cluster, http_checkpoint: CheckpointServer
) -> None:
    good = http_checkpoint.publish(b"checkpoint v1")
    await cluster.create(polled_cr("faces", http_checkpoint.url))
    await _rolled_out(cluster, "faces", good)
    assert cluster.status("faces")["phase"] == "Ready"

    # Push flow: the object is overwritten; the operator notices within pollInterval and rolls the pods.
    bad = http_checkpoint.publish(b"checkpoint v2, which will never become ready")
    assert bad != good
    await eventually(lambda: template_digest(cluster, "faces") == bad, message="new digest in the template")
    # The template is applied first, status written at the end of the same pass.
    await eventually(
        lambda: (
            cluster.status("faces")["rollout"].items()
            >= {"state": "Progressing", "targetDigest": bad}.items()
        ),
        message="rollout Progressing",
    )
    assert cluster.status("faces")["model"]["digest"] == bad
    await eventually(lambda: cluster.events("RolloutStarted"), message="RolloutStarted event")

    # The new ReplicaSet never gets ready: the Deployment controller reports the deadline.
    await cluster.miss_deadline("faces", ready=1)
    await eventually(lambda: cluster.status("faces")["rollout"]["state"] == "Failed", message="Failed")
    degraded = cluster.condition("faces", "Degraded")
    assert degraded["status"] == "True" and degraded["reason"] == "RolloutFailed"
    assert f"rolled back to {good}" in degraded["message"]
    await eventually(
        lambda: template_digest(cluster, "faces") == good, message="rolled back to the last good"
    )
    assert cluster.status("faces")["model"]["lastGoodDigest"] == good
    await eventually(lambda: cluster.events("RolloutFailed"), message="RolloutFailed event")
    # The failed digest is not retried while the source still serves it.
    await cluster.make_available("faces")
    await cluster.quiet()
    assert template_digest(cluster, "faces") == good

    # A later new digest is tried again.
    fixed = http_checkpoint.publish(b"checkpoint v3, fixed")
    await _rolled_out(cluster, "faces", fixed)
    await eventually(
        lambda: cluster.condition("faces", "Degraded").get("status") == "False", message="healed"
    )


@emulator_only(READY_BY_HAND)
async def test_resolver_error_keeps_running_digest(
    cluster: Cluster, http_checkpoint: CheckpointServer
) -> None:
    good = http_checkpoint.publish(b"checkpoint v1")
    await cluster.create(polled_cr("faces", http_checkpoint.url))
    await _rolled_out(cluster, "faces", good)

    http_checkpoint.fail_status = 503
    await eventually(
        lambda: cluster.condition("faces", "CheckpointResolved").get("status") == "False", message="condition"
    )
    cond = cluster.condition("faces", "CheckpointResolved")
    assert cond["reason"] == "ResolveFailed" and "503" in cond["message"]
    assert template_digest(cluster, "faces") == good
    assert cluster.status("faces")["model"]["digest"] == good
    assert cluster.status("faces")["phase"] == "Ready"  # the running service is fine

    http_checkpoint.fail_status = 0
    await eventually(lambda: cluster.condition("faces", "CheckpointResolved").get("status") == "True")
    assert template_digest(cluster, "faces") == good  # same bytes: nothing rolls


async def test_resolver_error_keeps_the_template_digest(
    cluster: Cluster, http_checkpoint: CheckpointServer
) -> None:
    """The counterpart without ready pods: a broken source never changes the pod template's digest."""
    good = http_checkpoint.publish(b"checkpoint v1")
    await cluster.create(polled_cr("faces", http_checkpoint.url))
    await eventually(lambda: template_digest(cluster, "faces") == good, message="template at the digest")
    http_checkpoint.fail_status = 503
    await eventually(
        lambda: cluster.condition("faces", "CheckpointResolved").get("status") == "False", message="condition"
    )
    assert "503" in cluster.condition("faces", "CheckpointResolved")["message"]
    assert template_digest(cluster, "faces") == good and cluster.status("faces")["model"]["digest"] == good
    http_checkpoint.fail_status = 0
    await eventually(lambda: cluster.condition("faces", "CheckpointResolved").get("status") == "True")
    assert template_digest(cluster, "faces") == good


async def test_sha256_pin_change_rolls_at_once(cluster: Cluster, http_checkpoint: CheckpointServer) -> None:
    http_checkpoint.publish(b"checkpoint v1")
    pin = hashlib.sha256(b"pinned bytes").hexdigest()
    await cluster.create(cr_manifest("faces", http_checkpoint.url))  # pollInterval 0: only spec changes
    await eventually(lambda: template_digest(cluster, "faces").startswith("etag:"))
    await cluster.patch_spec("faces", {"model": {"checkpoint": {"sha256": pin}}})
    await eventually(lambda: template_digest(cluster, "faces") == f"sha256:{pin}", message="pin rolled")
    fetch = cluster.deployment("faces")["spec"]["template"]["spec"]["initContainers"][0]
    assert fetch["command"][fetch["command"].index("--sha256") + 1] == pin


@pytest.mark.timeout(60)
async def test_delete_while_a_resync_tick_resolves_completes_in_seconds(
    cluster: Cluster, http_checkpoint: CheckpointServer
) -> None:
    """`kubectl delete` while the per-CR timer is mid-pass (resolving a slow checkpoint): kopf removes the
    finalizer only once the timer has exited, and by default re-checks an exiting timer every 60 s, so the
    CR (and, on a real cluster, its namespace) used to hang for a minute. The operator polls every second."""
    http_checkpoint.publish(b"checkpoint v1")
    await cluster.create(polled_cr("faces", http_checkpoint.url))
    await eventually(lambda: cluster.status("faces").get("phase"), message="first status")
    http_checkpoint.delay_s = 2.0  # under the resolver's timeout: the tick's pass just takes a while
    await eventually(http_checkpoint.in_flight.is_set, message="a resync tick resolving the checkpoint")
    started = time.monotonic()
    await cluster.delete("faces")
    await eventually(lambda: cluster.cr("faces") is None, within=20, message="the CR gone")
    assert time.monotonic() - started < 10
