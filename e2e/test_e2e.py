"""End to end on a real cluster (kind): install, serve, call, roll a checkpoint under load, delete.

This is the only place where real Kubernetes controllers run: the garbage collector deleting children,
the Deployment controller rolling pods, kube-proxy routing requests, Pod Security admission. `make e2e`
runs it; where docker or kind is missing every test is skipped with the exact reason (see e2e_env.py).
The tests run in order and share one cluster: each step builds on the previous one.
"""

from __future__ import annotations

import json
import textwrap
import time
from typing import Any

import pytest
from e2e_env import (
    NAMESPACE,
    ROOT,
    apply,
    client_pod,
    kubectl,
    kubectl_json,
    replace_checkpoint,
    skip_reason,
    wait_for,
)

_REASON = skip_reason()
pytestmark = [
    pytest.mark.e2e,
    pytest.mark.timeout(3600),
    pytest.mark.skipif(_REASON is not None, reason=_REASON or ""),
]

CR_NAME = "tiny"
CHILD_KINDS = ",".join([
    "deployments", "replicasets", "pods", "services", "configmaps", "secrets",
    "horizontalpodautoscalers", "poddisruptionbudgets",
])
INSTANCE = f"app.kubernetes.io/instance={CR_NAME}"

DETECT_ONCE = textwrap.dedent(
    """
    import io, json, os, urllib.request
    from PIL import Image
    buf = io.BytesIO()
    Image.new("RGB", (320, 240), (40, 150, 90)).save(buf, "JPEG", quality=90)
    req = urllib.request.Request(os.environ["URL"] + "/v1/detect", data=buf.getvalue(),
                                 headers={"Content-Type": "image/jpeg"}, method="POST")
    with urllib.request.urlopen(req, timeout=60) as resp:
        print(json.dumps({"status": resp.status, "body": json.loads(resp.read())}))
    """
)

# Calls /v1/detect without pause; stops 20 s after the first answer from a new digest (or at the
# deadline) and prints one JSON summary line. Every non-200 answer and every connection error counts.
DETECT_LOOP = textwrap.dedent(
    """
    import io, json, os, time, urllib.error, urllib.request
    from PIL import Image
    buf = io.BytesIO()
    Image.new("RGB", (320, 240), (200, 60, 90)).save(buf, "JPEG", quality=90)
    body = buf.getvalue()
    deadline = time.monotonic() + float(os.environ["SECONDS"])
    ok, failed, errors, digests, first, switched = 0, 0, [], {}, None, None
    while time.monotonic() < deadline:
        req = urllib.request.Request(os.environ["URL"] + "/v1/detect", data=body,
                                     headers={"Content-Type": "image/jpeg"}, method="POST")
        try:
            with urllib.request.urlopen(req, timeout=30) as resp:
                digest = json.loads(resp.read())["model"]["digest"]
                ok += 1
                digests[digest] = digests.get(digest, 0) + 1
                first = first or digest
                if digest != first and switched is None:
                    switched = time.monotonic()
        except (urllib.error.URLError, OSError, ValueError) as exc:
            failed += 1
            if len(errors) < 10:
                errors.append(repr(exc))
        if switched is not None and time.monotonic() - switched > 20:
            break
        time.sleep(0.05)
    print(json.dumps({"ok": ok, "failed": failed, "errors": errors, "digests": digests}))
    """
)


def pod_finished(name: str) -> str | None:
    phase = kubectl_json("-n", NAMESPACE, "get", "pod", name)["status"].get("phase")
    return phase if phase in {"Succeeded", "Failed"} else None


def run_client(name: str, script: str, env: dict[str, str], image: str, timeout: float) -> str:
    kubectl("-n", NAMESPACE, "delete", "pod", name, "--ignore-not-found", "--wait=true")
    apply(client_pod(name, script, env, image))
    phase = wait_for(f"client pod {name}", lambda: pod_finished(name), timeout)
    logs = kubectl("-n", NAMESPACE, "logs", name)
    assert phase == "Succeeded", logs
    return logs.strip().splitlines()[-1]


def dds() -> dict[str, Any]:
    return kubectl_json("-n", NAMESPACE, "get", "deepdetectservice", CR_NAME)


def condition(obj: dict[str, Any], ctype: str) -> dict[str, Any]:
    return next((c for c in obj.get("status", {}).get("conditions", []) if c["type"] == ctype), {})


def is_ready(obj: dict[str, Any]) -> bool:
    status = obj.get("status", {})
    return status.get("phase") == "Ready" and condition(obj, "Ready").get("status") == "True"


def ready_dds() -> dict[str, Any] | None:
    obj = dds()
    return obj if is_ready(obj) else None


