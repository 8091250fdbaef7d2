"""Least privilege: the operator's RBAC grants exactly the API calls it makes, no more, no less.

The reference list of calls comes from docs/operator-runtime.md (written by the runtime's authors,
machine-readable block) when it exists; until then from DESIGN.md, as the constant below. On top, the
children the real renderer produces for the shipped examples must all be creatable, and nothing may be
granted by wildcard. A missing verb shows up in a cluster as a 403 loop; an extra one is attack surface.
"""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path
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

# (apiGroup, resource) -> verbs: the calls the operator makes, as observed by
# test_rbac_equals_the_calls_the_running_operator_makes below (server-side apply = patch + create).
# DESIGN.md's first sketch also granted update on the CR, list/watch/patch/delete on Secrets, delete on
# every child, namespaces and kopf peerings; the running operator needs none of them (GC deletes the
# children; kopf runs standalone and cluster-wide, so it neither peers nor lists namespaces).
# The reference when docs/operator-runtime.md is absent; when present, the two must agree.
EXPECTED_CALLS: dict[tuple[str, str], set[str]] = {
    ("deepdetect.io", "deepdetectservices"): {"get", "list", "watch", "patch"},
    ("deepdetect.io", "deepdetectservices/status"): {"patch"},
    ("apps", "deployments"): {"get", "list", "watch", "create", "patch"},
    ("batch", "jobs"): {"get", "list", "watch", "create", "delete"},
    # list/watch on the children: the reconciler's read cache (readcache.py), fed by kopf's watches.
    ("", "services"): {"get", "list", "watch", "create", "patch"},
    ("", "configmaps"): {"get", "list", "watch", "create", "patch"},
    ("policy", "poddisruptionbudgets"): {"get", "list", "watch", "create", "patch"},
    ("autoscaling", "horizontalpodautoscalers"): {"get", "list", "watch", "create", "patch", "delete"},
    ("monitoring.coreos.com", "servicemonitors"): {"get", "create", "patch", "delete"},
    ("networking.k8s.io", "networkpolicies"): {"get", "list", "watch", "create", "patch", "delete"},
    ("", "secrets"): {"get", "create"},
    ("", "pods"): {"list", "watch"},
    ("", "events"): {"create"},
    ("apiextensions.k8s.io", "customresourcedefinitions"): {"list", "watch"},
}
# Calls the read cache (readcache.py) makes only on a miss: a CR read before its first watch event reached
# the cache (a child's event for a CR being deleted). A lifecycle never misses, a cluster can.
CACHE_FALLBACK_CALLS = {("deepdetect.io", "deepdetectservices", "get")}
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
    "NetworkPolicy": ("networking.k8s.io", "networkpolicies"),
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
    return {(g, r, v) for (g, r), verbs in EXPECTED_CALLS.items() for v in verbs}


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
    included): every child kind it can produce can be read and created (and applied, except the API-key
    Secret, which is created once and never written again), and the CR's status can be patched."""
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
        for verb in ("get", "create") if kind == "Secret" else ("get", "create", "patch"):
            assert (group, resource, verb) in granted, f"{kind}: {verb} not granted"
    assert ("deepdetect.io", "deepdetectservices/status", "patch") in granted


def test_runtime_doc_agrees_with_the_recorded_calls() -> None:
    """docs/operator-runtime.md's machine-readable block (the runtime authors' list) and this file's
    table (what the recording test sees) describe the same calls."""
    if not RUNTIME_DOC.exists():
        pytest.skip("docs/operator-runtime.md not written yet")
    table = {(g, r, v) for (g, r), verbs in EXPECTED_CALLS.items() for v in verbs}
    assert parse_runtime_doc(RUNTIME_DOC.read_text()) == table


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




# ---------------------------------------------------------------- the calls the running operator makes

OPERATOR_USER_AGENTS = ("kopf/", "deepdetect-operator/")
APPLY_CONTENT_TYPE = "application/apply-patch+yaml"


