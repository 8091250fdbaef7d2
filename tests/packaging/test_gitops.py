"""GitOps assets: the Argo CD health check (run for real in a Lua VM) and the Flux example.

Argo CD evaluates custom health checks with gopher-lua (Lua 5.1 semantics), so the script runs here in
lupa's Lua 5.1 runtime against table-driven DeepDetectService objects; the sample statuses are validated
with the operator's own status model so they stay the shapes the operator really writes.
"""

from __future__ import annotations

import copy
import re
from typing import Any

import helm_python
import jsonschema
import pytest
import yaml
from packaging_helpers import CHART_DIR, GITOPS, validate_strict

LUA = (GITOPS / "argocd-health.lua").read_text()
HEALTH_KEY = "resource.customizations.health.deepdetect.io_DeepDetectService"
ARGO_STATUSES = {"Healthy", "Progressing", "Degraded", "Suspended", "Missing", "Unknown"}
T0 = "2026-01-01T00:00:00Z"
DIGEST = "sha256:" + "ab" * 32


def cond(ctype: str, status: str, reason: str, message: str = "") -> dict[str, Any]:
    return {"type": ctype, "status": status, "reason": reason, "message": message, "lastTransitionTime": T0}


def dds(status: dict[str, Any] | None, generation: int = 2, **spec: Any) -> dict[str, Any]:
    obj: dict[str, Any] = {
        "apiVersion": "deepdetect.io/v1alpha1",
        "kind": "DeepDetectService",
        "metadata": {"name": "faces", "namespace": "trust-safety", "generation": generation},
        "spec": {"model": {"checkpoint": {"uri": "https://models.internal/b4.safetensors"}}, **spec},
    }
    if status is not None:
        obj["status"] = status
    return obj


READY = {
    "observedGeneration": 2,
    "phase": "Ready",
    "replicas": 2,
    "readyReplicas": 2,
    "conditions": [
        cond("Ready", "True", "Available", "2/2 replicas ready"),
        cond("Progressing", "False", "RolloutComplete"),
        cond("Degraded", "False", "AsExpected"),
        cond("CheckpointResolved", "True", "Resolved"),
    ],
    "model": {"uri": "https://models.internal/b4.safetensors", "digest": DIGEST},
}


def with_(base: dict[str, Any], **changes: Any) -> dict[str, Any]:
    out = copy.deepcopy(base)
    conditions = changes.pop("conditions", None)
    out.update(changes)
    if conditions is not None:
        by_type = {c["type"]: c for c in out["conditions"]}
        by_type.update({c["type"]: c for c in conditions})
        out["conditions"] = list(by_type.values())
    return out


CASES: list[tuple[str, dict[str, Any], str, str]] = [
    ("no status yet", dds(None), "Progressing", "Waiting for the DeepDetect operator"),
    ("spec not observed yet", dds(with_(READY, observedGeneration=1)), "Progressing", "generation 2"),
    ("ready", dds(READY), "Healthy", f"2/2 ready, serving {DIGEST}"),
    (
        "rollout failed",
        dds(with_(READY, phase="Degraded", conditions=[
            cond("Degraded", "True", "RolloutFailed", "progress deadline exceeded; rolled back")])),
        "Degraded",
        "RolloutFailed: progress deadline exceeded; rolled back",
    ),
    (
        "degraded condition wins over a Ready phase",
        dds(with_(READY, conditions=[cond("Degraded", "True", "SecretNotFound", "secret x missing")])),
        "Degraded",
        "SecretNotFound: secret x missing",
    ),
    ("failed phase", dds(with_(READY, phase="Failed")), "Degraded", "Phase Failed"),
    ("degraded, no condition", dds({"observedGeneration": 2, "phase": "Degraded"}), "Degraded", "Phase"),
    (
        "rolling a new checkpoint",
        dds(with_(READY, phase="Progressing", conditions=[
            cond("Progressing", "True", "NewCheckpoint", f"rolling to {DIGEST}")])),
        "Progressing",
        f"NewCheckpoint: rolling to {DIGEST}",
    ),
    ("pending", dds({"observedGeneration": 2, "phase": "Pending"}), "Progressing", "Waiting for ready"),
    (
        "ready phase but Ready condition false",
        dds(with_(READY, conditions=[cond("Ready", "False", "MinimumReplicasUnavailable", "0/2")])),
        "Progressing",
        "MinimumReplicasUnavailable: 0/2",
    ),
    (
        "scaled to zero",
        dds({"observedGeneration": 2, "phase": "Ready", "replicas": 0}, replicas=0,
            autoscaling={"enabled": False}),
        "Suspended",
        "Scaled to zero",
    ),
    ("unknown phase", dds({"observedGeneration": 2, "phase": "Sideways"}), "Unknown", "Sideways"),
]


