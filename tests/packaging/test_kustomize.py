"""The kustomize install (`kubectl kustomize manifests/` and the namespaced overlay).

Built with the real kubectl (embedded kustomize) and validated with kubernetes-validate --strict
against upstream schemas for both ends of the supported range, so a typo or an unknown field fails
here instead of at `kubectl apply` time.
"""

from __future__ import annotations

import pytest
from packaging_helpers import (
    CRD_FILE,
    KUBE_VERSIONS,
    MANIFESTS,
    OVERLAY_NAMESPACED,
    Manifest,
    by_kind,
    is_custom,
    kustomize_build,
    one,
    restricted_violations,
    rules_set,
    validate_strict,
)

BUILDS = {"cluster": MANIFESTS, "namespaced": OVERLAY_NAMESPACED}
NAMESPACE = "deepdetect-system"
CLUSTER_SCOPED = {"Namespace", "CustomResourceDefinition", "ClusterRole", "ClusterRoleBinding"}


def operator_container(docs: tuple[Manifest, ...]) -> Manifest:
    dep = one(docs, "Deployment", "deepdetect-operator")
    containers = dep["spec"]["template"]["spec"]["containers"]
    assert [c["name"] for c in containers] == ["operator"]
    return containers[0]


@pytest.mark.parametrize("build", sorted(BUILDS))
@pytest.mark.parametrize("version", KUBE_VERSIONS)
def test_every_object_validates_strict(build: str, version: str) -> None:
    """Every object, the CRD included (checked against the CustomResourceDefinition schema), passes
    kubernetes-validate --strict. The build holds no custom-kind objects that need their own check."""
    docs = kustomize_build(BUILDS[build])
    assert docs
    for doc in docs:
        assert not is_custom(doc), f"unexpected custom object {doc['kind']} in the kustomize build"
        validate_strict(doc, version)


def test_crd_copy_matches_the_generated_crd() -> None:
    """manifests/ carries a copy of crds/ (kustomize cannot load files outside its root): `make crds`
    writes both, and this test catches a copy left behind."""
    assert CRD_FILE.exists(), "crds/deepdetectservices.deepdetect.io.yaml is missing: run `make crds`"
    copy = MANIFESTS / "base" / "crds" / CRD_FILE.name
    assert copy.read_bytes() == CRD_FILE.read_bytes(), f"{copy} is stale: run `make crds`"


