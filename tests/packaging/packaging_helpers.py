"""Helpers shared by the packaging tests: paths, YAML loading, kustomize and Helm rendering, validation.

They live in one module so every packaging test sees the repository through the same eyes: the same
kustomize build, the same chart render, the same strict validation against upstream Kubernetes schemas.
"""

from __future__ import annotations

import functools
import shutil
import subprocess
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
CHART_DIR = ROOT / "charts" / "deepdetect-operator"
CRD_FILE = ROOT / "crds" / "deepdetectservices.deepdetect.io.yaml"
MANIFESTS = ROOT / "manifests"
OVERLAY_NAMESPACED = MANIFESTS / "overlays" / "namespaced"
OBSERVABILITY = ROOT / "deploy" / "observability"
GITOPS = ROOT / "deploy" / "gitops"

# Both ends of the support window we promise; the validation tests run against each.
KUBE_VERSIONS = ("1.29.0", "1.33.0")

# Kinds that upstream Kubernetes schemas do not describe; the tests check their shape themselves.
CUSTOM_KINDS = {
    ("monitoring.coreos.com/v1", "ServiceMonitor"),
    ("monitoring.coreos.com/v1", "PrometheusRule"),
    ("kopf.dev/v1", "ClusterKopfPeering"),
    ("kopf.dev/v1", "KopfPeering"),
}

Manifest = dict[str, Any]


def load_all(text: str) -> list[Manifest]:
    """Every non-empty YAML document in `text`."""
    return [doc for doc in yaml.safe_load_all(text) if doc]


def kubectl() -> str | None:
    """Path of the kubectl client (it embeds kustomize), or None."""
    return shutil.which("kubectl")


@functools.cache
def kustomize_build(path: Path) -> tuple[Manifest, ...]:
    """`kubectl kustomize PATH` parsed; cached because several tests read the same build."""
    exe = kubectl()
    if exe is None:  # pragma: no cover - kubectl is part of the dev environment
        raise RuntimeError("kubectl not found on PATH: it is needed to build the kustomize manifests")
    out = subprocess.run([exe, "kustomize", str(path)], check=True, capture_output=True, text=True)
    return tuple(load_all(out.stdout))


def helm_render(
    values: dict[str, Any] | None = None,
    *,
    name: str = "deepdetect-operator",
    namespace: str = "deepdetect-system",
) -> list[Manifest]:
    """Render the chart offline through helm-python-sdk (Helm's own Go engine) and parse the output."""
    import helm_python

    with helm_python.Chart.load(CHART_DIR) as chart:
        rendered = chart.render(values or {}, name=name, namespace=namespace, is_install=True)
    docs: list[Manifest] = []
    for path in sorted(rendered):
        if path.endswith("NOTES.txt"):
            continue
        docs.extend(load_all(rendered[path]))
    return docs


def helm_notes(values: dict[str, Any] | None = None) -> str:
    """The rendered NOTES.txt (what `helm install` prints)."""
    import helm_python

    with helm_python.Chart.load(CHART_DIR) as chart:
        rendered = chart.render(values or {}, name="deepdetect-operator", namespace="deepdetect-system")
    return next(text for path, text in rendered.items() if path.endswith("NOTES.txt"))


def by_kind(docs: Iterable[Manifest], kind: str) -> list[Manifest]:
    return [d for d in docs if d.get("kind") == kind]


def one(docs: Iterable[Manifest], kind: str, name: str | None = None) -> Manifest:
    """The single object of `kind` (and `name`), failing loudly when there are none or several."""
    found = [d for d in by_kind(docs, kind) if name is None or d["metadata"]["name"] == name]
    names = [d["metadata"]["name"] for d in found]
    assert len(found) == 1, f"expected one {kind} {name or ''}, found {names}"
    return found[0]


def validate_strict(doc: Manifest, version: str) -> None:
    """kubernetes-validate --strict for built-in kinds; raises on any error (unknown fields included)."""
    import kubernetes_validate

    kubernetes_validate.validate(doc, version, strict=True)


def is_custom(doc: Manifest) -> bool:
    return (doc.get("apiVersion"), doc.get("kind")) in CUSTOM_KINDS or doc.get("apiVersion", "").startswith(
        "deepdetect.io/"
    )


def crd_schema(crd: Manifest, version: str | None = None) -> dict[str, Any]:
    """The openAPIV3Schema of a CRD's served version (the first one when `version` is None)."""
    for ver in crd["spec"]["versions"]:
        if version is None or ver["name"] == version:
            return ver["schema"]["openAPIV3Schema"]
    raise KeyError(version)


def rules_set(rules: Iterable[dict[str, Any]]) -> set[tuple[str, str, str]]:
    """Flatten RBAC rules into (apiGroup, resource, verb) triples so two rule lists can be compared
    however they are grouped."""
    out: set[tuple[str, str, str]] = set()
    for rule in rules:
        for group in rule.get("apiGroups", []):
            for resource in rule.get("resources", []):
                for verb in rule.get("verbs", []):
                    out.add((group, resource, verb))
    return out


def restricted_violations(pod_spec: dict[str, Any]) -> list[str]:
    """What keeps a pod spec from the `restricted` Pod Security Standard (the subset that applies to us).

    The namespace enforces `restricted`, so a violation here would be a pod the API server refuses.
    """
    problems: list[str] = []
    pod_sc = pod_spec.get("securityContext", {})
    for key in ("hostNetwork", "hostPID", "hostIPC"):
        if pod_spec.get(key):
            problems.append(f"{key} set")
    for vol in pod_spec.get("volumes", []):
        if "hostPath" in vol:
            problems.append(f"hostPath volume {vol['name']}")
    pod_seccomp = pod_sc.get("seccompProfile", {}).get("type")
    for ctr in pod_spec.get("initContainers", []) + pod_spec.get("containers", []):
        sc = ctr.get("securityContext", {})
        name = ctr["name"]
        if not (sc.get("runAsNonRoot") or pod_sc.get("runAsNonRoot")):
            problems.append(f"{name}: runAsNonRoot not true")
        if (sc.get("runAsUser", pod_sc.get("runAsUser"))) == 0:
            problems.append(f"{name}: runs as UID 0")
        if sc.get("allowPrivilegeEscalation") is not False:
            problems.append(f"{name}: allowPrivilegeEscalation not false")
        if sc.get("privileged"):
            problems.append(f"{name}: privileged")
        if "ALL" not in sc.get("capabilities", {}).get("drop", []):
            problems.append(f"{name}: capabilities not dropped")
        if sc.get("capabilities", {}).get("add"):
            problems.append(f"{name}: adds capabilities")
        if sc.get("seccompProfile", {}).get("type", pod_seccomp) not in {"RuntimeDefault", "Localhost"}:
            problems.append(f"{name}: no RuntimeDefault seccomp profile")
        if sc.get("readOnlyRootFilesystem") is not True:
            problems.append(f"{name}: root filesystem writable")
    return problems
