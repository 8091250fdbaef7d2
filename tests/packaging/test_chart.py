"""The Helm chart, linted and rendered by Helm's own Go engine (helm-python-sdk), no cluster needed.

What is checked: lint is clean (values schema included), every rendered object passes
kubernetes-validate --strict, the optional pieces appear only when switched on, and the chart installs
exactly the same operator as the kustomize manifests (a reviewer should never have to diff the two by
hand: one of them silently drifting is the classic packaging bug).
"""

from __future__ import annotations

import copy
import json
from typing import Any

import helm_python
import pytest
import yaml
from packaging_helpers import (
    CHART_DIR,
    CRD_FILE,
    KUBE_VERSIONS,
    MANIFESTS,
    OBSERVABILITY,
    OVERLAY_NAMESPACED,
    Manifest,
    by_kind,
    helm_notes,
    helm_render,
    is_custom,
    kustomize_build,
    one,
    restricted_violations,
    rules_set,
)
from packaging_helpers import validate_strict as k8s_validate

ALL_ON: dict[str, Any] = {
    "metrics": {"serviceMonitor": {"enabled": True, "labels": {"release": "prometheus"}}},
    "grafanaDashboard": {"enabled": True, "namespace": "monitoring"},
    "prometheusRule": {"enabled": True, "labels": {"release": "prometheus"}},
}
SCENARIOS: dict[str, dict[str, Any]] = {
    "default": {},
    "namespaced": {"watchNamespaces": ["team-a", "team-b"]},
    "no-crds": {"crds": {"install": False}},
    "monitoring": ALL_ON,
    "custom": {
        "image": {"repository": "registry.example/ops/deepdetect-operator", "tag": "1.2.3"},
        "serverImage": {"repository": "registry.example/ops/deepdetect-server", "tag": "1.2.3-cpu"},
        "serviceAccount": {"create": False, "name": "existing-sa"},
        "crds": {"keep": False},
        "imagePullSecrets": [{"name": "regcred"}],
        "nodeSelector": {"kubernetes.io/os": "linux"},
        "tolerations": [{"key": "dedicated", "operator": "Equal", "value": "ops", "effect": "NoSchedule"}],
        "priorityClassName": "system-cluster-critical",
        "podAnnotations": {"example.com/team": "ml-platform"},
        "extraEnv": [{"name": "LOG_LEVEL", "value": "debug"}],
        "resources": {"requests": {"cpu": "50m", "memory": "96Mi"}, "limits": {"memory": "256Mi"}},
    },
}
HELM_LABELS = {"helm.sh/chart", "app.kubernetes.io/managed-by", "app.kubernetes.io/version"}


@pytest.fixture(scope="module")
def rendered() -> dict[str, list[Manifest]]:
    return {name: helm_render(values) for name, values in SCENARIOS.items()}


@pytest.mark.parametrize("scenario", sorted(SCENARIOS))
def test_lint_clean(scenario: str) -> None:
    """`helm lint --strict` finds nothing above info level, with default and non-default values."""
    report = helm_python.lint(CHART_DIR, SCENARIOS[scenario], strict=True, namespace="deepdetect-system")
    assert report["errors"] == []
    assert [m for m in report["messages"] if m["severity"] >= 2] == []


@pytest.mark.parametrize(
    "values",
    [
        {"watchNamespce": ["typo"]},
        {"watchNamespaces": ["Not_A_Namespace"]},
        {"image": {"repository": "x", "tag": "latest"}},
        {"crds": {"install": "yes"}},
    ],
)
def test_values_schema_rejects_mistakes(values: dict[str, Any]) -> None:
    """values.schema.json turns typos and unsafe values into an install-time error, not a silent default."""
    with helm_python.Chart.load(CHART_DIR) as chart, pytest.raises(helm_python.HelmValuesError):
        chart.render(values, name="deepdetect-operator", namespace="deepdetect-system")


@pytest.mark.parametrize("scenario", sorted(SCENARIOS))
@pytest.mark.parametrize("version", KUBE_VERSIONS)
def test_rendered_objects_validate_strict(
    rendered: dict[str, list[Manifest]], scenario: str, version: str
) -> None:
    """Every built-in object passes kubernetes-validate --strict (the CRD against the CRD schema).
    ServiceMonitor and PrometheusRule have no upstream schema: their shape is checked below."""
    docs = rendered[scenario]
    assert docs
    for doc in docs:
        if is_custom(doc):
            assert doc["apiVersion"] == "monitoring.coreos.com/v1", doc["kind"]
            continue
        k8s_validate(doc, version)


