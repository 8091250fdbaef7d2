"""status.py: phase and conditions from the Deployment's real status, table-driven."""

from __future__ import annotations

from typing import Any

import pytest
from deepdetect_operator.api import DeepDetectServiceStatus
from deepdetect_operator.status import (
    CheckpointResult,
    Problem,
    StatusInputs,
    compute_status,
    degraded_transition,
    deployment_view,
    get_condition,
    parse_status,
    set_condition,
    status_patch,
)

T0 = "2026-01-01T00:00:00Z"
T1 = "2026-01-01T00:05:00Z"


def dep(
    *,
    replicas: int | None = 2,
    generation: int = 1,
    observed: int | None = 1,
    status_replicas: int = 2,
    ready: int = 2,
    updated: int = 2,
    available: int = 2,
    available_cond: str = "True",
    progressing_reason: str = "NewReplicaSetAvailable",
    progressing_status: str = "True",
) -> dict[str, Any]:
    spec: dict[str, Any] = {} if replicas is None else {"replicas": replicas}
    status: dict[str, Any] = {
        "replicas": status_replicas,
        "readyReplicas": ready,
        "updatedReplicas": updated,
        "availableReplicas": available,
        "conditions": [
            {"type": "Available", "status": available_cond},
            {"type": "Progressing", "status": progressing_status, "reason": progressing_reason},
        ],
    }
    if observed is not None:
        status["observedGeneration"] = observed
    return {"metadata": {"generation": generation}, "spec": spec, "status": status}


def inputs(**kw: Any) -> StatusInputs:
    base: dict[str, Any] = {
        "generation": 3,
        "previous": DeepDetectServiceStatus(),
        "now": T0,
        "selector": "app.kubernetes.io/instance=x,app.kubernetes.io/name=deepdetect-server",
        "endpoint": "http://x.ns.svc:80",
    }
    base.update(kw)
    return StatusInputs(**base)


def cond(status: DeepDetectServiceStatus, type_: str) -> tuple[str, str]:
    c = get_condition(status, type_)
    assert c is not None
    return c.status, c.reason


@pytest.mark.parametrize(
    ("deployment", "problem", "phase", "ready", "progressing", "degraded"),
    [
        (None, None, "Pending", ("False", "DeploymentMissing"), ("False", "DeploymentMissing"), "False"),
        (dep(), None, "Ready", ("True", "ReplicasAvailable"), ("False", "RolloutComplete"), "False"),
        (  # mid-rollout: old replicas answer (Ready condition), the phase says it is not done
            dep(ready=1, available=1, updated=1, status_replicas=2),
            None,
            "Progressing",
            ("True", "ReplicasAvailable"),
            ("True", "RollingOut"),
            "False",
        ),
        (  # nothing available yet
            dep(ready=0, available=0, updated=1, status_replicas=1, available_cond="False"),
            None,
            "Progressing",
            ("False", "ReplicasUnavailable"),
            ("True", "RollingOut"),
            "False",
        ),
        (  # the controller has not seen the new template yet: not done, whatever the counts say
            dep(generation=2, observed=1),
            None,
            "Progressing",
            ("True", "ReplicasAvailable"),
            ("True", "RollingOut"),
            "False",
        ),
        (  # old replicas still around (surge): not complete
            dep(status_replicas=3, updated=2),
            None,
            "Progressing",
            ("True", "ReplicasAvailable"),
            ("True", "RollingOut"),
            "False",
        ),
        (
            dep(updated=1, progressing_reason="ProgressDeadlineExceeded", progressing_status="False"),
            None,
            "Degraded",
            ("True", "ReplicasAvailable"),
            ("False", "ProgressDeadlineExceeded"),
            "True",
        ),
        (
            dep(
                ready=0,
                available=0,
                available_cond="False",
                progressing_reason="ProgressDeadlineExceeded",
                progressing_status="False",
            ),
            None,
            "Failed",
            ("False", "ReplicasUnavailable"),
            ("False", "ProgressDeadlineExceeded"),
            "True",
        ),
        (
            None,
            Problem("SecretNotFound", "secret x not found"),
            "Degraded",
            ("False", "DeploymentMissing"),
            ("False", "DeploymentMissing"),
            "True",
        ),
        (
            dep(),
            Problem("InvalidSpec", "spec.x: bad"),
            "Degraded",
            ("True", "ReplicasAvailable"),
            ("False", "RolloutComplete"),
            "True",
        ),
        (
            dep(replicas=None, status_replicas=2),
            None,
            "Ready",
            ("True", "ReplicasAvailable"),
            ("False", "RolloutComplete"),
            "False",
        ),  # HPA owns replicas
        (
            dep(replicas=0, status_replicas=0, ready=0, updated=0, available=0, available_cond="True"),
            None,
            "Ready",
            ("True", "ReplicasAvailable"),
            ("False", "RolloutComplete"),
            "False",
        ),  # scaled to zero
    ],
)
def test_phase_and_conditions(
    deployment: dict[str, Any] | None,
    problem: Problem | None,
    phase: str,
    ready: tuple[str, str],
    progressing: tuple[str, str],
    degraded: str,
) -> None:
    status = compute_status(inputs(deployment=deployment, problem=problem))
    assert status.phase == phase
    assert cond(status, "Ready") == ready
    assert cond(status, "Progressing") == progressing
    assert cond(status, "Degraded")[0] == degraded
    assert [c.type for c in status.conditions] == ["Ready", "Progressing", "Degraded", "CheckpointResolved"]
    assert status.observed_generation == 3
    assert status.selector.startswith("app.kubernetes.io/instance=x")


