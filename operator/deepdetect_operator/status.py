"""A DeepDetectService's status, computed from what the cluster shows: pure, no I/O.

The reconciler gathers facts (the live Deployment as the API server returns it, the problem that stopped
it, the checkpoint resolution, the rollout verdict) and `compute_status` turns them into
`DeepDetectServiceStatus`. Nothing here trusts "we sent it": the phase is Ready when the Deployment controller
reports the current generation fully rolled out and available; the Ready condition says whether the service
answers at all (Deployment `Available` and at least one available replica), so during a rollout or a failed
one it can be True while the phase is Progressing or Degraded, like a Deployment's own conditions.
Conditions follow `metav1.Condition`: `lastTransitionTime` moves only when a condition's status flips,
so a resync with nothing new produces an identical status and the reconciler writes nothing.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError

from deepdetect_operator.api import (
    Condition,
    DeepDetectServiceStatus,
    ModelStatus,
    Phase,
    RolloutStatus,
)

COND_READY = "Ready"
COND_PROGRESSING = "Progressing"
COND_DEGRADED = "Degraded"
COND_CHECKPOINT = "CheckpointResolved"
CONDITION_ORDER = (COND_READY, COND_PROGRESSING, COND_DEGRADED, COND_CHECKPOINT)

REASON_INVALID_SPEC = "InvalidSpec"
REASON_SECRET_NOT_FOUND = "SecretNotFound"
REASON_APPLY_FAILED = "ApplyFailed"
REASON_JOBS_NEED_REDIS = "JobsNeedRedis"
REASON_DEADLINE = "ProgressDeadlineExceeded"
REASON_VALIDATING = "Validating"
# Reasons after which no replica may serve: with none ready the phase is Failed, not Degraded.
_ROLLOUT_REASONS = {"RolloutFailed", "CheckpointFetchFailed", REASON_DEADLINE}


@dataclass(frozen=True)
class Problem:
    """Why the service cannot be what the spec asks for (-> Degraded)."""

    reason: str
    message: str


@dataclass(frozen=True)
class CheckpointResult:
    """Outcome of this reconcile's checkpoint resolution (absent when none was attempted)."""

    ok: bool
    message: str


@dataclass(frozen=True)
class DeploymentView:
    """The few facts of a live Deployment that status is made of."""

    desired: int
    replicas: int
    ready: int
    updated: int
    available: int
    observed: bool
    available_condition: bool
    deadline_exceeded: bool

    @property
    def complete(self) -> bool:
        """As `kubectl rollout status`: observed, all updated and available, no old replicas left."""
        return (
            self.observed
            and self.updated >= self.desired
            and self.available >= self.desired
            and self.replicas <= self.updated
        )

    @property
    def serving(self) -> bool:
        """The Deployment controller says it is Available (minimum availability) and a replica answers."""
        return self.available_condition and self.available > 0


def deployment_view(dep: dict[str, Any] | None) -> DeploymentView | None:
    if not dep:
        return None
    spec = dep.get("spec") or {}
    status = dep.get("status") or {}
    generation = (dep.get("metadata") or {}).get("generation")
    observed_gen = status.get("observedGeneration")
    observed = generation is None or (observed_gen is not None and observed_gen >= generation)
    conditions = {c.get("type"): c for c in status.get("conditions") or []}
    progressing = conditions.get("Progressing") or {}
    desired = spec.get("replicas")
    if not isinstance(desired, int):  # owned by the HPA: the server defaults it; trust status then
        desired = int(status.get("replicas") or 1)
    return DeploymentView(
        desired=desired,
        replicas=int(status.get("replicas") or 0),
        ready=int(status.get("readyReplicas") or 0),
        updated=int(status.get("updatedReplicas") or 0),
        available=int(status.get("availableReplicas") or 0),
        observed=observed,
        available_condition=(conditions.get("Available") or {}).get("status") == "True",
        deadline_exceeded=progressing.get("reason") == REASON_DEADLINE
        and progressing.get("status") == "False",
    )


@dataclass(frozen=True)
class StatusInputs:
    generation: int | None
    previous: DeepDetectServiceStatus
    now: str  # RFC 3339
    selector: str
    endpoint: str | None = None  # None: keep the previous one (spec unreadable)
    deployment: dict[str, Any] | None = None
    problem: Problem | None = None
    checkpoint: CheckpointResult | None = None
    model: ModelStatus | None = None  # None: keep the previous one
    rollout: RolloutStatus | None = None
    validating: str | None = None  # a candidate's validation Job runs: Progressing, reason Validating


# ---------------------------------------------------------------- conditions


def set_condition(
    conditions: list[Condition],
    type_: str,
    status: str,
    reason: str,
    message: str,
    *,
    now: str,
    generation: int | None,
) -> list[Condition]:
    """Conditions with `type_` set; `lastTransitionTime` kept unless the status flips."""
    previous = next((c for c in conditions if c.type == type_), None)
    since = previous.last_transition_time if previous is not None and previous.status == status else now
    updated = Condition(
        type=type_,
        status=status,  # type: ignore[arg-type]
        reason=reason,
        message=message,
        last_transition_time=since,
        observed_generation=generation,
    )
    out = [c for c in conditions if c.type != type_] + [updated]
    return sorted(out, key=lambda c: CONDITION_ORDER.index(c.type) if c.type in CONDITION_ORDER else 99)


def get_condition(status: DeepDetectServiceStatus, type_: str) -> Condition | None:
    return next((c for c in status.conditions if c.type == type_), None)


# ---------------------------------------------------------------- the status