def test_optional_pieces_only_when_enabled(rendered: dict[str, list[Manifest]]) -> None:
    default_kinds = sorted(d["kind"] for d in rendered["default"])
    expected = ["CustomResourceDefinition", "ServiceAccount", "ClusterRole", "ClusterRoleBinding"]
    assert default_kinds == sorted([*expected, "Deployment", "Service"])
    on = rendered["monitoring"]
    assert {d["kind"] for d in on} >= {"ServiceMonitor", "PrometheusRule", "ConfigMap"}
    assert not by_kind(rendered["no-crds"], "CustomResourceDefinition")


def test_crd_is_kept_and_matches_the_generated_one(rendered: dict[str, list[Manifest]]) -> None:
    """The CRD comes from files/crds (a copy of crds/), annotated so `helm uninstall` keeps it, and
    is otherwise the generated CRD unchanged (apart from the release's labels)."""
    assert CRD_FILE.exists(), "crds/ has no generated CRD yet: run `make crds`"
    copy_file = CHART_DIR / "files" / "crds" / CRD_FILE.name
    assert copy_file.read_bytes() == CRD_FILE.read_bytes(), f"{copy_file} is stale: run `make crds`"
    crd = one(rendered["default"], "CustomResourceDefinition")
    assert crd["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
    generated = yaml.safe_load(CRD_FILE.read_text())
    assert strip_meta(crd) == strip_meta(generated)
    unkept = one(rendered["custom"], "CustomResourceDefinition")
    assert "helm.sh/resource-policy" not in unkept["metadata"].get("annotations", {})


def strip_meta(doc: Manifest) -> Manifest:
    """A copy without labels/annotations and the fields Helm or kustomize add around the payload."""
    out = copy.deepcopy(doc)
    for key in ("labels", "annotations", "creationTimestamp"):
        out["metadata"].pop(key, None)
    out.pop("status", None)
    return out


def normalise_deployment(dep: Manifest) -> Manifest:
    """The operator Deployment with labels stripped of Helm's bookkeeping (chart version, managed-by)."""
    out = strip_meta(dep)
    tmpl = out["spec"]["template"]["metadata"]
    tmpl["labels"] = {k: v for k, v in tmpl.get("labels", {}).items() if k not in HELM_LABELS | {
        "app.kubernetes.io/part-of"}}
    tmpl.pop("annotations", None)
    return out


def test_chart_and_kustomize_install_the_same_operator(rendered: dict[str, list[Manifest]]) -> None:
    """Same Deployment (container spec, probes, security, volumes, strategy), same RBAC rules, same
    CRD, same Service and identity, modulo labels, for the release name `deepdetect-operator`."""
    chart = rendered["default"]
    kust = kustomize_build(MANIFESTS)
    assert normalise_deployment(one(chart, "Deployment")) == normalise_deployment(one(kust, "Deployment"))
    assert rules_set(one(chart, "ClusterRole")["rules"]) == rules_set(one(kust, "ClusterRole")["rules"])
    for kind in ("ClusterRoleBinding", "Service", "ServiceAccount", "CustomResourceDefinition"):
        assert strip_meta(one(chart, kind)) == strip_meta(one(kust, kind)), kind


def test_namespaced_mode_matches_the_overlay(rendered: dict[str, list[Manifest]]) -> None:
    """watchNamespaces: a Role + RoleBinding per namespace with the overlay's rules, no ClusterRole, and
    the operator told which namespaces to watch."""
    docs = rendered["namespaced"]
    assert not by_kind(docs, "ClusterRole") and not by_kind(docs, "ClusterRoleBinding")
    overlay_role = one(kustomize_build(OVERLAY_NAMESPACED), "Role")
    roles = by_kind(docs, "Role")
    assert sorted(r["metadata"]["namespace"] for r in roles) == ["team-a", "team-b"]
    for role in roles:
        assert rules_set(role["rules"]) == rules_set(overlay_role["rules"])
    for binding in by_kind(docs, "RoleBinding"):
        assert binding["roleRef"]["kind"] == "Role"
        assert binding["subjects"] == [
            {"kind": "ServiceAccount", "name": "deepdetect-operator", "namespace": "deepdetect-system"}
        ]
    env = {e["name"]: e.get("value") for e in operator_container(docs)["env"]}
    assert env["DEEPDETECT_NAMESPACES"] == "team-a,team-b"


def operator_container(docs: list[Manifest]) -> Manifest:
    return one(docs, "Deployment")["spec"]["template"]["spec"]["containers"][0]


def test_images_default_to_app_version(rendered: dict[str, list[Manifest]]) -> None:
    """Both images follow the chart's appVersion, and the default server image is the renderer's."""
    from deepdetect_operator.api import DEFAULT_SERVER_IMAGE

    with helm_python.Chart.load(CHART_DIR) as chart:
        app_version = chart.metadata["appVersion"]
    ctr = operator_container(rendered["default"])
    assert ctr["image"] == f"ghcr.io/deepdetect/deepdetect-operator:{app_version}"
    env = {e["name"]: e.get("value") for e in ctr["env"]}
    assert env["DEEPDETECT_SERVER_IMAGE"] == DEFAULT_SERVER_IMAGE
    custom = operator_container(rendered["custom"])
    assert custom["image"] == "registry.example/ops/deepdetect-operator:1.2.3"
    custom_env = {e["name"]: e.get("value") for e in custom["env"]}
    assert custom_env["DEEPDETECT_SERVER_IMAGE"] == "registry.example/ops/deepdetect-server:1.2.3-cpu"
    assert custom_env["LOG_LEVEL"] == "debug"


def test_custom_values_reach_the_pod(rendered: dict[str, list[Manifest]]) -> None:
    docs = rendered["custom"]
    assert not by_kind(docs, "ServiceAccount"), "serviceAccount.create=false uses an existing one"
    pod = one(docs, "Deployment")["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == "existing-sa"
    assert one(docs, "ClusterRoleBinding")["subjects"][0]["name"] == "existing-sa"
    assert pod["imagePullSecrets"] == [{"name": "regcred"}]
    assert pod["nodeSelector"] == {"kubernetes.io/os": "linux"}
    assert pod["priorityClassName"] == "system-cluster-critical"
    assert pod["tolerations"][0]["key"] == "dedicated"
    assert one(docs, "Deployment")["spec"]["template"]["metadata"]["annotations"] == {
        "example.com/team": "ml-platform"
    }
    assert restricted_violations(pod) == []


def test_service_monitor_selects_the_metrics_service(rendered: dict[str, list[Manifest]]) -> None:
    docs = rendered["monitoring"]
    sm = one(docs, "ServiceMonitor")
    svc = one(docs, "Service")
    assert sm["metadata"]["labels"]["release"] == "prometheus"
    assert sm["spec"]["selector"]["matchLabels"].items() <= svc["metadata"]["labels"].items()
    assert sm["spec"]["namespaceSelector"] == {"matchNames": [svc["metadata"]["namespace"]]}
    ports = {p["name"] for p in svc["spec"]["ports"]}
    for endpoint in sm["spec"]["endpoints"]:
        assert endpoint["port"] in ports and endpoint["path"] == "/metrics"
        assert set(endpoint) <= {"port", "path", "interval", "scrapeTimeout", "honorLabels"}
        assert endpoint["honorLabels"] is True, "the operator's namespace/name labels describe the CR"
    assert set(sm["spec"]) == {"selector", "namespaceSelector", "endpoints"}


def test_prometheus_rule_carries_the_observability_rules(rendered: dict[str, list[Manifest]]) -> None:
    """The PrometheusRule's spec is deploy/observability/prometheus-rules.yaml verbatim (Go templates in
    annotations included: Helm must not have eaten the {{ $labels... }})."""
    rule = one(rendered["monitoring"], "PrometheusRule")
    source = yaml.safe_load((OBSERVABILITY / "prometheus-rules.yaml").read_text())
    assert rule["spec"] == source
    assert set(rule["spec"]) == {"groups"}
    assert rule["metadata"]["labels"]["release"] == "prometheus"


def test_grafana_dashboard_configmap(rendered: dict[str, list[Manifest]]) -> None:
    """Labelled for the Grafana sidecar, in the namespace asked for, holding the dashboard unchanged."""
    cm = one(rendered["monitoring"], "ConfigMap")
    assert cm["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert cm["metadata"]["namespace"] == "monitoring"
    source = json.loads((OBSERVABILITY / "grafana-dashboard.json").read_text())
    assert json.loads(cm["data"]["deepdetect.json"]) == source


@pytest.mark.parametrize("name", ["grafana-dashboard.json", "prometheus-rules.yaml"])
def test_chart_copies_of_observability_assets_match(name: str) -> None:
    """deploy/observability is the single source; the chart ships byte-identical copies in files/
    (Helm's .Files cannot reach outside the chart). Fix with:
    cp deploy/observability/* charts/deepdetect-operator/files/"""
    assert (CHART_DIR / "files" / name).read_bytes() == (OBSERVABILITY / name).read_bytes()


def test_notes_say_what_to_do_next() -> None:
    notes = helm_notes()
    assert "rollout status deployment/deepdetect-operator" in notes
    assert "examples/cpu.yaml" in notes
    assert "resource-policy: keep" in notes
    assert "team-a, team-b" in helm_notes({"watchNamespaces": ["team-a", "team-b"]})
