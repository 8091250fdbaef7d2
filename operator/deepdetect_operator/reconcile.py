"""The reconcile layer: one level-based pass from a DeepDetectService's spec to its children and status.

Every trigger (create/update/resume, the periodic timer, events of owned Deployments and Pods) calls
`Reconciler.reconcile` for the CR, which reads the CR fresh and converges on the same desired state:

1. parse the spec (a bad one -> Degraded/InvalidSpec + Event; nothing else is touched), and refuse a spec
   that cannot work as asked (jobs on several replicas without Redis -> Degraded/JobsNeedRedis; nothing
   is applied, so a live service keeps running as it was);
2. check the Secrets it references (missing -> Degraded/SecretNotFound);
3. create the API-key Secret once (409 = it exists; never overwritten) and hash what the pods read;
4. resolve the checkpoint when due (spec change, `pollInterval`, restart); an error keeps the last digest;
5. evaluate the rollout state machine (rollout.py) against the live Deployment and Pods;
6. render (render.py) and server-side apply each child whose live state differs from the desired one,
   delete children of disabled features (HPA, ServiceMonitor);
7. compute status (status.py) from what the API server returned and patch /status only if it changed.

A pass with nothing to change makes no write at all: children are compared with the live objects (the
fields we set, plus a hash of the whole desired manifest in an annotation, so removed fields count too)
and status is compared with the stored one. Passes of one CR are serialized by a per-CR lock; bursts of
child events coalesce into one extra pass.
"""

from __future__ import annotations

import asyncio
import base64
import datetime
import hashlib
import json
import logging
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from pydantic import ValidationError

from deepdetect_operator import naming, render
from deepdetect_operator.api import (
    DEFAULT_SERVER_IMAGE,
    GROUP,
    DeepDetectServiceSpec,
    jobs_need_redis,
    parse_spec,
)
from deepdetect_operator.checkpoints import (
    CheckpointResolveError,
    parse_duration,
    redact_uri,
)
from deepdetect_operator.cli import flatten_validation_error
from deepdetect_operator.kubeapi import (
    DEEPDETECTSERVICES,
    DEPLOYMENTS,
    FIELD_MANAGER,
    HPAS,
    JOBS,
    NETWORKPOLICIES,
    PODS,
    SECRETS,
    SERVICEMONITORS,
    Conflict,
    Invalid,
    KubeAPI,
    resource_of,
)
from deepdetect_operator.metrics import OperatorMetrics
from deepdetect_operator.resolution import CheckpointResolver
from deepdetect_operator.rollout import RolloutInput, RolloutOutcome, evaluate_rollout
from deepdetect_operator.status import (
    REASON_APPLY_FAILED,
    REASON_INVALID_SPEC,
    REASON_JOBS_NEED_REDIS,
    REASON_SECRET_NOT_FOUND,
    CheckpointResult,
    Problem,
    StatusInputs,
    compute_status,
    degraded_transition,
    parse_status,
    status_patch,
)
from deepdetect_operator.validation import GateInput, GateOutcome, evaluate_gate, jobs_to_delete

log = logging.getLogger(__name__)

ANNOTATION_APPLIED_HASH = f"{GROUP}/applied-hash"
REPLICAS_HANDOVER_MANAGER = f"{FIELD_MANAGER}-replicas-handover"
REASON_CHECKPOINT_UNRESOLVED = "CheckpointNotResolved"
REASON_CHILD_CONFLICT = "ChildConflict"
API_KEY_BYTES = 32
# A forced resolution (creation, restart) accepts a result this fresh: 1,000 CRs created or resumed
# together on one checkpoint then cost one request, not one per CR.
FORCED_MAX_AGE_S = 10.0

EventFn = Callable[[dict[str, Any], str, str, str], None]


@dataclass(frozen=True)
class OperatorConfig:
    """What the operator is told at start (runtime.py fills it from flags and environment)."""

    default_image: str = DEFAULT_SERVER_IMAGE
    namespaces: tuple[str, ...] = ()  # empty: cluster-wide
    resync_seconds: float = 60.0  # a full pass at least this often, whatever happens
    tick_seconds: float = 10.0  # the per-CR timer; a pass runs only when resync or a checkpoint poll is due
    resolve_timeout_s: float = 10.0
    discovery_ttl_s: float = 300.0
    peering: str = ""  # kopf peering name; "" = standalone
    priority: int = 0
    liveness: str = "http://0.0.0.0:8080/healthz"
    metrics_port: int = 9090
    watch_server_timeout_s: int = 300  # timeoutSeconds on every watch: an integer query parameter
    watch_client_timeout_s: float = 330.0
    watch_connect_timeout_s: float = 10.0
    request_timeout_s: float = 30.0
    retry_delay_s: float = 5.0  # kopf retries a handler this long after 5xx/timeouts outlasted our retries


