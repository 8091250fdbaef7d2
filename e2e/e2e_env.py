"""What the kind e2e suite needs, checked once at collection time, and the small wrappers it runs.

The suite is never faked: when docker, its daemon, kind or kubectl is missing, `skip_reason()` says
exactly which, and every test in e2e/ is skipped with that reason. With E2E_EXISTING_CLUSTER=1 the
cluster in KUBECONFIG is used instead of a fresh kind cluster (`make e2e-existing`).
"""

from __future__ import annotations

import functools
import json
import os
import shutil
import subprocess
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
CHART_DIR = ROOT / "charts" / "deepdetect-operator"
CLUSTER_NAME = os.environ.get("E2E_KIND_CLUSTER", "deepdetect-e2e")
TAG = os.environ.get("E2E_TAG", "e2e")
SERVER_IMAGE = os.environ.get("E2E_SERVER_IMAGE", f"deepdetect-server:{TAG}")
OPERATOR_IMAGE = os.environ.get("E2E_OPERATOR_IMAGE", f"deepdetect-operator:{TAG}")
# The CPU variant of the server image: the e2e cluster has no GPU.
CPU_BASE = "python:3.11.11-slim-bookworm"
OPERATOR_NAMESPACE = "deepdetect-system"
NAMESPACE = "deepdetect-e2e"
RELEASE = "deepdetect-operator"
# The demo checkpoint examples/cpu.yaml expects (timm test_efficientnet at 160 px, random init).
CHECKPOINT_ARGS = ["--arch", "test_efficientnet", "--input-size", "160"]


def existing_cluster() -> bool:
    return os.environ.get("E2E_EXISTING_CLUSTER") == "1"


def _first_line(text: str) -> str:
    lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip()]
    return lines[-1] if lines else "no output"


def _probe(cmd: Sequence[str], timeout: float = 20.0) -> str | None:
    """None when `cmd` succeeds, else a one-line reason."""
    try:
        proc = subprocess.run(list(cmd), capture_output=True, text=True, timeout=timeout)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return str(exc)
    if proc.returncode != 0:
        return _first_line(proc.stderr or proc.stdout)
    return None


def images_prebuilt() -> bool:
    """Images given from outside (already pushed where the cluster can pull them)."""
    return "E2E_SERVER_IMAGE" in os.environ and "E2E_OPERATOR_IMAGE" in os.environ


@functools.cache
def skip_reason() -> str | None:
    """Why the e2e suite cannot run here, or None when it can. Cached: probed once per session."""
    if shutil.which("kubectl") is None:
        return "kubectl not found on PATH"
    if existing_cluster():
        problem = _probe(["kubectl", "version", "--request-timeout=10s", "-o", "json"])
        if problem:
            return f"E2E_EXISTING_CLUSTER=1 but the cluster in KUBECONFIG is not reachable: {problem}"
        if images_prebuilt():
            return None
    if shutil.which("docker") is None:
        return "docker not found on PATH"
    problem = _probe(["docker", "info", "--format", "{{.ServerVersion}}"])
    if problem:
        return f"docker daemon not reachable: {problem}"
    if shutil.which("kind") is None:
        return "kind not found on PATH (https://kind.sigs.k8s.io/docs/user/quick-start/#installation)"
    if existing_cluster() and not current_context().startswith("kind-"):
        return (
            "E2E_EXISTING_CLUSTER=1 with a non-kind cluster: push the images and set "
            "E2E_SERVER_IMAGE and E2E_OPERATOR_IMAGE"
        )
    return None


def current_context() -> str:
    proc = subprocess.run(["kubectl", "config", "current-context"], capture_output=True, text=True)
    return proc.stdout.strip()