def run_health(obj: dict[str, Any]) -> dict[str, str]:
    """Run the health script the way Argo CD does: the object as global `obj`, the script's return value."""
    from lupa import lua51

    lua = lua51.LuaRuntime(unpack_returned_tuples=True)
    lua.execute("os = nil; io = nil; require = nil; dofile = nil; loadfile = nil")  # Argo's sandbox has none
    lua.globals().obj = lua.table_from(obj, recursive=True)
    result = lua.execute(LUA)
    return {"status": result["status"], "message": result["message"]}


@pytest.mark.parametrize(("case", "obj", "status", "message"), CASES, ids=[c[0] for c in CASES])
def test_argocd_health(case: str, obj: dict[str, Any], status: str, message: str) -> None:
    health = run_health(obj)
    assert health["status"] == status, health
    assert health["status"] in ARGO_STATUSES
    assert message in health["message"], health


@pytest.mark.parametrize(("case", "obj"), [(c[0], c[1]) for c in CASES if "status" in c[1]])
def test_samples_are_real_operator_statuses(case: str, obj: dict[str, Any]) -> None:
    """The samples use the operator's status schema (phases, condition shape), except the deliberately
    unknown phase, so the health check is tested on what the operator writes."""
    from deepdetect_operator.api import DeepDetectServiceStatus
    from pydantic import ValidationError

    if obj["status"].get("phase") == "Sideways":
        with pytest.raises(ValidationError):
            DeepDetectServiceStatus.model_validate(obj["status"])
        return
    DeepDetectServiceStatus.model_validate(obj["status"])


def test_health_script_fits_argo_sandbox() -> None:
    """gopher-lua in Argo CD offers no os/io/require; the script must not need them."""
    code = "\n".join(line.split("--", 1)[0] for line in LUA.splitlines())
    for forbidden in ("os.", "io.", "require", "dofile", "loadfile", "goto"):
        assert forbidden not in code


def test_argocd_cm_patch_embeds_the_script() -> None:
    """The argocd-cm patch carries argocd-health.lua verbatim under the key Argo CD looks up
    (group_Kind), and is a valid ConfigMap."""
    patch = yaml.safe_load((GITOPS / "argocd-cm-patch.yaml").read_text())
    assert patch["metadata"] == {
        "name": "argocd-cm",
        "namespace": "argocd",
        "labels": {"app.kubernetes.io/name": "argocd-cm", "app.kubernetes.io/part-of": "argocd"},
    }
    assert set(patch["data"]) == {HEALTH_KEY}
    assert patch["data"][HEALTH_KEY] == LUA
    for version in ("1.29.0", "1.33.0"):
        validate_strict(patch, version)


def flux_docs() -> dict[str, dict[str, Any]]:
    docs = [d for d in yaml.safe_load_all((GITOPS / "flux-helmrelease.yaml").read_text()) if d]
    return {d["kind"]: d for d in docs}


def test_flux_example_shape() -> None:
    """HelmRepository (OCI) + HelmRelease pointing at it + a Kustomization that waits for the services,
    with the fields Flux requires (the Flux CRDs are not available offline, so the shape is checked)."""
    docs = flux_docs()
    assert set(docs) == {"HelmRepository", "HelmRelease", "Kustomization"}
    repo, release, kustomization = docs["HelmRepository"], docs["HelmRelease"], docs["Kustomization"]
    assert repo["apiVersion"] == "source.toolkit.fluxcd.io/v1"
    assert repo["spec"]["type"] == "oci" and repo["spec"]["url"].startswith("oci://")
    assert release["apiVersion"] == "helm.toolkit.fluxcd.io/v2"
    spec = release["spec"]
    assert re.fullmatch(r"\d+[smh]", spec["interval"])
    chart = spec["chart"]["spec"]
    ref = chart["sourceRef"]
    assert (ref["kind"], ref["name"], ref["namespace"]) == (
        "HelmRepository", repo["metadata"]["name"], repo["metadata"]["namespace"])
    with helm_python.Chart.load(CHART_DIR) as loaded:
        meta = loaded.metadata
    assert chart["chart"] == meta["name"]
    major, minor, _ = meta["version"].split(".")
    assert chart["version"] == f"{major}.{minor}.x", "the example tracks the chart's minor line"
    assert spec["targetNamespace"] == "deepdetect-system"
    assert spec["install"]["createNamespace"] is True
    assert kustomization["apiVersion"] == "kustomize.toolkit.fluxcd.io/v1"
    assert kustomization["spec"]["dependsOn"] == [{"name": release["metadata"]["name"]}]
    assert kustomization["spec"]["wait"] is True
    for key in ("interval", "path", "prune", "sourceRef"):
        assert key in kustomization["spec"]


