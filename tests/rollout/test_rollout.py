"""Table-driven tests of the pure rollout state machine: one row per transition."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pytest
from deepdetect_operator.api import ANNOTATION_CHECKPOINT_DIGEST, ModelStatus, RolloutStatus
from deepdetect_operator.rollout import RolloutInput, RolloutOutcome, evaluate_rollout

A = "sha256:" + "a" * 64  # last good
B = "sha256:" + "b" * 64  # new
C = "etag:cccc"  # a later one
NOW = "2026-11-27T08:00:00Z"
EARLIER = "2026-11-27T07:00:00Z"


def deployment(
    digest: str,
    *,
    replicas: int | None = 2,
    updated: int = 2,
    available: int = 2,
    unavailable: int = 0,
    total: int | None = None,
    generation: int = 3,
    observed: int = 3,
    deadline: bool = False,
) -> dict[str, Any]:
    spec: dict[str, Any] = {"template": {"metadata": {"annotations": {ANNOTATION_CHECKPOINT_DIGEST: digest}}}}
    if replicas is not None:
        spec["replicas"] = replicas
    status: dict[str, Any] = {
        "observedGeneration": observed,
        "updatedReplicas": updated,
        "availableReplicas": available,
        "unavailableReplicas": unavailable,
        "replicas": total if total is not None else updated,
        "conditions": [],
    }
    if deadline:
        status["conditions"].append(
            {"type": "Progressing", "status": "False", "reason": "ProgressDeadlineExceeded"}
        )
    return {"metadata": {"name": "d", "generation": generation}, "spec": spec, "status": status}


def pod(digest: str, *, init: dict[str, Any] | None = None, main: dict[str, Any] | None = None) -> dict:
    status: dict[str, Any] = {}
    if init is not None:
        status["initContainerStatuses"] = [{"name": "fetch", **init}]
    if main is not None:
        status["containerStatuses"] = [{"name": "server", **main}]
    return {"metadata": {"name": f"p-{digest[-4:]}", "annotations": {ANNOTATION_CHECKPOINT_DIGEST: digest}},
            "status": status}


FETCH_MISMATCH = "fetch: sha256 mismatch: expected bbbb.., got 1234..; refusing checkpoint"
FETCH_CRASHLOOP = {
    "restartCount": 3,
    "state": {"waiting": {"reason": "CrashLoopBackOff"}},
    "lastState": {"terminated": {"exitCode": 1, "reason": "Error", "message": FETCH_MISMATCH + "\n"}},
}
SERVER_CRASHLOOP = {
    "restartCount": 4,
    "ready": False,
    "state": {"waiting": {"reason": "CrashLoopBackOff"}},
    "lastState": {"terminated": {"exitCode": 2, "reason": "Error"}},
}

PROGRESSING_B = RolloutStatus(target_digest=B, started_at=EARLIER, state="Progressing", message="rolling out")
FAILED_B = RolloutStatus(
    target_digest=B, started_at=EARLIER, state="Failed",
    message=f"CheckpointFetchFailed: pod x: {FETCH_MISMATCH}; rolled back to {A}",
)
COMPLETE_A = RolloutStatus(target_digest=A, started_at=EARLIER, state="Complete", message="ok")
MODEL_A = ModelStatus(uri="u", digest=A, resolved_at=EARLIER, last_good_digest=A)
MODEL_B = ModelStatus(uri="u", digest=B, resolved_at=EARLIER, last_good_digest=A)


@dataclass
class Row:
    id: str
    resolved: str | None
    model: ModelStatus
    rollout: RolloutStatus
    deployment: dict[str, Any] | None
    pods: list[dict[str, Any]] = field(default_factory=list)
    auto_rollback: bool = True
    # expectations
    template: str = ""
    state: str = ""
    target: str | None = None
    last_good: str | None = None
    model_digest: str | None = None
    degraded: str | None = None
    event: tuple[str, str] | str | None = "any"  # (type, reason); "any" = not checked
    message_has: str = ""


ROWS = [
    Row("resolver error keeps the running digest", None, MODEL_A, COMPLETE_A, deployment(A),
        template=A, state="Complete", model_digest=A),
    Row("resolver error with empty status keeps the Deployment's annotation", None, ModelStatus(),
        RolloutStatus(), deployment(A), template=A, state=""),
    Row("resolver error before anything resolved renders no digest", None, ModelStatus(), RolloutStatus(),
        None,
        template="", state="", message_has="no checkpoint digest"),
    Row("first deploy starts the initial rollout", A, ModelStatus(), RolloutStatus(), None,
        template=A, state="Progressing", target=A, model_digest=A, last_good="",
        event=("Normal", "RolloutStarted")),
    Row("first deploy completes and sets lastGoodDigest", A,
        ModelStatus(digest=A), RolloutStatus(target_digest=A, state="Progressing"), deployment(A),
        template=A, state="Complete", last_good=A, event=("Normal", "RolloutComplete")),
    Row("unchanged digest after completion changes nothing", A, MODEL_A, COMPLETE_A, deployment(A),
        template=A, state="Complete", event=None),
    Row("new digest starts a rollout", B, MODEL_A, COMPLETE_A, deployment(A),
        template=B, state="Progressing", target=B, model_digest=B, last_good=A,
        event=("Normal", "RolloutStarted"), message_has=f"(was {A})"),
    Row("pin change rolls", "sha256:" + "d" * 64, MODEL_A, COMPLETE_A, deployment(A),
        template="sha256:" + "d" * 64, state="Progressing", event=("Normal", "RolloutStarted")),
    Row("progressing waits while the controller has not observed the template", B, MODEL_B, PROGRESSING_B,
        deployment(B, generation=4, observed=3), template=B, state="Progressing", event=None),
    Row("progressing waits while old pods remain", B, MODEL_B, PROGRESSING_B,
        deployment(B, updated=2, available=2, total=3), template=B, state="Progressing", event=None),
    Row("progressing waits while new pods are unavailable", B, MODEL_B, PROGRESSING_B,
        deployment(B, updated=2, available=1, unavailable=1), template=B, state="Progressing",
        message_has="1/2 available"),
    Row("progressing waits while the Deployment still has the old template", B, MODEL_B, PROGRESSING_B,
        deployment(A, deadline=True), template=B, state="Progressing", event=None),
    Row("progressing -> complete sets lastGoodDigest", B, MODEL_B, PROGRESSING_B, deployment(B),
        template=B, state="Complete", last_good=B, event=("Normal", "RolloutComplete")),
    Row("complete without spec.replicas (HPA) uses status.replicas", B, MODEL_B, PROGRESSING_B,
        deployment(B, replicas=None, updated=3, available=3), template=B, state="Complete", last_good=B),
    Row("scaled to zero stays progressing", B, MODEL_B, PROGRESSING_B,
        deployment(B, replicas=0, updated=0, available=0), template=B, state="Progressing"),
    Row("resolver error does not stop tracking the rollout", None, MODEL_B, PROGRESSING_B, deployment(B),
        template=B, state="Complete", last_good=B),
    Row("deadline exceeded rolls back to the last good digest", B, MODEL_B, PROGRESSING_B,
        deployment(B, updated=1, available=0, unavailable=2, deadline=True),
        template=A, state="Failed", target=B, model_digest=B, last_good=A, degraded="RolloutFailed",
        event=("Warning", "RolloutFailed"), message_has=f"rolled back to {A}"),
    Row("deadline exceeded without autoRollback keeps the target", B, MODEL_B, PROGRESSING_B,
        deployment(B, updated=1, available=0, unavailable=2, deadline=True), auto_rollback=False,
        template=B, state="Failed", degraded="RolloutFailed", event=("Warning", "RolloutFailed"),
        message_has="autoRollback is off"),
    Row("first deploy failing has nothing to roll back to", A, ModelStatus(digest=A),
        RolloutStatus(target_digest=A, state="Progressing"), deployment(A, available=0, deadline=True),
        template=A, state="Failed", last_good="", degraded="RolloutFailed",
        message_has="no last good checkpoint"),
    Row("fetch init container crash loop -> CheckpointFetchFailed with its message", B, MODEL_B,
        PROGRESSING_B, deployment(B, available=0, unavailable=2), pods=[pod(B, init=FETCH_CRASHLOOP)],
        template=A, state="Failed", degraded="CheckpointFetchFailed",
        event=("Warning", "CheckpointFetchFailed"), message_has="sha256 mismatch"),
    Row("fetch init failure beats the deadline as the reason", B, MODEL_B, PROGRESSING_B,
        deployment(B, available=0, deadline=True), pods=[pod(B, init=FETCH_CRASHLOOP)],
        template=A, state="Failed", degraded="CheckpointFetchFailed"),
    Row("fetch init error with few restarts is still waiting", B, MODEL_B, PROGRESSING_B,
        deployment(B, available=0, unavailable=2),
        pods=[pod(B, init={"restartCount": 1, "state": {"terminated": {"exitCode": 1}}})],
        template=B, state="Progressing"),
    Row("server crash loop on the new template -> RolloutFailed", B, MODEL_B, PROGRESSING_B,
        deployment(B, available=0, unavailable=2), pods=[pod(B, main=SERVER_CRASHLOOP)],
        template=A, state="Failed", degraded="RolloutFailed", message_has="CrashLoopBackOff"),
    Row("image pull backoff -> RolloutFailed", B, MODEL_B, PROGRESSING_B,
        deployment(B, available=0, unavailable=2),
        pods=[pod(B, init={"restartCount": 0, "state": {"waiting": {"reason": "ImagePullBackOff"}}})],
        template=A, state="Failed", degraded="RolloutFailed"),
    Row("crash loop of an old-template pod is ignored", B, MODEL_B, PROGRESSING_B,
        deployment(B, available=1, unavailable=1), pods=[pod(A, main=SERVER_CRASHLOOP)],
        template=B, state="Progressing"),
    Row("restarted but now ready is not a failure", B, MODEL_B, PROGRESSING_B,
        deployment(B, available=1, unavailable=1),
        pods=[pod(B, main={"restartCount": 5, "ready": True, "state": {"running": {}}})],
        template=B, state="Progressing"),
    Row("failed digest is not retried", B, MODEL_B, FAILED_B, deployment(A),
        template=A, state="Failed", target=B, degraded="CheckpointFetchFailed", event=None,
        message_has=f"rolled back to {A}"),
    Row("failed digest is not retried after a resolver error either", None, MODEL_B, FAILED_B,
        deployment(A), template=A, state="Failed", degraded="CheckpointFetchFailed", event=None),
    Row("a later new digest is tried again", C, MODEL_B, FAILED_B, deployment(A),
        template=C, state="Progressing", target=C, model_digest=C, last_good=A,
        event=("Normal", "RolloutStarted")),
    Row("source back at the last good digest completes at once", A, MODEL_B, FAILED_B, deployment(A),
        template=A, state="Complete", target=A, model_digest=A, last_good=A,
        event=("Normal", "RolloutComplete")),
    Row("failed without rollback recovers when the pods come up after all", B, MODEL_B,
        FAILED_B.model_copy(update={"message": "RolloutFailed: x; keeping b"}), deployment(B),
        auto_rollback=False, template=B, state="Complete", last_good=B, event=("Normal", "RolloutComplete")),
    Row("new digest mid-rollout supersedes the target", C, MODEL_B, PROGRESSING_B,
        deployment(B, available=1, unavailable=1), template=C, state="Progressing", target=C, last_good=A),
]


def evaluate(row: Row) -> RolloutOutcome:
    return evaluate_rollout(
        RolloutInput(
            resolved_digest=row.resolved,
            model=row.model,
            rollout=row.rollout,
            deployment=row.deployment,
            pods=row.pods,
            auto_rollback=row.auto_rollback,
            now=NOW,
        )
    )


@pytest.mark.parametrize("row", ROWS, ids=[r.id for r in ROWS])
def test_transition(row: Row) -> None:
    out = evaluate(row)
    assert out.template_digest == row.template
    assert out.rollout.state == row.state
    if row.target is not None:
        assert out.rollout.target_digest == row.target
    if row.last_good is not None:
        assert out.model.last_good_digest == row.last_good
    if row.model_digest is not None:
        assert out.model.digest == row.model_digest
    assert out.degraded_reason == row.degraded
    if row.event != "any":
        assert (out.event[:2] if out.event else None) == row.event
    assert row.message_has in out.message
    if out.rollout.state == "Failed":
        assert row.message_has in out.rollout.message


@pytest.mark.parametrize("row", ROWS, ids=[r.id for r in ROWS])
def test_idempotent(row: Row) -> None:
    """Fed its own status back with the same cluster, the machine settles: no Event, same template."""
    first = evaluate(row)
    again = evaluate(Row(row.id, row.resolved, first.model, first.rollout, row.deployment, row.pods,
                         row.auto_rollback))
    assert again.event is None
    assert again.template_digest == first.template_digest
    assert again.model == first.model
    assert again.rollout == first.rollout
    assert again.degraded_reason == first.degraded_reason


def test_new_digest_records_resolution_time_only_on_change() -> None:
    out = evaluate(Row("x", B, MODEL_A, COMPLETE_A, deployment(A)))
    assert out.model.resolved_at == NOW
    assert out.rollout.started_at == NOW
    same = evaluate(Row("x", A, MODEL_A, COMPLETE_A, deployment(A)))
    assert same.model.resolved_at == EARLIER


def test_full_story_fail_rollback_then_new_digest_succeeds() -> None:
    """first deploy -> complete -> bad digest -> rollback -> not retried -> good digest -> complete."""
    model, rollout = ModelStatus(), RolloutStatus()

    def step(resolved: str | None, dep: dict | None, pods: list | None = None) -> RolloutOutcome:
        nonlocal model, rollout
        out = evaluate(Row("s", resolved, model, rollout, dep, pods or []))
        model, rollout = out.model, out.rollout
        return out

    assert step(A, None).template_digest == A
    assert step(A, deployment(A)).rollout.state == "Complete"
    assert step(B, deployment(A)).template_digest == B
    failed = step(B, deployment(B, available=0, deadline=True))
    assert (failed.rollout.state, failed.template_digest, failed.event[1]) == ("Failed", A, "RolloutFailed")
    assert step(B, deployment(A)).template_digest == A  # not retried
    assert step(C, deployment(A)).template_digest == C  # a different digest is tried
    done = step(C, deployment(C))
    assert (done.rollout.state, done.model.last_good_digest) == ("Complete", C)


def test_new_digest_after_rollback_names_what_runs_now() -> None:
    out = evaluate(Row("x", C, MODEL_B, FAILED_B, deployment(A)))
    assert out.event is not None and out.event[2] == f"rolling out checkpoint {C} (was {A})"