def run(cmd: Sequence[str], *, timeout: float = 600, check: bool = True, input: str | None = None,
        env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """Run a command with output captured; on failure raise with its stderr, which is the useful part."""
    proc = subprocess.run(
        list(cmd), capture_output=True, text=True, timeout=timeout, input=input, env=env or os.environ.copy()
    )
    if check and proc.returncode != 0:
        output = f"{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"
        raise RuntimeError(f"{' '.join(cmd)} -> {proc.returncode}\n{output}")
    return proc


def kubectl(*args: str, timeout: float = 600, check: bool = True, input: str | None = None) -> str:
    return run(["kubectl", *args], timeout=timeout, check=check, input=input).stdout


def kubectl_json(*args: str) -> Any:
    return json.loads(kubectl(*args, "-o", "json"))


def apply(manifest: dict[str, Any] | list[dict[str, Any]]) -> None:
    docs = manifest if isinstance(manifest, list) else [manifest]
    kubectl("apply", "-f", "-", input="\n---\n".join(json.dumps(d) for d in docs))


def wait_for(what: str, check: Callable[[], Any], timeout: float, interval: float = 2.0) -> Any:
    """Poll `check` until it returns something truthy; fail with `what` and the last value after timeout."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = check()
        except Exception as exc:  # a transient API error is another reason to poll again
            last = exc
        else:
            if last:
                return last
        time.sleep(interval)
    raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what}; last: {last!r}")


def restricted_container_security() -> dict[str, Any]:
    """The `restricted` Pod Security Standard, which the e2e namespace enforces."""
    return {
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "runAsNonRoot": True,
        "capabilities": {"drop": ["ALL"]},
    }


def restricted_pod_security() -> dict[str, Any]:
    return {
        "runAsNonRoot": True,
        "runAsUser": 10001,
        "runAsGroup": 10001,
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def replace_checkpoint() -> None:
    """Write a new random-init checkpoint next to the served one and rename it over it (atomic), so the
    HTTP server never serves half a file; its Last-Modified changes, which the operator resolves to a new
    digest at the next pollInterval."""
    script = (
        "deepdetect-server checkpoint create " + " ".join(CHECKPOINT_ARGS) + " --out /srv/next.safetensors"
        " && mv /srv/next.safetensors /srv/model.safetensors"
    )
    kubectl("-n", NAMESPACE, "exec", "deploy/deepdetect-checkpoints", "-c", "http", "--", "sh", "-c", script)


def checkpoint_server_manifests(image: str) -> list[dict[str, object]]:
    """deepdetect-checkpoints: the server image itself serves /srv over HTTP (python -m http.server);
    an init container writes a fresh random-init checkpoint there. No internet, no extra image."""
    labels = {"app.kubernetes.io/name": "deepdetect-checkpoints"}
    out = "/srv/model.safetensors"
    create = ["deepdetect-server", "checkpoint", "create", *CHECKPOINT_ARGS, "--out", out]
    container_base = {
        "image": image,
        "imagePullPolicy": "IfNotPresent",
        "securityContext": restricted_container_security(),
        "volumeMounts": [{"name": "srv", "mountPath": "/srv"}, {"name": "tmp", "mountPath": "/tmp"}],
        "resources": {"requests": {"cpu": "100m", "memory": "256Mi"}, "limits": {"memory": "1Gi"}},
    }
    deployment = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "deepdetect-checkpoints", "namespace": NAMESPACE, "labels": labels},
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": labels},
            "template": {
                "metadata": {"labels": labels},
                "spec": {
                    "securityContext": restricted_pod_security(),
                    "initContainers": [{"name": "create", "command": create, **container_base}],
                    "containers": [{
                        "name": "http",
                        "command": ["python", "-m", "http.server", "8000", "--directory", "/srv"],
                        "ports": [{"name": "http", "containerPort": 8000}],
                        "readinessProbe": {"httpGet": {"path": "/model.safetensors", "port": "http"}},
                        **container_base,
                    }],
                    "volumes": [{"name": "srv", "emptyDir": {}}, {"name": "tmp", "emptyDir": {}}],
                },
            },
        },
    }
    service = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": "deepdetect-checkpoints", "namespace": NAMESPACE, "labels": labels},
        "spec": {"selector": labels, "ports": [{"name": "http", "port": 80, "targetPort": "http"}]},
    }
    return [deployment, service]


def client_pod(name: str, script: str, env: dict[str, str], image: str) -> dict[str, Any]:
    """A one-shot Python client in the server image (it has Pillow), restricted-compliant."""
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": name,
            "namespace": NAMESPACE,
            "labels": {"app.kubernetes.io/name": "e2e-client"},
        },
        "spec": {
            "restartPolicy": "Never",
            "securityContext": restricted_pod_security(),
            "containers": [{
                "name": "client",
                "image": image,
                "imagePullPolicy": "IfNotPresent",
                "command": ["python", "-c", script],
                "env": [{"name": k, "value": v} for k, v in env.items()],
                "securityContext": restricted_container_security(),
                "volumeMounts": [{"name": "tmp", "mountPath": "/tmp"}],
            }],
            "volumes": [{"name": "tmp", "emptyDir": {}}],
        },
    }