def classify(method: str, path: str, query: dict[str, str], content_type: str) -> set[tuple[str, str, str]]:
    """RBAC (apiGroup, resource, verb) triples a request needs; empty for discovery (`/api`, `/apis/g/v`),
    which every authenticated client may read. Server-side apply also needs `create` because the API
    server authorizes an apply that creates the object as a create."""
    parts = [p for p in path.split("/") if p]
    if parts[:1] == ["api"]:
        group, rest = "", parts[2:]
    elif parts[:1] == ["apis"]:
        group, rest = parts[1] if len(parts) > 1 else "", parts[3:]
    else:
        return set()
    if not rest:
        return set()
    if rest[0] == "namespaces" and len(rest) >= 3:
        rest = rest[2:]
    resource = rest[0] + (f"/{rest[2]}" if len(rest) > 2 else "")
    named = len(rest) > 1
    if method == "GET":
        verb = "get" if named else ("watch" if query.get("watch") in ("1", "true") else "list")
    else:
        verb = {"POST": "create", "PUT": "update", "PATCH": "patch"}.get(method, "")
        if method == "DELETE":
            verb = "delete" if named else "deletecollection"
    triples = {(group, resource, verb)}
    if method == "PATCH" and content_type.startswith(APPLY_CONTENT_TYPE):
        triples.add((group, resource, "create"))
    return triples


@pytest.mark.parametrize(
    ("method", "path", "query", "ctype", "expected"),
    [
        ("GET", "/apis", {}, "", set()),
        ("GET", "/apis/monitoring.coreos.com/v1", {}, "", set()),
        ("GET", "/api/v1/pods", {"watch": "true"}, "", {("", "pods", "watch")}),
        ("GET", "/api/v1/namespaces/a/pods", {}, "", {("", "pods", "list")}),
        ("GET", "/api/v1/namespaces", {}, "", {("", "namespaces", "list")}),
        ("PATCH", "/apis/apps/v1/namespaces/a/deployments/x", {}, APPLY_CONTENT_TYPE,
         {("apps", "deployments", "patch"), ("apps", "deployments", "create")}),
        ("PATCH", "/apis/deepdetect.io/v1alpha1/namespaces/a/deepdetectservices/x/status", {},
         "application/merge-patch+json", {("deepdetect.io", "deepdetectservices/status", "patch")}),
        ("DELETE", "/apis/autoscaling/v2/namespaces/a/horizontalpodautoscalers/x", {}, "",
         {("autoscaling", "horizontalpodautoscalers", "delete")}),
        ("POST", "/api/v1/namespaces/a/events", {}, "", {("", "events", "create")}),
    ],
)
def test_classify(method: str, path: str, query: dict[str, str], ctype: str, expected: set[Any]) -> None:
    assert classify(method, path, query, ctype) == expected