def test_replica_counts_come_from_deployment_status() -> None:
    status = compute_status(inputs(deployment=dep(status_replicas=3, ready=1, updated=1, available=1)))
    assert (status.replicas, status.ready_replicas) == (3, 1)


def test_last_transition_time_moves_only_on_transition() -> None:
    first = compute_status(inputs(deployment=dep(ready=0, available=0, available_cond="False")))
    assert get_condition(first, "Ready").last_transition_time == T0  # type: ignore[union-attr]
    same = compute_status(
        inputs(previous=first, now=T1, deployment=dep(ready=1, available=1, available_cond="False"))
    )
    ready = get_condition(same, "Ready")
    assert ready is not None and ready.status == "False" and ready.last_transition_time == T0
    assert ready.message.startswith("1/2")  # message follows, the time does not
    flipped = compute_status(inputs(previous=same, now=T1, deployment=dep()))
    assert get_condition(flipped, "Ready").last_transition_time == T1  # type: ignore[union-attr]


def test_checkpoint_condition() -> None:
    unknown = compute_status(inputs(deployment=dep()))
    assert cond(unknown, "CheckpointResolved") == ("Unknown", "NotResolved")
    ok = compute_status(inputs(previous=unknown, checkpoint=CheckpointResult(True, "sha256:ab")))
    assert cond(ok, "CheckpointResolved") == ("True", "Resolved")
    kept = compute_status(inputs(previous=ok))  # nothing attempted this time: unchanged
    assert get_condition(kept, "CheckpointResolved") == get_condition(ok, "CheckpointResolved")
    bad = compute_status(inputs(previous=ok, now=T1, checkpoint=CheckpointResult(False, "HTTP 404")))
    c = get_condition(bad, "CheckpointResolved")
    assert c is not None and (c.status, c.reason, c.message, c.last_transition_time) == (
        "False",
        "ResolveFailed",
        "HTTP 404",
        T1,
    )


def test_idempotent_status_gives_no_patch() -> None:
    first = compute_status(inputs(deployment=dep(), checkpoint=CheckpointResult(True, "sha256:ab")))
    stored = {**first.model_dump(by_alias=True, mode="json", exclude_none=True), "kopf": {"x": 1}}
    again = compute_status(inputs(previous=parse_status(stored), now=T1, deployment=dep()))
    assert status_patch(stored, again) is None
    changed = compute_status(inputs(previous=parse_status(stored), now=T1, deployment=dep(ready=1)))
    patch = status_patch(stored, changed)
    assert patch is not None and patch["readyReplicas"] == 1 and "kopf" not in patch


def test_parse_status_tolerates_foreign_and_broken_fields() -> None:
    parsed = parse_status({"phase": "Ready", "replicas": "many", "kopf": {}, "conditions": "bad"})
    assert parsed.phase == "Ready" and parsed.replicas == 0 and parsed.conditions == []


def test_degraded_transition_fires_once_per_reason() -> None:
    calm = compute_status(inputs(deployment=dep()))
    bad = compute_status(inputs(previous=calm, problem=Problem("SecretNotFound", "x")))
    assert degraded_transition(calm, bad) is not None
    still = compute_status(inputs(previous=bad, problem=Problem("SecretNotFound", "x")))
    assert degraded_transition(bad, still) is None
    other = compute_status(inputs(previous=still, problem=Problem("InvalidSpec", "y")))
    t = degraded_transition(still, other)
    assert t is not None and t.reason == "InvalidSpec"


def test_set_condition_keeps_others_and_order() -> None:
    conds = set_condition([], "Degraded", "False", "AsExpected", "", now=T0, generation=1)
    conds = set_condition(conds, "Ready", "True", "ReplicasAvailable", "", now=T0, generation=1)
    assert [c.type for c in conds] == ["Ready", "Degraded"]


def test_deployment_view_none() -> None:
    assert deployment_view(None) is None
    assert deployment_view({}) is None