def _phase(view: DeploymentView | None, problem: Problem | None) -> Phase:
    if problem is not None:
        if problem.reason in _ROLLOUT_REASONS and (view is None or view.ready == 0):
            return "Failed"
        return "Degraded"
    if view is None:
        return "Pending"
    if view.complete and view.serving:
        return "Ready"
    if view.desired == 0 and view.observed and view.replicas == 0:
        return "Ready"  # scaled to zero on purpose
    return "Progressing"


def compute_status(inp: StatusInputs) -> DeepDetectServiceStatus:
    view = deployment_view(inp.deployment)
    problem = inp.problem
    if problem is None and view is not None and view.deadline_exceeded:
        problem = Problem(REASON_DEADLINE, "the Deployment did not progress within progressDeadlineSeconds")
    phase = _phase(view, problem)
    prev = inp.previous
    conds = list(prev.conditions)

    def put(type_: str, status: str, reason: str, message: str) -> None:
        nonlocal conds
        conds = set_condition(conds, type_, status, reason, message, now=inp.now, generation=inp.generation)

    if view is None:
        put(COND_READY, "False", "DeploymentMissing", "the inference Deployment does not exist yet")
        put(COND_PROGRESSING, "False", "DeploymentMissing", "nothing is rolling out")
    else:
        ready_msg = f"{view.ready}/{view.desired} replicas ready, {view.available} available"
        if view.serving or (view.desired == 0 and phase == "Ready"):
            put(COND_READY, "True", "ReplicasAvailable", ready_msg)
        else:
            put(COND_READY, "False", "ReplicasUnavailable", ready_msg)
        if view.deadline_exceeded:
            put(COND_PROGRESSING, "False", REASON_DEADLINE, "the rollout missed its progress deadline")
        elif view.complete:
            # A fixed message: the rollout verdict's wording differs between the pass that sees completion
            # and the next ones, and status must not change when nothing did.
            put(COND_PROGRESSING, "False", "RolloutComplete", "all replicas updated and available")
        else:
            # From the Deployment's counts only: the same cluster state always gives the same status.
            msg = f"{view.updated}/{view.desired} replicas updated, {view.available} available"
            put(COND_PROGRESSING, "True", "RollingOut", msg)
    if inp.validating is not None:
        put(COND_PROGRESSING, "True", REASON_VALIDATING, inp.validating)
        if phase in ("Ready", "Pending"):
            phase = "Progressing"
    if problem is not None:
        put(COND_DEGRADED, "True", problem.reason, problem.message)
    else:
        put(COND_DEGRADED, "False", "AsExpected", "")
    if inp.checkpoint is not None:
        if inp.checkpoint.ok:
            put(COND_CHECKPOINT, "True", "Resolved", inp.checkpoint.message)
        else:
            put(COND_CHECKPOINT, "False", "ResolveFailed", inp.checkpoint.message)
    elif get_condition(prev, COND_CHECKPOINT) is None:
        put(COND_CHECKPOINT, "Unknown", "NotResolved", "the checkpoint has not been resolved yet")

    return DeepDetectServiceStatus(
        observed_generation=inp.generation,
        phase=phase,
        conditions=conds,
        replicas=view.replicas if view else 0,
        ready_replicas=view.ready if view else 0,
        selector=inp.selector,
        endpoint=inp.endpoint if inp.endpoint is not None else prev.endpoint,
        model=inp.model if inp.model is not None else prev.model,
        rollout=inp.rollout if inp.rollout is not None else prev.rollout,
    )


# ---------------------------------------------------------------- reading and diffing


_STATUS_KEYS = {f.alias or name for name, f in DeepDetectServiceStatus.model_fields.items()}


def parse_status(raw: dict[str, Any] | None) -> DeepDetectServiceStatus:
    """The stored status, ignoring what is not ours (kopf's bookkeeping); defaults when unreadable."""
    known = {k: v for k, v in (raw or {}).items() if k in _STATUS_KEYS}
    try:
        return DeepDetectServiceStatus.model_validate(known)
    except ValidationError:
        # A hand-edited or older status: keep what parses, field by field.
        fields: dict[str, Any] = {}
        for key, value in known.items():
            try:
                DeepDetectServiceStatus.model_validate({key: value})
            except ValidationError:
                continue
            fields[key] = value
        return DeepDetectServiceStatus.model_validate(fields)


def dump_status(status: DeepDetectServiceStatus) -> dict[str, Any]:
    return status.model_dump(by_alias=True, mode="json", exclude_none=True)


def status_patch(raw_previous: dict[str, Any] | None, new: DeepDetectServiceStatus) -> dict[str, Any] | None:
    """The merge patch for `status`, or None when the stored status already says exactly this."""
    new_dump = dump_status(new)
    stored = {k: v for k, v in (raw_previous or {}).items() if k in _STATUS_KEYS}
    if stored == new_dump:
        return None
    return _merge_diff(stored, new_dump)


def _merge_diff(old: dict[str, Any], new: dict[str, Any]) -> dict[str, Any]:
    """A merge patch turning `old` into `new`: nested objects are merged by the server, so a key that
    disappears at any depth (status.model.candidate.metrics) must be sent as null, or it stays forever."""
    patch: dict[str, Any] = {}
    for key, value in new.items():
        before = old.get(key)
        if isinstance(value, dict) and isinstance(before, dict):
            sub = _merge_diff(before, value)
            if sub or not value:
                patch[key] = sub if value else value
        elif before != value or key not in old:
            patch[key] = value
    for key in old:
        if key not in new:
            patch[key] = None
    return patch


def degraded_transition(previous: DeepDetectServiceStatus, new: DeepDetectServiceStatus) -> Condition | None:
    """The new Degraded condition when it became True or changed reason (-> one Event), else None."""
    before, after = get_condition(previous, COND_DEGRADED), get_condition(new, COND_DEGRADED)
    if after is None or after.status != "True":
        return None
    if before is not None and before.status == "True" and before.reason == after.reason:
        return None
    return after
