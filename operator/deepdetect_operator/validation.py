"""The quality gate, pure: a new digest -> a validation Job -> roll only when it passed.

It sits in front of the rollout state machine (rollout.py): `evaluate_gate` decides which digest the
rollout may see. While a candidate is validated, or after it failed, the rollout sees the digest it
already had, so the pod template never moves to an unproven checkpoint. Invariants:

- a digest is validated once: a failed candidate is not retried until the source resolves to another;
- the digest the Deployment already runs (or is rolling to) needs no Job (it passed before, or was there
  before validation was switched on);
- idempotent: fed its own output and an unchanged Job, it changes nothing and repeats no Event.

How the result comes back: `evaluate --termination-log /dev/termination-log` writes a compact JSON summary
(< 4 KiB) as the evaluate container's termination message; the kubelet copies it into the Pod's
`status.containerStatuses[].state.terminated.message`. The operator already lists Pods, so this needs no
write permission for the Job (a ConfigMap written by the Job would need a ServiceAccount token and RBAC in
every namespace) and survives until the Job is deleted with its Pods.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from .api import CandidateStatus, ModelStatus, ValidationMetrics

REASON_VALIDATION_FAILED = "ValidationFailed"
EVALUATE_CONTAINER = "evaluate"
LABEL_DIGEST = "deepdetect.io/candidate-digest"  # label value: hex prefix of the digest (63 chars max)
ANNOTATION_DIGEST = "deepdetect.io/candidate-digest"  # the whole digest, on the Job


@dataclass(frozen=True)
class GateInput:
    enabled: bool
    resolved_digest: str | None
    model: ModelStatus  # previous status.model
    rollout_target: str  # the digest the rollout runs or ran last ("" before the first)
    job: dict[str, Any] | None  # the live Job of the candidate (None: not created yet, or gone)
    job_pods: list[dict[str, Any]]
    job_name: str  # the name the candidate's Job has (or gets)
    now: str


@dataclass(frozen=True)
class GateOutcome:
    rollout_digest: str | None  # what the rollout state machine gets as the resolved digest
    candidate: CandidateStatus | None
    create_job: bool
    problem: tuple[str, str] | None  # (reason, message) -> Degraded
    validating: str | None  # a message while a Job runs
    event: tuple[str, str, str] | None


def evaluate_gate(inp: GateInput) -> GateOutcome:
    cand = inp.model.candidate
    digest = inp.resolved_digest
    serving = inp.model.digest or inp.rollout_target
    if not inp.enabled or not digest or digest == serving:
        # Nothing new to prove. A standing failure stays visible while the source still names that digest.
        failed = inp.enabled and cand is not None and cand.state == "Failed" and digest == cand.digest
        return GateOutcome(
            digest if not failed else None,
            cand,
            False,
            (REASON_VALIDATION_FAILED, cand.message) if failed and cand else None,
            None,
            None,
        )
    if cand is None or cand.digest != digest:
        new = CandidateStatus(
            digest=digest,
            state="Validating",
            job=inp.job_name,
            started_at=inp.now,
            message=f"validating {digest} in Job {inp.job_name}",
        )
        return GateOutcome(
            None, new, inp.job is None, None, new.message, ("Normal", "ValidationStarted", new.message)
        )
    if cand.state == "Passed":
        return GateOutcome(digest, cand, False, None, None, None)
    if cand.state == "Failed":
        return GateOutcome(None, cand, False, (REASON_VALIDATION_FAILED, cand.message), None, None)
    # Validating: read the Job.
    if inp.job is None:
        return GateOutcome(None, cand, True, None, cand.message, None)  # deleted meanwhile: create again
    finished = job_finished(inp.job)
    if finished is None:
        return GateOutcome(None, cand, False, None, cand.message, None)
    summary = termination_summary(inp.job_pods)
    metrics = metrics_of(summary)
    if finished == "Complete":
        msg = f"{digest} passed validation" + _metrics_text(metrics)
        done = cand.model_copy(update={"state": "Passed", "message": msg, "metrics": metrics})
        return GateOutcome(digest, done, False, None, None, ("Normal", "ValidationPassed", msg))
    why = (summary or {}).get("failed") or _job_failure(inp.job)
    msg = f"{REASON_VALIDATION_FAILED}: {digest}: {why}; keeping {serving or 'nothing'}"
    done = cand.model_copy(update={"state": "Failed", "message": msg, "metrics": metrics})
    return GateOutcome(
        None, done, False, (REASON_VALIDATION_FAILED, msg), None, ("Warning", REASON_VALIDATION_FAILED, msg)
    )


def job_finished(job: dict[str, Any]) -> str | None:
    """'Complete' or 'Failed' once the Job controller says so (condition True), else None."""
    for cond in (job.get("status") or {}).get("conditions") or []:
        if cond.get("status") == "True" and cond.get("type") in ("Complete", "Failed"):
            return str(cond["type"])
    return None


def _job_failure(job: dict[str, Any]) -> str:
    for cond in (job.get("status") or {}).get("conditions") or []:
        if cond.get("type") == "Failed" and cond.get("status") == "True":
            return f"the Job failed ({cond.get('reason') or 'Failed'}: {cond.get('message') or 'no message'})"
    return "the Job failed"


def termination_summary(pods: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The evaluate container's JSON termination message from the newest pod that has one."""
    found: list[tuple[str, dict[str, Any]]] = []
    for pod in pods:
        for cs in (pod.get("status") or {}).get("containerStatuses") or []:
            if cs.get("name") != EVALUATE_CONTAINER:
                continue
            term = (cs.get("state") or {}).get("terminated") or (cs.get("lastState") or {}).get("terminated")
            if not term or not term.get("message"):
                continue
            try:
                body = json.loads(term["message"])
            except (ValueError, TypeError):
                body = {"failed": str(term["message"]).strip().splitlines()[-1][:500]}
            if isinstance(body, dict):
                found.append((str(term.get("finishedAt") or ""), body))
    return max(found, key=lambda f: f[0])[1] if found else None


def metrics_of(summary: dict[str, Any] | None) -> ValidationMetrics | None:
    if not summary or not isinstance(summary.get("metrics"), dict):
        return None
    m = summary["metrics"]

    def num(key: str) -> float | None:
        v = m.get(key)
        return float(v) if isinstance(v, int | float) else None

    items = summary.get("items")
    return ValidationMetrics(
        auc=num("auc"),
        log_loss=num("log_loss"),
        accuracy=num("accuracy"),
        precision=num("precision"),
        recall=num("recall"),
        threshold=num("threshold"),
        items=items if isinstance(items, int) else None,
        dataset=str(summary.get("dataset") or "") or None,
    )


def _metrics_text(m: ValidationMetrics | None) -> str:
    if m is None:
        return ""
    parts = [
        f"{k} {v:.4f}"
        for k, v in (("auc", m.auc), ("log_loss", m.log_loss), ("recall", m.recall))
        if v is not None
    ]
    return f" ({', '.join(parts)})" if parts else ""


def jobs_to_delete(jobs: list[dict[str, Any]], keep: int, protect: str) -> list[dict[str, Any]]:
    """Finished validation Jobs beyond the newest `keep` (never the one named `protect`, never running)."""
    finished = [j for j in jobs if job_finished(j) is not None and j["metadata"]["name"] != protect]
    finished.sort(
        key=lambda j: (j["metadata"].get("creationTimestamp") or "", j["metadata"]["name"]), reverse=True
    )
    budget = max(0, keep - (1 if any(j["metadata"]["name"] == protect for j in jobs) else 0))
    return finished[budget:]