@dataclass
class Pass:
    """What one pass learned; the input of the status computation."""

    deployment: dict[str, Any] | None = None
    problem: Problem | None = None
    checkpoint: CheckpointResult | None = None
    outcome: RolloutOutcome | None = None
    endpoint: str | None = None
    validating: str | None = None
    writes: int = 0
    events: list[tuple[str, str, str]] = field(default_factory=list)


def utcnow() -> str:
    return datetime.datetime.now(tz=datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


# ---------------------------------------------------------------- comparing desired and live


def manifest_hash(obj: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()).hexdigest()[:16]


def with_applied_hash(desired: dict[str, Any]) -> dict[str, Any]:
    """`desired` with an annotation holding the hash of itself (so dropped fields also count as changes)."""
    meta = dict(desired["metadata"])
    meta["annotations"] = {**(meta.get("annotations") or {}), ANNOTATION_APPLIED_HASH: manifest_hash(desired)}
    return {**desired, "metadata": meta}


def is_subset(desired: Any, live: Any) -> bool:
    """Every field we set has the same value live (the server may add defaults around them)."""
    if isinstance(desired, dict):
        return isinstance(live, dict) and all(k in live and is_subset(v, live[k]) for k, v in desired.items())
    if isinstance(desired, list):
        return (
            isinstance(live, list)
            and len(desired) == len(live)
            and all(is_subset(d, x) for d, x in zip(desired, live, strict=True))
        )
    return bool(desired == live)


def needs_apply(desired: dict[str, Any], live: dict[str, Any] | None) -> bool:
    if live is None:
        return True
    want = desired["metadata"]["annotations"][ANNOTATION_APPLIED_HASH]
    have = ((live.get("metadata") or {}).get("annotations") or {}).get(ANNOTATION_APPLIED_HASH)
    return have != want or not is_subset(desired, live)


def hands_replicas_over(desired: dict[str, Any], live: dict[str, Any]) -> bool:
    """True when this apply drops `spec.replicas` (the HPA takes over) while we still own it.

    Server-side apply deletes a field its manager stops applying: the Deployment would fall back to
    the default of 1 replica before the HPA's first scale. Kubernetes' documented fix is to hand the
    field to another manager first ("Transferring ownership" in the SSA docs).
    """
    if "replicas" in desired.get("spec", {}) or "replicas" not in live.get("spec", {}):
        return False
    for entry in live.get("metadata", {}).get("managedFields") or []:
        if entry.get("manager") == FIELD_MANAGER and entry.get("operation") == "Apply":
            return "f:replicas" in (entry.get("fieldsV1") or {}).get("f:spec", {})
    return False


def replicas_handover(live: dict[str, Any]) -> dict[str, Any]:
    """The apply that makes REPLICAS_HANDOVER_MANAGER co-own the live replica count."""
    meta = live["metadata"]
    return {
        "apiVersion": live.get("apiVersion", "apps/v1"),
        "kind": live.get("kind", "Deployment"),
        "metadata": {"name": meta["name"], "namespace": meta["namespace"]},
        "spec": {"replicas": live["spec"]["replicas"]},
    }


def controller_uid(obj: dict[str, Any]) -> str | None:
    for ref in (obj.get("metadata") or {}).get("ownerReferences") or []:
        if ref.get("controller"):
            return str(ref.get("uid"))
    return None


def decode_secret(obj: dict[str, Any] | None) -> dict[str, str]:
    out: dict[str, str] = {}
    for key, value in ((obj or {}).get("data") or {}).items():
        try:
            out[key] = base64.b64decode(value).decode("utf-8", "replace")
        except (ValueError, TypeError):
            continue
    out.update((obj or {}).get("stringData") or {})
    return out


# ---------------------------------------------------------------- the reconciler


def _post_kopf_event(body: dict[str, Any], type_: str, reason: str, message: str) -> None:
    import kopf

    try:
        kopf.event(body, type=type_, reason=reason, message=message[:1000])
    except LookupError:  # outside an operator context (unit use): nothing to post to
        log.info("event %s %s: %s", type_, reason, message)


class Reconciler:
    """Per-operator state: the API wrapper, config, metrics, per-CR locks and timestamps."""

    def __init__(
        self,
        api: KubeAPI,
        config: OperatorConfig | None = None,
        metrics: OperatorMetrics | None = None,
        *,
        post_event: EventFn = _post_kopf_event,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.api = api
        self.config = config or OperatorConfig()
        self.metrics = metrics or OperatorMetrics()
        self.post_event = post_event
        self.clock = clock
        self._locks: dict[str, asyncio.Lock] = {}
        self._dirty: set[str] = set()
        self._last_pass: dict[str, float] = {}
        self._last_resolve: dict[str, float] = {}
        self._sm_cache: tuple[bool, float] | None = None
        self.resolver = CheckpointResolver(timeout_s=self.config.resolve_timeout_s, clock=clock)
        self.passes = 0  # completed passes (kopf's liveness probe reports it)

    # ------------------------------------------------------------ triggers

    def due(self, body: dict[str, Any]) -> bool:
        """Should the timer run a pass now (resync interval, or a checkpoint poll)?"""
        uid = body["metadata"]["uid"]
        now = self.clock()
        last = self._last_pass.get(uid)
        if last is None or now - last >= self.config.resync_seconds:
            return True
        try:
            poll = parse_duration(str(body["spec"]["model"]["checkpoint"].get("pollInterval", "5m")))
        except (KeyError, TypeError, ValueError):
            return False
        resolved = self._last_resolve.get(uid)
        return poll > 0 and (resolved is None or now - resolved >= poll)

    async def tick(self, body: dict[str, Any], logger: logging.Logger | logging.LoggerAdapter[Any]) -> None:
        if self.due(body):
            await self.reconcile(body["metadata"]["namespace"], body["metadata"]["name"], logger=logger)

    async def reconcile(
        self,
        namespace: str,
        name: str,
        *,
        logger: logging.Logger | logging.LoggerAdapter[Any] = log,
        coalesce: bool = False,
        force_resolve: bool = False,
    ) -> str:
        """One pass (plus one more if events arrived meanwhile). Returns ok|degraded|gone|coalesced."""
        key = f"{namespace}/{name}"
        lock = self._locks.setdefault(key, asyncio.Lock())
        if coalesce and lock.locked():
            self._dirty.add(key)
            return "coalesced"
        async with lock:
            result = "gone"
            while True:
                self._dirty.discard(key)
                body = await self.api.get(DEEPDETECTSERVICES, namespace, name)
                if body is None or (body.get("metadata") or {}).get("deletionTimestamp"):
                    return "gone"
                result = await self._timed_pass(body, logger, force_resolve=force_resolve)
                force_resolve = False
                if key not in self._dirty:
                    return result

    async def child_changed(
        self, namespace: str, labels: Any, index: Any, *, logger: Any = log, pods: bool = False
    ) -> None:
        """An owned Deployment or Pod changed: reconcile its CR (Pods matter only during a rollout)."""
        instance = labels.get(naming.LABEL_INSTANCE)
        for name, rollout_state in list(index.get((namespace, instance), [])):
            if pods and rollout_state != "Progressing":
                continue
            await self.reconcile(namespace, name, logger=logger, coalesce=True)

    def forget(self, namespace: str, name: str, uid: str | None) -> None:
        key = f"{namespace}/{name}"
        self._locks.pop(key, None)
        self._dirty.discard(key)
        if uid:
            self._last_pass.pop(uid, None)
            self._last_resolve.pop(uid, None)
        self.metrics.forget(namespace, name)

    # ------------------------------------------------------------ one pass

    async def _timed_pass(self, body: dict[str, Any], logger: Any, *, force_resolve: bool) -> str:
        meta = body["metadata"]
        started = self.clock()
        result, phase, rollout_state, checkpoint_ok, validation_state = "error", None, None, None, None
        try:
            status, checkpoint_ok = await self._pass(body, logger, force_resolve=force_resolve)
            phase, rollout_state = status.phase, status.rollout.state
            validation_state = status.model.candidate.state if status.model.candidate else None
            result = "degraded" if phase in ("Degraded", "Failed") else "ok"
            self._last_pass[meta["uid"]] = self.clock()
            self.passes += 1
            return result
        finally:
            self.metrics.observe(
                meta["namespace"],
                meta["name"],
                result=result,
                seconds=self.clock() - started,
                phase=phase,
                rollout_state=rollout_state,
                checkpoint_ok=checkpoint_ok,
                validation_state=validation_state,
            )

    async def _pass(
        self, body: dict[str, Any], logger: Any, *, force_resolve: bool
    ) -> tuple[Any, bool | None]:
        meta = body["metadata"]
        name, namespace, generation = meta["name"], meta["namespace"], meta.get("generation")
        previous_raw = body.get("status") or {}
        previous = parse_status(previous_raw)
        now = utcnow()
        result = Pass()
        try:
            spec = parse_spec(body.get("spec") or {})
        except ValidationError as exc:
            result.problem = Problem(REASON_INVALID_SPEC, flatten_validation_error(exc))
            result.deployment = await self.api.get(DEPLOYMENTS, namespace, naming.deployment_name(name))
        else:
            await self._converge(body, spec, previous, now, result, logger, force_resolve=force_resolve)

        outcome = result.outcome
        status = compute_status(
            StatusInputs(
                generation=generation,
                previous=previous,
                now=now,
                selector=naming.selector_string(name),
                endpoint=result.endpoint,
                deployment=result.deployment,
                problem=result.problem,
                checkpoint=result.checkpoint,
                model=outcome.model if outcome else None,
                rollout=outcome.rollout if outcome else None,
                validating=result.validating,
            )
        )
        patch = status_patch(previous_raw, status)
        if patch is not None:
            try:
                await self.api.patch_status(DEEPDETECTSERVICES, namespace, name, patch)
            except Invalid as exc:
                logger.error("status refused by the API server: %s", exc.message)
        events = list(result.events)
        transition = degraded_transition(previous, status)
        if transition is not None and not any(reason == transition.reason for _, reason, _ in events):
            events.append(("Warning", transition.reason, transition.message))
        for type_, reason, message in events:
            self.post_event(body, type_, reason, message)
        checkpoint_ok = result.checkpoint.ok if result.checkpoint is not None else None
        if checkpoint_ok is None:
            prev_cond = next((c for c in status.conditions if c.type == "CheckpointResolved"), None)
            checkpoint_ok = (
                None if prev_cond is None or prev_cond.status == "Unknown" else prev_cond.status == "True"
            )
        if result.writes or patch is not None:
            logger.debug(
                "reconciled %s/%s: %d child writes, status %s",
                namespace,
                name,
                result.writes,
                "patched" if patch is not None else "unchanged",
            )
        return status, checkpoint_ok

    async def _converge(
        self,
        body: dict[str, Any],
        spec: DeepDetectServiceSpec,
        previous: Any,
        now: str,
        result: Pass,
        logger: Any,
        *,
        force_resolve: bool,
    ) -> None:
        meta = body["metadata"]
        name, namespace, uid = meta["name"], meta["namespace"], meta["uid"]
        dep_name = naming.deployment_name(name)
        base = render.RenderInputs(
            name=name, namespace=namespace, uid=uid, spec=spec, default_image=self.config.default_image
        )
        result.endpoint = render.endpoint(base)
        refusal = jobs_need_redis(spec)
        if refusal is not None:
            result.problem = Problem(REASON_JOBS_NEED_REDIS, refusal)
            result.deployment = await self.api.get(DEPLOYMENTS, namespace, dep_name)
            return

        # 2. referenced Secrets
        missing: list[str] = []
        auth_data: dict[str, str] | None = None
        if spec.auth.mode == "apiKey" and spec.auth.secret_name:
            user_secret = await self.api.get(SECRETS, namespace, spec.auth.secret_name)
            if user_secret is None:
                missing.append(f"{spec.auth.secret_name} (auth.secretName)")
            else:
                auth_data = decode_secret(user_secret)
                if render.API_KEY_KEY not in auth_data:
                    missing.append(f"{spec.auth.secret_name} key {render.API_KEY_KEY!r} (auth.secretName)")
        creds: dict[str, str] | None = None
        ckpt = spec.model.checkpoint
        if ckpt.credentials_secret:
            cred_secret = await self.api.get(SECRETS, namespace, ckpt.credentials_secret)
            if cred_secret is None:
                missing.append(f"{ckpt.credentials_secret} (model.checkpoint.credentialsSecret)")
            else:
                creds = decode_secret(cred_secret)
        pod_secrets: dict[str, str] = {}  # every other Secret the pods mount: its change rolls them
        for secret_name, keys, field_name in _mounted_secrets(spec):
            live_secret = await self.api.get(SECRETS, namespace, secret_name)
            data = decode_secret(live_secret) if live_secret is not None else {}
            if live_secret is None:
                missing.append(f"{secret_name} ({field_name})")
                continue
            absent = [k for k in keys if k not in data]
            if absent:
                missing.append(f"{secret_name} key {absent[0]!r} ({field_name})")
            pod_secrets.update({f"{secret_name}/{k}": v for k, v in data.items() if k in keys})
        if missing:
            result.problem = Problem(
                REASON_SECRET_NOT_FOUND, f"Secret {', '.join(missing)} not found in namespace {namespace}"
            )
            result.deployment = await self.api.get(DEPLOYMENTS, namespace, dep_name)
            return

        # 3. the API-key Secret (created once) and the hash of what the pods read
        secret_hash = ""
        if spec.auth.mode == "apiKey":
            if auth_data is None:
                auth_data = await self._ensure_api_key(base, result)
            secret_hash = render.secret_data_hash(auth_data)
        if pod_secrets:
            secret_hash = render.secret_data_hash({"": secret_hash, **pod_secrets})

        # 4. checkpoint digest
        resolved_digest = previous.model.digest or None
        cand = previous.model.candidate
        if cand is not None and cand.digest and cand.state in ("Validating", "Failed"):
            resolved_digest = cand.digest  # the source's last answer was the candidate, not the serving one
        uri = redact_uri(ckpt.uri)
        # A spec edit of a CR already resolved here asks the source afresh (in-flight answers still coalesce):
        # with pollInterval 0 it is the only way new bytes at the same URI are ever seen.
        spec_edit = uid in self._last_resolve and previous.observed_generation != meta.get("generation")
        due = (
            force_resolve
            or uid not in self._last_resolve
            or previous.model.uri != uri
            or previous.observed_generation != meta.get("generation")
            or not previous.model.digest
        )
        poll = parse_duration(ckpt.poll_interval)
        if not due:
            due = poll > 0 and self.clock() - self._last_resolve[uid] >= poll
        resolved_now = False
        if due:
            self._last_resolve[uid] = self.clock()
            try:
                max_age = FORCED_MAX_AGE_S if poll <= 0 else poll
                if force_resolve:
                    max_age = min(max_age, FORCED_MAX_AGE_S)
                if spec_edit:
                    max_age = 0.0
                resolved = await self.resolver.resolve(ckpt, secret_data=creds, max_age_s=max_age)
            except CheckpointResolveError as exc:
                resolved_digest = None
                result.checkpoint = CheckpointResult(False, str(exc))
            except Exception as exc:  # a resolver bug must not stop the reconcile of this or other CRs
                logger.exception("checkpoint resolver failed")
                resolved_digest = None
                result.checkpoint = CheckpointResult(
                    False, f"unexpected resolver error: {type(exc).__name__}"
                )
            else:
                resolved_digest, resolved_now = resolved.digest, True
                result.checkpoint = CheckpointResult(True, f"{resolved.digest} (from {resolved.source})")

        # 4b. the quality gate: a new digest reaches the rollout only after its validation Job passed
        gate = await self._gate(base, spec, previous, resolved_digest, now, result)
        resolved_digest = gate.rollout_digest

        # 5. rollout
        deployment = await self.api.get(DEPLOYMENTS, namespace, dep_name)
        pods: list[dict[str, Any]] = []
        if previous.rollout.state == "Progressing" or (
            resolved_digest and resolved_digest != previous.model.digest
        ):
            pods = await self.api.list(PODS, namespace, label_selector=naming.selector_string(name))
        outcome = evaluate_rollout(
            RolloutInput(
                resolved_digest=resolved_digest,
                model=previous.model,
                rollout=previous.rollout,
                deployment=deployment,
                pods=pods,
                auto_rollback=spec.rollout.auto_rollback,
                now=now,
            )
        )
        if resolved_now and outcome.model.uri != uri:
            outcome = _with_model(outcome, uri=uri)
        outcome = _with_model(outcome, candidate=gate.candidate)
        outcome = _with_model(outcome, metrics=_serving_metrics(outcome))
        result.outcome = outcome
        if outcome.event is not None:
            result.events.append(outcome.event)
        if outcome.degraded_reason:
            result.problem = Problem(outcome.degraded_reason, outcome.message)
        elif gate.problem is not None:
            result.problem = Problem(*gate.problem)
        result.deployment = deployment
        if not outcome.template_digest and result.validating:
            return  # the first checkpoint is being validated: nothing may serve before it passes
        if not outcome.template_digest:
            # Nothing was ever resolved: no pods may fetch an unknown checkpoint.
            message = result.checkpoint.message if result.checkpoint else "the checkpoint was never resolved"
            result.problem = Problem(REASON_CHECKPOINT_UNRESOLVED, message)
            return

        # 6. render and apply
        inp = render.RenderInputs(
            name=name,
            namespace=namespace,
            uid=uid,
            spec=spec,
            default_image=self.config.default_image,
            checkpoint_digest=outcome.template_digest,
            secret_hash=secret_hash,
            service_monitor_available=await self._service_monitors_served(),
        )
        children = render.render_children(inp)
        for child in children:
            res = resource_of(child)
            child_name = child["metadata"]["name"]
            live = deployment if res == DEPLOYMENTS else await self.api.get(res, namespace, child_name)
            if live is not None and controller_uid(live) not in (None, uid):
                result.problem = Problem(
                    REASON_CHILD_CONFLICT,
                    f"{res.kind} {child_name} exists and is controlled by another owner",
                )
                continue
            desired = with_applied_hash(child)
            if not needs_apply(desired, live):
                continue
            if res == DEPLOYMENTS and live is not None and hands_replicas_over(desired, live):
                await self.api.apply(replicas_handover(live), field_manager=REPLICAS_HANDOVER_MANAGER)
                result.writes += 1
            try:
                applied = await self.api.apply(desired)
            except Invalid as exc:
                result.problem = Problem(REASON_APPLY_FAILED, f"{res.kind} {child_name}: {exc.message}")
                continue
            result.writes += 1
            if res == DEPLOYMENTS:
                result.deployment = applied
        await self._delete_disabled(inp, {resource_of(c) for c in children}, result)

    async def _gate(self, base: render.RenderInputs, spec: DeepDetectServiceSpec, previous: Any,
                    resolved_digest: str | None, now: str, result: Pass) -> GateOutcome:
        """Run the validation state machine (validation.py): create the candidate's Job, read it back,
        delete finished Jobs beyond the history limit."""
        val = spec.rollout.validation
        cand = previous.model.candidate
        digest = resolved_digest or ""
        job_name = render.validation_job_name(base.name, digest) if digest else ""
        job, job_pods = None, []
        watching = val is not None and digest and digest != (previous.model.digest or
                                                                previous.rollout.target_digest)
        if watching and cand is not None and cand.digest == digest and cand.state == "Validating":
            job = await self.api.get(JOBS, base.namespace, job_name)
            if job is not None and job.get("status", {}).get("conditions"):
                job_pods = await self.api.list(
                    PODS, base.namespace, label_selector=render.validation_selector(base.name))
                job_pods = [p for p in job_pods
                            if (p.get("metadata") or {}).get("labels", {}).get("job-name") == job_name
                            or _pod_of_job(p, job)]
        gate = evaluate_gate(GateInput(
            enabled=val is not None, resolved_digest=resolved_digest, model=previous.model,
            rollout_target=previous.rollout.target_digest, job=job, job_pods=job_pods, job_name=job_name,
            now=now))
        if gate.create_job:
            manifest = render.build_validation_job(
                render.RenderInputs(name=base.name, namespace=base.namespace, uid=base.uid, spec=spec,
                                    default_image=base.default_image, checkpoint_digest=digest))
            try:
                await self.api.create(manifest)
                result.writes += 1
            except Conflict:
                pass  # created by an earlier pass whose answer was lost: it is the same Job
            except Invalid as exc:
                result.problem = Problem(REASON_APPLY_FAILED, f"Job {job_name}: {exc.message}")
        if gate.event is not None:
            result.events.append(gate.event)
        result.validating = gate.validating
        if val is not None and gate.event is not None:
            await self._prune_jobs(base, val.history_limit, job_name, result)
        return gate

    async def _prune_jobs(self, base: render.RenderInputs, keep: int, current: str, result: Pass) -> None:
        jobs = await self.api.list(JOBS, base.namespace, label_selector=render.validation_selector(base.name))
        for job in jobs_to_delete([j for j in jobs if controller_uid(j) == base.uid], keep, current):
            if await self.api.delete(JOBS, base.namespace, job["metadata"]["name"],
                                     uid=job["metadata"].get("uid")):
                result.writes += 1

    async def _ensure_api_key(self, inp: render.RenderInputs, result: Pass) -> dict[str, str]:
        secret_name = render.api_key_secret_name(inp.name, inp.spec)
        live = await self.api.get(SECRETS, inp.namespace, secret_name)
        if live is None:
            manifest = render.render_api_key_secret(inp, secrets.token_urlsafe(API_KEY_BYTES))
            try:
                live = await self.api.create(manifest)
                result.writes += 1
            except Conflict:  # created meanwhile (or a lost response): never overwrite, read it back
                live = await self.api.get(SECRETS, inp.namespace, secret_name)
        return decode_secret(live)

    async def _service_monitors_served(self) -> bool:
        now = self.clock()
        if self._sm_cache is None or now >= self._sm_cache[1]:
            served = await self.api.serves(
                SERVICEMONITORS.group, SERVICEMONITORS.version, SERVICEMONITORS.plural
            )
            self._sm_cache = (served, now + self.config.discovery_ttl_s)
        return self._sm_cache[0]

    async def _delete_disabled(self, inp: render.RenderInputs, wanted: set[Any], result: Pass) -> None:
        """Children of features switched off: the HPA without autoscaling, the NetworkPolicy, the
        ServiceMonitor."""
        candidates = [(HPAS, naming.hpa_name(inp.name)),
                      (NETWORKPOLICIES, naming.network_policy_name(inp.name))]
        if inp.service_monitor_available:
            candidates.append((SERVICEMONITORS, naming.service_monitor_name(inp.name)))
        for res, child_name in candidates:
            if res in wanted:
                continue
            live = await self.api.get(res, inp.namespace, child_name)
            if live is None or controller_uid(live) != inp.uid:
                continue
            if await self.api.delete(res, inp.namespace, child_name, uid=live["metadata"].get("uid")):
                result.writes += 1


def _mounted_secrets(spec: DeepDetectServiceSpec) -> list[tuple[str, list[str], str]]:
    """(Secret, keys the pods need, spec field naming it) for the Redis URL and the callback secrets."""
    out = []
    if spec.redis.url_secret:
        keys = [spec.redis.url_key] + ([spec.redis.ca_key] if spec.redis.ca_key else [])
        out.append((spec.redis.url_secret, keys, "redis.urlSecret"))
    if spec.jobs.enabled and spec.jobs.callbacks.allowed_hosts:
        out.append((spec.jobs.callbacks.secret_name, [render.CALLBACK_SECRETS_KEY],
                    "jobs.callbacks.secretName"))
    return out


def _pod_of_job(pod: dict[str, Any], job: dict[str, Any]) -> bool:
    uid = (job.get("metadata") or {}).get("uid")
    return any(ref.get("uid") == uid for ref in (pod.get("metadata") or {}).get("ownerReferences") or [])


def _serving_metrics(outcome: RolloutOutcome) -> Any:
    """The serving digest's validation metrics: the candidate's, once its rollout completed."""
    cand, model = outcome.model.candidate, outcome.model
    if (cand is not None and cand.state == "Passed" and outcome.rollout.state == "Complete"
            and outcome.rollout.target_digest == cand.digest):
        return cand.metrics
    return model.metrics


def _with_model(outcome: RolloutOutcome, **changes: Any) -> RolloutOutcome:
    return RolloutOutcome(
        template_digest=outcome.template_digest,
        model=outcome.model.model_copy(update=changes),
        rollout=outcome.rollout,
        degraded_reason=outcome.degraded_reason,
        message=outcome.message,
        event=outcome.event,
    )