@pytest.mark.parametrize("build", sorted(BUILDS))
def test_objects_and_namespaces(build: str) -> None:
    """The install is self-contained: its namespace, the CRD, an identity, RBAC, the operator, its
    metrics Service; every namespaced object lives in deepdetect-system."""
    docs = kustomize_build(BUILDS[build])
    kinds = sorted(d["kind"] for d in docs)
    rbac = ["ClusterRole", "ClusterRoleBinding"] if build == "cluster" else ["Role", "RoleBinding"]
    expected = ["CustomResourceDefinition", "Deployment", "Namespace", "Service", "ServiceAccount", *rbac]
    assert kinds == sorted(expected)
    ns = one(docs, "Namespace")
    assert ns["metadata"]["name"] == NAMESPACE
    assert ns["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"
    for doc in docs:
        if doc["kind"] in CLUSTER_SCOPED:
            assert "namespace" not in doc["metadata"]
        else:
            assert doc["metadata"]["namespace"] == NAMESPACE, doc["kind"]
    crd = one(docs, "CustomResourceDefinition")
    assert crd["metadata"]["name"] == "deepdetectservices.deepdetect.io"


def test_operator_deployment() -> None:
    """Recreate (never two operators at once), probes on kopf's liveness port, the metrics port,
    requests and limits, restricted security context with a read-only root and a tmp emptyDir."""
    docs = kustomize_build(MANIFESTS)
    dep = one(docs, "Deployment", "deepdetect-operator")
    spec = dep["spec"]
    assert spec["strategy"] == {"type": "Recreate"}
    assert spec["replicas"] == 1
    pod = spec["template"]["spec"]
    assert pod["serviceAccountName"] == one(docs, "ServiceAccount")["metadata"]["name"]
    selector = spec["selector"]["matchLabels"]
    assert selector.items() <= spec["template"]["metadata"]["labels"].items()
    ctr = operator_container(docs)
    ports = {p["name"]: p["containerPort"] for p in ctr["ports"]}
    assert ports == {"health": 8080, "metrics": 9090}
    for probe in ("livenessProbe", "readinessProbe", "startupProbe"):
        assert ctr[probe]["httpGet"] == {"path": "/healthz", "port": "health"}, probe
    assert {"cpu", "memory"} <= ctr["resources"]["requests"].keys()
    assert "memory" in ctr["resources"]["limits"]
    assert restricted_violations(pod) == []
    mounts = {m["mountPath"]: m["name"] for m in ctr["volumeMounts"]}
    assert mounts == {"/tmp": "tmp"}
    assert {"name": "tmp", "emptyDir": {"sizeLimit": "64Mi"}} in pod["volumes"]
    assert pod["securityContext"]["runAsUser"] == 10001, "matches the image's USER"
    assert ctr["image"].startswith("ghcr.io/deepdetect/deepdetect-operator:")
    assert not ctr["image"].endswith(":latest")


def test_operator_env_follows_contracts() -> None:
    """DEEPDETECT_SERVER_IMAGE defaults to the renderer's default image; DEEPDETECT_NAMESPACES empty =
    cluster-wide (docs/CONTRACTS.md)."""
    from deepdetect_operator.api import DEFAULT_SERVER_IMAGE

    env = {e["name"]: e for e in operator_container(kustomize_build(MANIFESTS))["env"]}
    assert env["DEEPDETECT_SERVER_IMAGE"]["value"] == DEFAULT_SERVER_IMAGE
    assert env["DEEPDETECT_NAMESPACES"]["value"] == ""
    assert env["POD_NAME"]["valueFrom"] == {"fieldRef": {"fieldPath": "metadata.name"}}


def test_metrics_service_selects_the_operator() -> None:
    docs = kustomize_build(MANIFESTS)
    svc = one(docs, "Service", "deepdetect-operator-metrics")
    pod_labels = one(docs, "Deployment")["spec"]["template"]["metadata"]["labels"]
    assert svc["spec"]["selector"].items() <= pod_labels.items()
    port = {"name": "metrics", "port": 9090, "targetPort": "metrics", "protocol": "TCP"}
    assert svc["spec"]["ports"] == [port]


def test_namespaced_overlay() -> None:
    """Single-namespace mode: a Role bound in the operator's namespace with the ClusterRole's namespaced
    rules, no cluster-wide grant, and DEEPDETECT_NAMESPACES from the downward API (so a kustomize
    `namespace:` change moves the operator and what it watches together)."""
    cluster = kustomize_build(MANIFESTS)
    docs = kustomize_build(OVERLAY_NAMESPACED)
    assert not by_kind(docs, "ClusterRole") and not by_kind(docs, "ClusterRoleBinding")
    role = one(docs, "Role", "deepdetect-operator")
    binding = one(docs, "RoleBinding", "deepdetect-operator")
    role_ref = {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "deepdetect-operator"}
    assert binding["roleRef"] == role_ref
    sa_name = one(docs, "ServiceAccount")["metadata"]["name"]
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": sa_name, "namespace": NAMESPACE}]
    cluster_only = {"customresourcedefinitions", "namespaces", "clusterkopfpeerings"}
    wanted = {t for t in rules_set(one(cluster, "ClusterRole")["rules"]) if t[1] not in cluster_only}
    assert rules_set(role["rules"]) == wanted
    env = {e["name"]: e for e in operator_container(docs)["env"]}
    assert env["DEEPDETECT_NAMESPACES"] == {
        "name": "DEEPDETECT_NAMESPACES",
        "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}},
    }
    # Everything else about the operator is the same as in cluster mode.
    base_ctr = operator_container(cluster)
    ctr = operator_container(docs)
    assert {k: v for k, v in ctr.items() if k != "env"} == {k: v for k, v in base_ctr.items() if k != "env"}
