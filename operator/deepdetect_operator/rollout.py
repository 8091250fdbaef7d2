"""The checkpoint rollout state machine, pure: previous status + what the cluster shows -> next status.

Kept free of I/O so every transition is a table row in a unit test. The reconciler resolves the digest,
reads the Deployment and its pods, calls `evaluate_rollout`, renders `template_digest` into the pod template
and writes `model`/`rollout` into status. Invariants:

- never roll to an unknown checkpoint: a failed resolution keeps whatever the template carries now;
- a digest whose rollout failed is not retried until the source resolves to a different digest;
- the function is idempotent: fed its own output and an unchanged cluster, it changes nothing (no status
  churn, no repeated Events).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .api import ANNOTATION_CHECKPOINT_DIGEST, ModelStatus, RolloutStatus

__all__ = [
    "FETCH_CONTAINER",
    "REASON_CHECKPOINT_FETCH_FAILED",
    "REASON_ROLLOUT_FAILED",
    "RolloutInput",
    "RolloutOutcome",
    "evaluate_rollout",
]

REASON_ROLLOUT_FAILED = "RolloutFailed"
REASON_CHECKPOINT_FETCH_FAILED = "CheckpointFetchFailed"
FETCH_CONTAINER = "fetch"  # name of the init container that downloads and verifies the checkpoint

# A container restarted this often on the new template is a crash loop, whatever its current state says.
RESTART_LIMIT = 3
# Waiting reasons that mean kubelet already retried and backed off: waiting longer will not help.
_STUCK_WAITING = {"CrashLoopBackOff", "ImagePullBackOff", "InvalidImageName"}


@dataclass(frozen=True)
class RolloutInput:
    resolved_digest: str | None  # None when resolution failed this time
    model: ModelStatus  # previous status.model
    rollout: RolloutStatus  # previous status.rollout
    deployment: dict[str, Any] | None  # live Deployment as read back (None = not there yet)
    pods: list[dict[str, Any]]  # live pods of this instance
    auto_rollback: bool
    now: str  # RFC 3339


@dataclass(frozen=True)
class RolloutOutcome:
    template_digest: str  # digest to render into the pod template
    model: ModelStatus
    rollout: RolloutStatus
    degraded_reason: str | None  # "RolloutFailed" | "CheckpointFetchFailed" | None
    message: str
    event: tuple[str, str, str] | None  # (type, reason, message) to emit once, on a transition


def evaluate_rollout(inp: RolloutInput) -> RolloutOutcome:
    model, rollout = inp.model, inp.rollout
    digest = inp.resolved_digest
    failed_target = rollout.target_digest if rollout.state == "Failed" else ""

    if digest and (digest != model.digest or not rollout.target_digest) and digest != failed_target:
        return _start(inp, digest)
    if rollout.state == "Progressing" and rollout.target_digest:
        return _track(inp)
    return _hold(inp)


# ---------------------------------------------------------------- transitions


def _start(inp: RolloutInput, digest: str) -> RolloutOutcome:
    """A digest we have not tried (or a different one after a failure): point the template at it."""
    previous = _template_annotation(inp.deployment) or inp.model.digest  # what the pods run now
    model = inp.model.model_copy(update={"digest": digest, "resolved_at": inp.now})
    rollout = RolloutStatus(
        target_digest=digest, started_at=inp.now, state="Progressing", message=f"rolling out {digest}"
    )
    started = RolloutInput(
        resolved_digest=digest,
        model=model,
        rollout=rollout,
        deployment=inp.deployment,
        pods=inp.pods,
        auto_rollback=inp.auto_rollback,
        now=inp.now,
    )
    # The Deployment may already run these bytes (the source went back to the last good checkpoint after a
    # rollback): finish now, or nothing would wake the reconciler to notice.
    if _template_annotation(inp.deployment) == digest and _complete(inp.deployment, digest):
        return _completed(started)
    was = f" (was {previous})" if previous and previous != digest else ""
    return RolloutOutcome(
        template_digest=digest,
        model=model,
        rollout=rollout,
        degraded_reason=None,
        message=f"rolling out checkpoint {digest}{was}",
        event=("Normal", "RolloutStarted", f"rolling out checkpoint {digest}{was}"),
    )


def _track(inp: RolloutInput) -> RolloutOutcome:
    """A rollout in flight: complete, failed, or still waiting."""
    target = inp.rollout.target_digest
    if _template_annotation(inp.deployment) == target:
        if _complete(inp.deployment, target):
            return _completed(inp)
        failure = _failure(inp.deployment, inp.pods, target)
        if failure is not None:
            return _failed(inp, *failure)
    return RolloutOutcome(
        template_digest=target,
        model=inp.model,
        rollout=inp.rollout,
        degraded_reason=None,
        message=_progress_message(inp.deployment, target),
        event=None,
    )


def _completed(inp: RolloutInput) -> RolloutOutcome:
    target = inp.rollout.target_digest
    model = inp.model.model_copy(update={"last_good_digest": target})
    rollout = inp.rollout.model_copy(update={"state": "Complete", "message": f"{target} is available"})
    msg = f"checkpoint {target} rolled out: all replicas available"
    return RolloutOutcome(
        template_digest=target,
        model=model,
        rollout=rollout,
        degraded_reason=None,
        message=msg,
        event=("Normal", "RolloutComplete", msg),
    )


def _failed(inp: RolloutInput, reason: str, detail: str) -> RolloutOutcome:
    target = inp.rollout.target_digest
    template, tail = _after_failure(inp.model, target, inp.auto_rollback)
    # The reason leads the message so a later evaluation (which sees only status) can say it again.
    msg = f"{reason}: {detail}; {tail}"
    rollout = inp.rollout.model_copy(update={"state": "Failed", "message": msg})
    return RolloutOutcome(
        template_digest=template,
        model=inp.model,
        rollout=rollout,
        degraded_reason=reason,
        message=msg,
        event=("Warning", reason, msg),
    )


def _hold(inp: RolloutInput) -> RolloutOutcome:
    """Nothing new: keep the template where it is and repeat the standing verdict (no Event)."""
    rollout, model = inp.rollout, inp.model
    if rollout.state == "Failed" and rollout.target_digest:
        template, _ = _after_failure(model, rollout.target_digest, inp.auto_rollback)
        if template == rollout.target_digest and _complete(inp.deployment, template):
            # Not rolled back, and kubelet's own retries got the pods up after all (a source that was down
            # for a while): the target is good now.
            return _completed(inp)
        return RolloutOutcome(
            template_digest=template,
            model=model,
            rollout=rollout,
            degraded_reason=_reason_of(rollout.message),
            message=rollout.message,
            event=None,
        )
    template = rollout.target_digest or model.digest or _template_annotation(inp.deployment) or ""
    if rollout.state == "Complete":
        message = f"checkpoint {template} is rolled out"
    elif template:
        message = f"keeping checkpoint {template}"
    else:
        message = "no checkpoint digest resolved yet"
    return RolloutOutcome(
        template_digest=template,
        model=model,
        rollout=rollout,
        degraded_reason=None,
        message=message,
        event=None,
    )


def _after_failure(model: ModelStatus, target: str, auto_rollback: bool) -> tuple[str, str]:
    """Template digest after `target` failed, and how to say it."""
    good = model.last_good_digest
    if auto_rollback and good and good != target:
        return good, f"rolled back to {good}"
    if not auto_rollback:
        return target, f"keeping {target} (autoRollback is off)"
    return target, f"keeping {target}: no last good checkpoint to roll back to"


def _reason_of(message: str) -> str:
    head = message.split(":", 1)[0]
    return head if head in (REASON_ROLLOUT_FAILED, REASON_CHECKPOINT_FETCH_FAILED) else REASON_ROLLOUT_FAILED


# ---------------------------------------------------------------- reading the cluster


def _template_annotation(deployment: dict[str, Any] | None) -> str:
    if not deployment:
        return ""
    annotations = (((deployment.get("spec") or {}).get("template") or {}).get("metadata") or {}).get(
        "annotations"
    ) or {}
    return str(annotations.get(ANNOTATION_CHECKPOINT_DIGEST, ""))


def _observed(deployment: dict[str, Any]) -> bool:
    """The controller has seen the current spec (a missing field on either side counts as seen)."""
    generation = (deployment.get("metadata") or {}).get("generation")
    observed = (deployment.get("status") or {}).get("observedGeneration")
    return generation is None or observed is None or observed >= generation


def _desired_replicas(deployment: dict[str, Any]) -> int:
    replicas = (deployment.get("spec") or {}).get("replicas")
    if isinstance(replicas, int):
        return replicas
    # Under an HPA the rendered spec has no replicas; the API server defaults it, the emulator may not.
    status_replicas = (deployment.get("status") or {}).get("replicas")
    return status_replicas if isinstance(status_replicas, int) and status_replicas > 0 else 1


def _complete(deployment: dict[str, Any] | None, target: str) -> bool:
    """The ReplicaSet of `target` is fully available and no old pods remain (as `kubectl rollout status`)."""
    if not deployment or _template_annotation(deployment) != target or not _observed(deployment):
        return False
    status = deployment.get("status") or {}
    desired = _desired_replicas(deployment)
    if desired <= 0:
        return False  # scaled to zero: nothing has proven the checkpoint yet
    updated = status.get("updatedReplicas") or 0
    available = status.get("availableReplicas") or 0
    unavailable = status.get("unavailableReplicas") or 0
    total = status.get("replicas")
    old_left = isinstance(total, int) and total > updated
    return updated == desired and available >= desired and unavailable == 0 and not old_left


def _progress_message(deployment: dict[str, Any] | None, target: str) -> str:
    if not deployment:
        return f"rolling out checkpoint {target}: waiting for the Deployment"
    status = deployment.get("status") or {}
    desired = _desired_replicas(deployment)
    return (
        f"rolling out checkpoint {target}: {status.get('updatedReplicas') or 0}/{desired} updated, "
        f"{status.get('availableReplicas') or 0}/{desired} available"
    )


def _failure(
    deployment: dict[str, Any] | None, pods: list[dict[str, Any]], target: str
) -> tuple[str, str] | None:
    """(degraded reason, detail) when the rollout of `target` cannot succeed, else None."""
    # Pods first: their termination message says why, the Deployment's deadline only says that it failed.
    fetch_failure, pod_failure = None, None
    for pod in pods:
        annotations = (pod.get("metadata") or {}).get("annotations") or {}
        # Pods of older templates carry another digest; a pod without the annotation is not excluded.
        if annotations.get(ANNOTATION_CHECKPOINT_DIGEST, target) != target:
            continue
        name = (pod.get("metadata") or {}).get("name", "?")
        status = pod.get("status") or {}
        for cs in status.get("initContainerStatuses") or []:
            detail = _stuck(cs)
            if detail is None:
                continue
            if cs.get("name") == FETCH_CONTAINER and _terminated_nonzero(cs):
                fetch_failure = fetch_failure or f"pod {name}: {detail}"
            else:
                pod_failure = pod_failure or f"pod {name} init container {cs.get('name', '?')}: {detail}"
        for cs in status.get("containerStatuses") or []:
            detail = _stuck(cs)
            if detail is not None:
                pod_failure = pod_failure or f"pod {name} container {cs.get('name', '?')}: {detail}"
    if fetch_failure:
        return REASON_CHECKPOINT_FETCH_FAILED, fetch_failure
    if deployment is not None and _observed(deployment):
        for cond in (deployment.get("status") or {}).get("conditions") or []:
            if cond.get("type") == "Progressing" and cond.get("reason") == "ProgressDeadlineExceeded":
                detail = "progress deadline exceeded"
                if pod_failure:
                    detail += f" ({pod_failure})"
                return REASON_ROLLOUT_FAILED, detail
    if pod_failure:
        return REASON_ROLLOUT_FAILED, pod_failure
    return None


def _last_terminated(cs: dict[str, Any]) -> dict[str, Any]:
    state = cs.get("state") or {}
    return state.get("terminated") or (cs.get("lastState") or {}).get("terminated") or {}


def _terminated_nonzero(cs: dict[str, Any]) -> bool:
    code = _last_terminated(cs).get("exitCode")
    return isinstance(code, int) and code != 0


def _stuck(cs: dict[str, Any]) -> str | None:
    """Why this container will not come up on its own, or None while it still may."""
    state = cs.get("state") or {}
    if ("running" in state and cs.get("ready")) or (state.get("terminated") or {}).get("exitCode") == 0:
        return None  # came up (or, for an init container, finished) after all
    waiting = state.get("waiting") or {}
    restarts = cs.get("restartCount") or 0
    reason = waiting.get("reason", "")
    if reason not in _STUCK_WAITING and restarts < RESTART_LIMIT:
        return None
    term = _last_terminated(cs)
    if term.get("message"):
        # The fetch command prints one line; keep only that, whatever else ended up in the log tail.
        lines = [line.strip() for line in str(term["message"]).splitlines() if line.strip()]
        detail = lines[-1] if lines else ""
    elif term:
        detail = f"exited with code {term.get('exitCode')} ({term.get('reason', 'Error')})"
    else:
        detail = waiting.get("message") or reason or "restarting"
    status = reason or f"{restarts} restarts"
    return f"{detail} [{status}]"
