"""Reads from watch-fed caches instead of the API server: a pass with nothing to change makes no request.

`CachingKubeAPI` is the reconciler's `KubeAPI` with a cache in front of `get` for the kinds the operator
watches (handlers.py feeds every watch event to `observe`): the DeepDetectServices and the children it
owns (ConfigMap, Service, Deployment, HPA, PDB, NetworkPolicy; server-side label selector
`managed-by=deepdetect-operator`). Writes go to the API server and their answers update the cache, so the
next pass compares against what the server stored, not against a watch event still in flight.

- A cached object is compacted (no `managedFields` except our own Apply entry, which the replicas handover
  reads; no kopf bookkeeping annotations) and kept as compact JSON bytes: a Deployment as Python dicts is
  several times its JSON size, and 1,000 CRs mean 7,000 cached objects. A hit is parsed again (tens of
  microseconds), which also hands every caller its own copy to read or change.
- A newer version never loses to an older one arriving late (resourceVersions compared as numbers when
  both are: etcd revisions, which the emulator mimics; otherwise the latest write or event wins).
- A 404 is remembered for `absent_ttl_s` for child kinds (the HPA of a CR without autoscaling, say):
  an object created meanwhile by us arrives as an event or as our write's answer and replaces the entry;
  one created by someone else without our label is invisible to the watch, so the entry expires to bound
  how long the conflict check misses it. The CR itself is never negatively cached.
- Secrets are not watched (no list/watch on Secrets is granted). The operator's own (the generated API
  key, labelled managed-by) is kept for `secret_ttl_s` (runtime.py: half the resync interval), so a key
  rotated by hand still rolls the pods at the next resync, as documented, while the passes in between
  (checkpoint polls, child events) do not read it. Referenced user Secrets (no label) and Pods go straight
  to the server.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any

from deepdetect_operator import naming
from deepdetect_operator.api import GROUP
from deepdetect_operator.kubeapi import (
    CONFIGMAPS,
    DEEPDETECTSERVICES,
    DEPLOYMENTS,
    FIELD_MANAGER,
    HPAS,
    NETWORKPOLICIES,
    PDBS,
    SECRETS,
    SERVICES,
    KubeAPI,
    Resource,
    resource_of,
)

__all__ = ["CACHED", "WATCHED_CHILDREN", "CachingKubeAPI", "compact"]

WATCHED_CHILDREN = (CONFIGMAPS, SERVICES, DEPLOYMENTS, HPAS, PDBS, NETWORKPOLICIES)
CACHED = frozenset({DEEPDETECTSERVICES, *WATCHED_CHILDREN})
ABSENT_TTL_S = 300.0
SECRET_TTL_S = 30.0

Key = tuple[Resource, str, str]


def compact(obj: dict[str, Any]) -> dict[str, Any]:
    """`obj` without what the reconciler never reads (a shallow rebuild: nested values are shared)."""
    meta = dict(obj.get("metadata") or {})
    fields = meta.pop("managedFields", None) or []
    ours = [f for f in fields if f.get("manager") == FIELD_MANAGER and f.get("operation") == "Apply"]
    if ours:
        meta["managedFields"] = ours
    annotations = meta.get("annotations")
    if annotations:
        # kopf's bookkeeping (a copy of the whole spec, handler progress): the reconciler reads neither.
        kept = {k: v for k, v in annotations.items() if not (k.startswith(f"{GROUP}/") and _kopf_key(k))}
        meta["annotations"] = kept
    return {**obj, "metadata": meta}


def _kopf_key(key: str) -> bool:
    name = key.split("/", 1)[1]
    return name == "last-handled-configuration" or name.startswith("reconcile-") or name == "resync"


def _newer(new: str, old: str | None) -> bool:
    if old is None:
        return True
    if new.isdigit() and old.isdigit():
        return int(new) >= int(old)
    return True


def _pack(obj: dict[str, Any]) -> bytes:
    return json.dumps(compact(obj), separators=(",", ":")).encode()


class CachingKubeAPI(KubeAPI):
    def __init__(
        self,
        *args: Any,
        clock: Callable[[], float] = time.monotonic,
        secret_ttl_s: float = SECRET_TTL_S,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        self.clock = clock
        self.absent_ttl_s = ABSENT_TTL_S
        self._objects: dict[Key, tuple[str, bytes]] = {}  # key -> (resourceVersion, compact JSON)
        self._absent: dict[Key, float] = {}  # key -> when the 404 stops counting
        self.secret_ttl_s = secret_ttl_s
        self._secrets: dict[Key, tuple[dict[str, Any], float]] = {}  # our Secrets, until a deadline

    # ------------------------------------------------------------ fed by watches

    def observe(self, event_type: str, body: dict[str, Any]) -> None:
        """A watch event (kopf's raw event type and body) for a cached kind."""
        try:
            res = resource_of(body)
        except ValueError:
            return
        meta = body.get("metadata") or {}
        key = (res, str(meta.get("namespace") or ""), str(meta.get("name") or ""))
        if res not in CACHED or not key[2]:
            return
        if event_type == "DELETED":
            self._objects.pop(key, None)
            if res != DEEPDETECTSERVICES:
                self._absent[key] = self.clock() + self.absent_ttl_s
            return
        self._store(key, body)

    def _store(self, key: Key, obj: dict[str, Any]) -> None:
        if key[0] != DEEPDETECTSERVICES and not _ours(obj):
            return  # not watched (no label): a cached copy would go stale unseen
        rv = str((obj.get("metadata") or {}).get("resourceVersion") or "")
        stored = self._objects.get(key)
        if _newer(rv, stored[0] if stored else None):
            self._objects[key] = (rv, _pack(obj))
            self._absent.pop(key, None)

    def forget(self, namespace: str, name: str) -> None:
        """A CR is gone: drop it and its Secrets (a CR re-created under that name must not see the old
        API key, which the garbage collector deletes); its children's DELETED events drop theirs."""
        self._objects.pop((DEEPDETECTSERVICES, namespace, name), None)
        now = self.clock()
        for key, (obj, until) in list(self._secrets.items()):
            refs = (obj.get("metadata") or {}).get("ownerReferences") or []
            owned = key[1] == namespace and any(
                r.get("kind") == "DeepDetectService" and r.get("name") == name for r in refs
            )
            if owned or until <= now:
                del self._secrets[key]

    def cached(self) -> int:
        return len(self._objects) + len(self._secrets)

    # ------------------------------------------------------------ reads

    async def get(self, res: Resource, namespace: str | None, name: str) -> dict[str, Any] | None:
        if res == SECRETS:
            return await self._get_secret(namespace, name)
        if res not in CACHED:
            return await super().get(res, namespace, name)
        key = (res, namespace or "", name)
        hit = self._objects.get(key)
        if hit is not None:
            return json.loads(hit[1])  # type: ignore[no-any-return]
        until = self._absent.get(key)
        if until is not None and self.clock() < until:
            return None
        live = await super().get(res, namespace, name)
        if live is None:
            if res != DEEPDETECTSERVICES:
                self._absent[key] = self.clock() + self.absent_ttl_s
            return None
        self._store(key, live)
        return live

    async def _get_secret(self, namespace: str | None, name: str) -> dict[str, Any] | None:
        key = (SECRETS, namespace or "", name)
        hit = self._secrets.get(key)
        if hit is not None and self.clock() < hit[1]:
            return hit[0]
        self._secrets.pop(key, None)
        live = await super().get(SECRETS, namespace, name)
        if live is not None:
            self._keep_secret(key, live)
        return live

    def _keep_secret(self, key: Key, obj: dict[str, Any]) -> None:
        if _ours(obj):
            self._secrets[key] = (compact(obj), self.clock() + self.secret_ttl_s)

    # ------------------------------------------------------------ writes: the answer is the new truth

    async def create(self, obj: dict[str, Any]) -> dict[str, Any]:
        return self._remember(await super().create(obj))

    async def apply(self, obj: dict[str, Any], *, field_manager: str = FIELD_MANAGER) -> dict[str, Any]:
        return self._remember(await super().apply(obj, field_manager=field_manager))

    async def patch_status(
        self, res: Resource, namespace: str | None, name: str, status: dict[str, Any]
    ) -> dict[str, Any]:
        return self._remember(await super().patch_status(res, namespace, name, status))

    async def delete(
        self, res: Resource, namespace: str | None, name: str, *, uid: str | None = None
    ) -> bool:
        deleted = await super().delete(res, namespace, name, uid=uid)
        key = (res, namespace or "", name)
        if deleted and res in CACHED:
            self._objects.pop(key, None)
        return deleted

    def _remember(self, answer: dict[str, Any]) -> dict[str, Any]:
        if isinstance(answer, dict) and answer.get("kind"):
            try:
                res = resource_of(answer)
            except ValueError:
                return answer
            meta = answer.get("metadata") or {}
            key = (res, str(meta.get("namespace") or ""), str(meta.get("name") or ""))
            if res in CACHED and key[2]:
                self._store(key, answer)
            elif res == SECRETS and key[2]:
                self._keep_secret(key, answer)
        return answer


def _ours(obj: dict[str, Any]) -> bool:
    labels = (obj.get("metadata") or {}).get("labels") or {}
    return bool(labels.get(naming.LABEL_MANAGED_BY) == naming.MANAGED_BY)