async def run_operator_lifecycle(tmp_path: Path) -> set[tuple[str, str, str]]:
    """The real operator (kopf + reconciler), configured as the shipped Deployment configures it
    (cluster-wide, standalone), against the project's kmock-based API server, through a CR's whole life:
    create with an API key, autoscaling and a ServiceMonitor; become available; a new checkpoint; features
    switched off; a missed progress deadline (rollback, Events); validation Jobs for two new digests (one
    failed, then pruned); deletion. Returns what it called."""
    import asyncio

    import aiohttp
    import kmock

    if str(ROOT / "tests") not in sys.path:
        sys.path.append(str(ROOT / "tests"))  # tests/kube_emulator.py (appended: nothing is shadowed)
    from deepdetect_operator import naming
    from deepdetect_operator.reconcile import OperatorConfig
    from deepdetect_operator.runtime import build_memo, run_operator
    from kube_emulator import make_emulator

    ns, name = "rbac", "faces"
    crs = "deepdetect.io/v1alpha1/deepdetectservices"
    deployments = "apps/v1/deployments"
    cr_url = f"/apis/deepdetect.io/v1alpha1/namespaces/{ns}/deepdetectservices"
    checkpoint = tmp_path / "model.safetensors"
    checkpoint.write_bytes(b"first checkpoint bytes")
    config = OperatorConfig(tick_seconds=0.25, resync_seconds=1.0, liveness="", metrics_port=0,
                            watch_server_timeout_s=30, watch_client_timeout_s=40, resolve_timeout_s=3.0)
    assert config.namespaces == () and config.peering == "", "as the shipped Deployment runs it"

    async def until(check: Any, what: str) -> None:
        deadline = asyncio.get_running_loop().time() + 20.0
        while not check():
            assert asyncio.get_running_loop().time() < deadline, f"timed out: {what}"
            await asyncio.sleep(0.05)

    async def set_deployment_status(available: bool) -> None:
        dep = emu.stored(deployments, ns, naming.deployment_name(name))
        assert dep is not None
        progressing = ("True", "NewReplicaSetAvailable")
        if not available:
            progressing = ("False", "ProgressDeadlineExceeded")
        await emu.set_status(deployments, ns, dep["metadata"]["name"], {
            "observedGeneration": dep["metadata"]["generation"],
            "replicas": 1, "updatedReplicas": 1,
            "readyReplicas": 1 if available else 0, "availableReplicas": 1 if available else 0,
            "conditions": [
                {"type": "Available", "status": "True" if available else "False", "reason": "x"},
                {"type": "Progressing", "status": progressing[0], "reason": progressing[1]},
            ],
        })

    def phase() -> str:
        return ((emu.stored(crs, ns, name) or {}).get("status") or {}).get("phase", "")

    emu = make_emulator(service_monitor=True, namespaces=(ns,))
    async with emu, kmock.Server(emu) as server:
        kubeconfig = tmp_path / "kubeconfig"
        kubeconfig.write_text(yaml.safe_dump({
            "apiVersion": "v1", "kind": "Config", "current-context": "emu",
            "clusters": [{"name": "emu", "cluster": {"server": str(server.url).rstrip("/")}}],
            "users": [{"name": "emu", "user": {"token": "t"}}],
            "contexts": [{"name": "emu", "context": {"cluster": "emu", "user": "emu"}}],
        }))
        os.environ["KUBECONFIG"] = str(kubeconfig)
        stop, ready = asyncio.Event(), asyncio.Event()
        operator = run_operator(config, memo=build_memo(config), stop_flag=stop, ready_flag=ready)
        task = asyncio.create_task(operator)
        try:
            await asyncio.wait_for(ready.wait(), 20)
            async with aiohttp.ClientSession(base_url=str(server.url)) as http:
                spec = {
                    "model": {"architecture": "test_efficientnet", "inputSize": 160, "precision": "fp32",
                              "checkpoint": {"uri": f"file://{checkpoint}", "pollInterval": "0"}},
                    "resources": {"gpus": 0, "cpu": "1", "memory": "1Gi"},
                    "autoscaling": {"enabled": True, "minReplicas": 1, "maxReplicas": 3},
                    "monitoring": {"serviceMonitor": True},
                    "networkPolicy": {"enabled": True},
                }
                cr = {"apiVersion": "deepdetect.io/v1alpha1", "kind": "DeepDetectService",
                      "metadata": {"name": name, "namespace": ns}, "spec": spec}
                assert (await http.post(cr_url, json=cr)).status == 201
                await until(lambda: emu.stored(deployments, ns, naming.deployment_name(name)), "deployment")
                await set_deployment_status(available=True)
                await until(lambda: phase() == "Ready", "Ready")
                checkpoint.write_bytes(b"second checkpoint bytes, different digest")
                patch = {"spec": {"autoscaling": {"enabled": False}, "monitoring": {"serviceMonitor": False},
                                  "networkPolicy": {"enabled": False}, "replicas": 2}}
                resp = await http.patch(f"{cr_url}/{name}", json=patch,
                                        headers={"Content-Type": "application/merge-patch+json"})
                assert resp.status == 200
                await until(lambda: emu.stored("autoscaling/v2/horizontalpodautoscalers", ns, name) is None,
                            "HPA deleted")
                await until(lambda: emu.stored("networking.k8s.io/v1/networkpolicies", ns, name) is None,
                            "NetworkPolicy deleted")
                await set_deployment_status(available=False)
                await until(lambda: phase() in ("Degraded", "Failed"), "rollout failure noticed")
                # The quality gate: a validation Job per new digest, read back, the old one pruned.
                jobs = "batch/v1/jobs"

                def candidate() -> dict[str, Any]:
                    status = (emu.stored(crs, ns, name) or {}).get("status") or {}
                    return (status.get("model") or {}).get("candidate") or {}

                async def new_digest(validation: dict[str, Any]) -> dict[str, Any]:
                    before = candidate().get("job")
                    checkpoint.write_bytes(f"checkpoint bytes {validation}".encode())
                    resp = await http.patch(f"{cr_url}/{name}", json={"spec": {"rollout": {
                        "validation": validation}}}, headers={"Content-Type": "application/merge-patch+json"})
                    assert resp.status == 200
                    await until(lambda: candidate().get("job") not in (None, before)
                                and emu.stored(jobs, ns, candidate()["job"]), "validation Job")
                    return dict(emu.stored(jobs, ns, candidate()["job"]))

                gate = {"datasetUri": "https://data.example/set.safetensors", "historyLimit": 1}
                first = await new_digest(gate)
                await emu.set_status(jobs, ns, first["metadata"]["name"], {"failed": 1, "conditions": [
                    {"type": "Failed", "status": "True", "reason": "BackoffLimitExceeded"}]})
                await until(lambda: candidate().get("state") == "Failed", "validation failure noticed")
                await new_digest({**gate, "timeoutSeconds": 900})
                await until(lambda: emu.stored(jobs, ns, first["metadata"]["name"]) is None, "old Job pruned")
                assert (await http.delete(f"{cr_url}/{name}")).status == 200
                await until(lambda: emu.stored(crs, ns, name) is None, "CR finalized")
        finally:
            stop.set()
            try:
                await asyncio.wait_for(task, 20)
            except (TimeoutError, asyncio.CancelledError):
                task.cancel()
        calls: set[tuple[str, str, str]] = set()
        for req in emu.recorded:
            headers = {k.lower(): v for k, v in dict(req.headers).items()}
            if not headers.get("user-agent", "").startswith(OPERATOR_USER_AGENTS):
                continue
            query = {k: v for k, v in req.url.query.items()} if hasattr(req.url, "query") else {}
            calls |= classify(req.method.value, req.url.path, query, headers.get("content-type", ""))
        return calls


@pytest.mark.timeout(120)
@pytest.mark.filterwarnings("ignore::DeprecationWarning:kmock.*")
async def test_rbac_equals_the_calls_the_running_operator_makes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Record every request the real operator sends during a CR's life and compare with the ClusterRole:
    a call without a rule would be a 403 in a cluster; a rule without a call is privilege nobody uses."""
    monkeypatch.setenv("KUBECONFIG", "")  # restored after the test; the lifecycle points it at the emulator
    dep = one(kustomize_build(MANIFESTS), "Deployment")
    ctr = dep["spec"]["template"]["spec"]["containers"][0]
    assert "args" not in ctr and "command" not in ctr, "the lifecycle runs the operator with default flags"
    observed = await run_operator_lifecycle(tmp_path)
    granted = rules_set(cluster_roles()["kustomize"])
    assert observed - granted == set(), f"called but not granted (a 403): {sorted(observed - granted)}"
    unused = granted - observed - CACHE_FALLBACK_CALLS
    assert unused == set(), f"granted but never called: {sorted(unused)}"