def test_flux_values_are_valid_chart_values() -> None:
    """The values in the HelmRelease pass the chart's schema and render."""
    values = flux_docs()["HelmRelease"]["spec"]["values"]
    schema = yaml.safe_load((CHART_DIR / "values.schema.json").read_text())
    jsonschema.validate(values, schema)
    with helm_python.Chart.load(CHART_DIR) as chart:
        rendered = chart.render(values, name="deepdetect-operator", namespace="deepdetect-system")
    assert any("PrometheusRule" in text for text in rendered.values())


def _deployment(desired: int, ready: int, updated: int, *, deadline: bool = False) -> dict[str, Any]:
    progressing = {"type": "Progressing", "status": "True", "reason": "NewReplicaSetAvailable"}
    if deadline:
        progressing = {"type": "Progressing", "status": "False", "reason": "ProgressDeadlineExceeded"}
    return {
        "metadata": {"generation": 1},
        "spec": {"replicas": desired},
        "status": {
            "observedGeneration": 1,
            "replicas": max(desired, updated),
            "readyReplicas": ready,
            "updatedReplicas": updated,
            "availableReplicas": ready,
            "conditions": [
                {"type": "Available", "status": "True" if ready else "False"},
                progressing,
            ],
        },
    }


OPERATOR_SCENARIOS: list[tuple[str, dict[str, Any], str]] = [
    ("no Deployment yet", {"deployment": None}, "Progressing"),
    ("rolling out", {"deployment": _deployment(2, 1, 1)}, "Progressing"),
    ("all replicas ready", {"deployment": _deployment(2, 2, 2)}, "Healthy"),
    ("progress deadline, nothing ready", {"deployment": _deployment(1, 0, 1, deadline=True)}, "Degraded"),
    ("serving but a referenced Secret is missing", {"deployment": _deployment(1, 1, 1), "problem": (
        "SecretNotFound", "secret faces-creds not found")}, "Degraded"),
    # The quality gate: a candidate under validation while the old digest serves, and one that failed.
    ("serving, a candidate is validated", {"deployment": _deployment(2, 2, 2),
                                           "validating": "validating sha256:ab in Job faces-validate-ab"},
     "Progressing"),
    ("first checkpoint validated, nothing serves yet", {"deployment": None, "validating": "validating"},
     "Progressing"),
    ("serving, the candidate failed its gate", {"deployment": _deployment(2, 2, 2), "problem": (
        "ValidationFailed", "ValidationFailed: sha256:cd: gate --min-auc 0.9 failed")}, "Degraded"),
]


@pytest.mark.parametrize(
    ("case", "inputs", "health"), OPERATOR_SCENARIOS, ids=[c[0] for c in OPERATOR_SCENARIOS]
)
def test_argocd_health_of_operator_statuses(case: str, inputs: dict[str, Any], health: str) -> None:
    """The operator's own status computation (status.compute_status) produces the status; the health
    check must read it as an operator on call would."""
    from deepdetect_operator.api import DeepDetectServiceStatus
    from deepdetect_operator.status import (
        CheckpointResult,
        Problem,
        StatusInputs,
        compute_status,
        dump_status,
    )

    problem = Problem(*inputs["problem"]) if "problem" in inputs else None
    status = compute_status(StatusInputs(
        generation=2,
        previous=DeepDetectServiceStatus(),
        now=T0,
        selector="app.kubernetes.io/instance=faces",
        endpoint="http://faces.trust-safety.svc:80",
        deployment=inputs["deployment"],
        problem=problem,
        checkpoint=CheckpointResult(ok=True, message="resolved"),
        validating=inputs.get("validating"),
    ))
    result = run_health(dds(dump_status(status)))
    assert result["status"] == health, (dump_status(status), result)