def test_operator_runs(operator: str) -> None:
    """The chart's operator Deployment is available under Pod Security `restricted`."""
    dep = kubectl_json("-n", "deepdetect-system", "get", "deployment", operator)
    assert dep["status"].get("availableReplicas") == 1
    crd = kubectl_json("get", "crd", "deepdetectservices.deepdetect.io")
    assert crd["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"


def test_cpu_example_becomes_ready(checkpoints: str) -> None:
    """examples/cpu.yaml -> Ready, with every child owned by the CR."""
    example = ROOT / "examples" / "cpu.yaml"
    assert checkpoints in example.read_text(), "examples/cpu.yaml serves from the e2e checkpoint server"
    kubectl("apply", "-f", str(example))
    obj = wait_for("DeepDetectService Ready", ready_dds, timeout=900)
    status = obj["status"]
    assert status["readyReplicas"] >= 1
    assert status["observedGeneration"] == obj["metadata"]["generation"]
    assert status["model"]["digest"]
    assert condition(obj, "CheckpointResolved").get("status") == "True"
    uid = obj["metadata"]["uid"]
    for kind in ("deployment", "service", "configmap", "poddisruptionbudget"):
        items = kubectl_json("-n", NAMESPACE, "get", kind, "-l", INSTANCE)["items"]
        assert items, f"no {kind} for {CR_NAME}"
        for item in items:
            owners = item["metadata"].get("ownerReferences", [])
            assert any(o["uid"] == uid and o.get("controller") for o in owners), f"{kind} not owned"


def test_detect_through_the_service(images: tuple[str, str]) -> None:
    """A pod in the cluster calls /v1/detect through the Service and gets a verdict from the digest the
    operator reports."""
    obj = dds()
    line = run_client("e2e-detect", DETECT_ONCE, {"URL": obj["status"]["endpoint"]}, images[0], timeout=300)
    answer = json.loads(line)
    assert answer["status"] == 200
    body = answer["body"]
    assert {"label", "score", "threshold", "model", "latency_ms"} <= body.keys()
    assert 0.0 <= body["score"] <= 1.0
    assert body["model"]["digest"]


def test_checkpoint_rollout_without_failed_requests(images: tuple[str, str]) -> None:
    """Replace the served checkpoint while a client keeps calling: the operator notices (pollInterval),
    rolls the pods, reports the rollout Complete, and not one request fails."""
    before = dds()
    old_digest = before["status"]["model"]["digest"]
    env = {"URL": before["status"]["endpoint"], "SECONDS": "600"}
    kubectl("-n", NAMESPACE, "delete", "pod", "e2e-load", "--ignore-not-found", "--wait=true")
    apply(client_pod("e2e-load", DETECT_LOOP, env, images[0]))
    wait_for("load client running", lambda: kubectl_json("-n", NAMESPACE, "get", "pod", "e2e-load")["status"]
             .get("phase") == "Running", timeout=120)
    time.sleep(5)  # some answers from the old checkpoint first
    replace_checkpoint()

    def rolled() -> dict[str, Any] | None:
        obj = dds()
        status = obj.get("status", {})
        rollout = status.get("rollout", {})
        assert rollout.get("state") != "Failed", rollout
        new = status.get("model", {}).get("digest")
        if new and new != old_digest and rollout.get("state") == "Complete" and is_ready(obj):
            return obj
        return None

    after = wait_for("rollout Complete", rolled, timeout=900)
    assert after["status"]["model"]["lastGoodDigest"] == after["status"]["model"]["digest"]
    phase = wait_for("load client done", lambda: pod_finished("e2e-load"), timeout=660)
    summary = json.loads(kubectl("-n", NAMESPACE, "logs", "e2e-load").strip().splitlines()[-1])
    assert phase == "Succeeded"
    assert summary["failed"] == 0, summary
    assert summary["ok"] > 20, summary
    assert len(summary["digests"]) >= 2, f"the client never saw the new checkpoint: {summary}"


def test_delete_removes_every_child() -> None:
    """Deleting the CR leaves nothing behind: the operator's finalizer completes and the garbage
    collector removes every owned child (and their ReplicaSets and pods)."""
    kubectl("-n", NAMESPACE, "delete", "deepdetectservice", CR_NAME, "--wait=true", "--timeout=300s")

    def gone() -> bool:
        left = kubectl("-n", NAMESPACE, "get", CHILD_KINDS, "-l", INSTANCE, "-o", "name").split()
        return not left

    wait_for("children garbage-collected", gone, timeout=300)
    leftover = kubectl("-n", NAMESPACE, "get", "deepdetectservices", "-o", "name").split()
    assert f"deepdetectservice.deepdetect.io/{CR_NAME}" not in leftover
