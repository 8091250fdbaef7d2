"""Least privilege: the operator's RBAC grants exactly the API calls it makes, no more, no less.

The reference list of calls comes from docs/operator-runtime.md (written by the runtime's authors,
machine-readable block) when it exists; until then from DESIGN.md, as the constant below. On top, the
children the real renderer produces for the shipped examples must all be creatable, and nothing may be
granted by wildcard. A missing verb shows up in a cluster as a 403 loop; an extra one is attack surface.
"""

from __future__ import annotations

import re
from typing import Any

import pytest
import yaml
from packaging_helpers import (
    MANIFESTS,
    OVERLAY_NAMESPACED,
    ROOT,
    by_kind,
    helm_render,
    kustomize_build,
    one,
    rules_set,
)

RUNTIME_DOC = ROOT / "docs" / "operator-runtime.md"

# (apiGroup, resource) -> verbs, derived from DESIGN.md ("Flow", "Checkpoints and rollout") and kopf's
# own needs; used only while docs/operator-runtime.md does not exist.
EXPECTED_CALLS_FROM_DESIGN: dict[tuple[str, str], set[str]] = {
    ("deepdetect.io", "deepdetectservices"): {"get", "list", "watch", "patch", "update"},
    ("deepdetect.io", "deepdetectservices/status"): {"get", "patch", "update"},
    ("apps", "deployments"): {"get", "list", "watch", "create", "patch", "delete"},
    ("", "services"): {"get", "list", "watch", "create", "patch", "delete"},
    ("", "configmaps"): {"get", "list", "watch", "create", "patch", "delete"},
    ("", "secrets"): {"get", "list", "watch", "create", "patch", "delete"},
    ("autoscaling", "horizontalpodautoscalers"): {"get", "list", "watch", "create", "patch", "delete"},
    ("policy", "poddisruptionbudgets"): {"get", "list", "watch", "create", "patch", "delete"},
    ("monitoring.coreos.com", "servicemonitors"): {"get", "list", "watch", "create", "patch", "delete"},
    ("", "pods"): {"get", "list", "watch"},
    ("", "events"): {"create", "patch"},
    ("kopf.dev", "kopfpeerings"): {"get", "list", "watch", "patch"},
    ("kopf.dev", "clusterkopfpeerings"): {"get", "list", "watch", "patch"},
    ("apiextensions.k8s.io", "customresourcedefinitions"): {"get", "list", "watch"},
    ("", "namespaces"): {"list", "watch"},
}
CLUSTER_SCOPED = {"customresourcedefinitions", "namespaces", "clusterkopfpeerings"}
DANGEROUS_VERBS = {"*", "escalate", "bind", "impersonate", "deletecollection"}
KIND_TO_RESOURCE = {
    "ConfigMap": ("", "configmaps"),
    "Secret": ("", "secrets"),
    "Service": ("", "services"),
    "Deployment": ("apps", "deployments"),
    "HorizontalPodAutoscaler": ("autoscaling", "horizontalpodautoscalers"),
    "PodDisruptionBudget": ("policy", "poddisruptionbudgets"),
    "ServiceMonitor": ("monitoring.coreos.com", "servicemonitors"),
}


def parse_runtime_doc(text: str) -> set[tuple[str, str, str]]:
    """The (apiGroup, resource, verb) triples of docs/operator-runtime.md's machine-readable block: a
    fenced ```yaml block holding RBAC-style rules (`apiGroups`/`resources`/`verbs`), either as a list or
    under a `rules:` key, or entries with `group`/`resource`/`verbs`."""
    triples: set[tuple[str, str, str]] = set()
    for block in re.findall(r"```ya?ml[^\n]*\n(.*?)```", text, flags=re.S):
        try:
            data = yaml.safe_load(block)
        except yaml.YAMLError:
            continue
        if isinstance(data, dict):
            data = data.get("rules") or data.get("calls") or data.get("rbac")
        if not isinstance(data, list) or not all(isinstance(r, dict) for r in data):
            continue
        for rule in data:
            if "apiGroups" in rule:
                triples |= rules_set([rule])
            elif "resource" in rule:
                group = rule.get("group", rule.get("apiGroup", ""))
                group = "" if group in ("core", None) else group
                triples |= {(group, rule["resource"], verb) for verb in rule["verbs"]}
    return triples


def expected_calls() -> set[tuple[str, str, str]]:
    if RUNTIME_DOC.exists():
        triples = parse_runtime_doc(RUNTIME_DOC.read_text())
        assert triples, f"{RUNTIME_DOC} has no machine-readable ```yaml block of rules"
        return triples
    return {(g, r, v) for (g, r), verbs in EXPECTED_CALLS_FROM_DESIGN.items() for v in verbs}


def cluster_roles() -> dict[str, list[dict[str, Any]]]:
    return {
        "kustomize": one(kustomize_build(MANIFESTS), "ClusterRole")["rules"],
        "helm": one(helm_render(), "ClusterRole")["rules"],
    }


