"""kopf wiring only: which events call which reconcile entry point (STYLE #1, #2).

`build_registry` returns a fresh registry instead of decorating at import time, so intervals come from the
runtime configuration and tests can start several operators in one process. Every body is one or two lines;
the work happens in `reconcile.Reconciler`, reached through kopf's `memo`.
"""

from __future__ import annotations

from typing import Any

import kopf

from deepdetect_operator import naming
from deepdetect_operator.api import GROUP, PLURAL, VERSION
from deepdetect_operator.kubeapi import kopf_login
from deepdetect_operator.readcache import WATCHED_CHILDREN, CachingKubeAPI
from deepdetect_operator.reconcile import OperatorConfig

CHILD_LABELS = {naming.LABEL_MANAGED_BY: naming.MANAGED_BY}
CR = (GROUP, VERSION, PLURAL)


def build_registry(config: OperatorConfig) -> kopf.OperatorRegistry:
    registry = kopf.OperatorRegistry()

    @kopf.on.login(registry=registry)
    def login(memo: kopf.Memo, **kwargs: Any) -> kopf.ConnectionInfo | None:
        return kopf_login(memo.reconciler.api, **kwargs)

    @kopf.on.cleanup(registry=registry)
    async def cleanup(memo: kopf.Memo, **_: Any) -> None:
        await memo.reconciler.api.close()
        await memo.reconciler.resolver.close()

    @kopf.on.probe(id="reconciles", registry=registry)
    def reconciles(memo: kopf.Memo, **_: Any) -> int:
        return int(memo.reconciler.passes)

    @kopf.on.resume(*CR, id="reconcile-resume", registry=registry)
    @kopf.on.create(*CR, id="reconcile-create", registry=registry)
    @kopf.on.update(*CR, field="spec", id="reconcile-update", registry=registry)
    async def spec_changed(namespace: str, name: str, memo: kopf.Memo, logger: Any, **_: Any) -> None:
        await memo.reconciler.reconcile(namespace, name, logger=logger, force_resolve=True)

    @kopf.timer(
        *CR,
        interval=config.tick_seconds,
        initial_delay=config.tick_seconds,
        id="resync",
        errors=kopf.ErrorsMode.IGNORED,
        registry=registry,
    )
    async def resync(body: kopf.Body, memo: kopf.Memo, logger: Any, **_: Any) -> None:
        await memo.reconciler.tick(body, logger)

    @kopf.on.delete(*CR, id="forget", registry=registry)
    async def deleted(namespace: str, name: str, uid: str, memo: kopf.Memo, **_: Any) -> None:
        memo.reconciler.forget(namespace, name, uid)
        if isinstance(memo.reconciler.api, CachingKubeAPI):
            memo.reconciler.api.forget(namespace, name)

    # Every watch event of a cached kind feeds the reconciler's read cache (readcache.py) first; async, so
    # on the event loop with the reconciler (kopf runs sync handlers in worker threads).
    @kopf.on.event(*CR, id="cache-cr", registry=registry)
    async def cache_cr(type: str | None, event: kopf.RawEvent, memo: kopf.Memo, **_: Any) -> None:
        _observer(memo)(type or "ADDED", dict(event["object"]))

    for res in WATCHED_CHILDREN:
        if res.plural == "deployments":
            continue  # fed by the child-event handler below, before it triggers a pass

        @kopf.on.event(res.group, res.version, res.plural, labels=CHILD_LABELS, id=f"cache-{res.plural}",
                       registry=registry)  # fmt: skip
        async def cache_child(type: str | None, event: kopf.RawEvent, memo: kopf.Memo, **_: Any) -> None:
            _observer(memo)(type or "ADDED", dict(event["object"]))

    @kopf.index(*CR, id="dds_by_instance", registry=registry)
    async def dds_by_instance(namespace: str, name: str, status: kopf.Status, **_: Any) -> dict[Any, Any]:
        return {(namespace, naming.label_value(name)): (name, (status.get("rollout") or {}).get("state", ""))}

    def on_child_event(group: str, plural: str, *, pods: bool) -> None:
        @kopf.on.event(group, "v1", plural, labels=CHILD_LABELS, id=f"{plural[:-1]}-event", registry=registry)
        async def child_event(
            namespace: str,
            labels: kopf.Labels,
            dds_by_instance: kopf.Index[Any, Any],
            memo: kopf.Memo,
            logger: Any,
            type: str | None,
            event: kopf.RawEvent,
            **_: Any,
        ) -> None:
            if not pods:
                _observer(memo)(type or "ADDED", dict(event["object"]))
            elif "pod_transitions" in memo and not memo.pod_transitions.changed(type, event["object"]):
                return  # nothing the rollout reads moved (podfilter.py)
            await memo.reconciler.child_changed(namespace, labels, dds_by_instance, logger=logger, pods=pods)

    on_child_event("apps", "deployments", pods=False)
    on_child_event("", "pods", pods=True)
    on_child_event("batch", "jobs", pods=False)  # a validation Job finished: the gate opens or closes

    return registry


def _observer(memo: kopf.Memo) -> Any:
    """The read cache's `observe`, or a no-op for a reconciler built on a plain KubeAPI (unit use)."""
    return getattr(memo.reconciler.api, "observe", lambda *_: None)