def namespaced_roles() -> dict[str, list[dict[str, Any]]]:
    return {
        "kustomize-overlay": one(kustomize_build(OVERLAY_NAMESPACED), "Role")["rules"],
        "helm-watchNamespaces": by_kind(helm_render({"watchNamespaces": ["a"]}), "Role")[0]["rules"],
    }


@pytest.mark.parametrize("source", ["kustomize", "helm"])
def test_cluster_role_grants_exactly_the_operator_calls(source: str) -> None:
    granted = rules_set(cluster_roles()[source])
    wanted = expected_calls()
    assert granted - wanted == set(), f"granted but never called: {sorted(granted - wanted)}"
    assert wanted - granted == set(), f"called but not granted: {sorted(wanted - granted)}"


@pytest.mark.parametrize("source", ["kustomize-overlay", "helm-watchNamespaces"])
def test_role_grants_the_namespaced_calls(source: str) -> None:
    """Single-namespace mode: the same calls minus the cluster-scoped ones (kopf falls back)."""
    wanted = {t for t in expected_calls() if t[1] not in CLUSTER_SCOPED}
    assert rules_set(namespaced_roles()[source]) == wanted


@pytest.mark.parametrize("source", ["kustomize", "helm", "kustomize-overlay", "helm-watchNamespaces"])
def test_no_wildcards_or_escalation(source: str) -> None:
    """No `*` anywhere, no escalate/bind/impersonate, no non-resource URLs; secrets are never
    granted by wildcard (the operator sees only what it creates and reads)."""
    rules = {**cluster_roles(), **namespaced_roles()}[source]
    for rule in rules:
        assert "nonResourceURLs" not in rule
        assert "resourceNames" not in rule or rule["resourceNames"]
        for key in ("apiGroups", "resources", "verbs"):
            assert "*" not in rule[key], f"wildcard in {key}: {rule}"
            assert all("*" not in item for item in rule[key]), rule
        assert not set(rule["verbs"]) & DANGEROUS_VERBS, rule
        if "secrets" in rule["resources"]:
            assert "*" not in rule["verbs"]


def test_renderer_children_are_all_creatable() -> None:
    """Render the shipped examples with the operator's real renderer (ServiceMonitor and API-key Secret
    included): every child kind it can produce is granted get/create/patch, and the CR's status too."""
    from deepdetect_operator.api import parse_spec
    from deepdetect_operator.render import RenderInputs, render_api_key_secret, render_children

    granted = rules_set(cluster_roles()["kustomize"])
    kinds: set[str] = set()
    examples = sorted((ROOT / "examples").glob("*.yaml"))
    assert examples, "examples/*.yaml are missing"
    for path in examples:
        cr = yaml.safe_load(path.read_text())
        spec = parse_spec(cr["spec"])
        monitoring = spec.monitoring.model_copy(update={"service_monitor": True})
        spec = spec.model_copy(update={"monitoring": monitoring})
        inp = RenderInputs(
            name=cr["metadata"]["name"],
            namespace=cr["metadata"].get("namespace", "default"),
            uid="00000000-0000-0000-0000-000000000000",
            spec=spec,
            service_monitor_available=True,
        )
        children = [*render_children(inp), render_api_key_secret(inp, "k" * 32)]
        kinds |= {c["kind"] for c in children}
    assert {"Deployment", "Service", "ConfigMap", "Secret", "PodDisruptionBudget", "ServiceMonitor"} <= kinds
    for kind in kinds:
        group, resource = KIND_TO_RESOURCE[kind]
        for verb in ("get", "create", "patch"):
            assert (group, resource, verb) in granted, f"{kind}: {verb} not granted"
    assert ("deepdetect.io", "deepdetectservices/status", "patch") in granted


def test_runtime_doc_parser() -> None:
    """The parser reads both block styles (checked on a sample, independent of the real doc)."""
    sample = """
```yaml
rules:
  - apiGroups: [""]
    resources: ["pods"]
    verbs: ["get", "list"]
```
```yaml
- group: apps
  resource: deployments
  verbs: [patch]
- group: core
  resource: events
  verbs: [create]
```
"""
    assert parse_runtime_doc(sample) == {
        ("", "pods", "get"), ("", "pods", "list"), ("apps", "deployments", "patch"), ("", "events", "create")
    }


def test_service_account_is_what_the_bindings_name() -> None:
    docs = kustomize_build(MANIFESTS)
    sa = one(docs, "ServiceAccount")["metadata"]
    binding = one(docs, "ClusterRoleBinding")
    subject = {"kind": "ServiceAccount", "name": sa["name"], "namespace": sa["namespace"]}
    assert binding["subjects"] == [subject]
    assert binding["roleRef"]["name"] == one(docs, "ClusterRole")["metadata"]["name"]


