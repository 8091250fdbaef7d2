"""Which Pod events can change a rollout's verdict: readiness, restarts, init or container failures.

A busy cluster sends Pod events for many things the rollout state machine (rollout.py) never reads
(conditions' probe times, IPs, resource-version bumps). `PodTransitions.changed` keeps one small signature per
Pod (what `_failure` and readiness depend on) and answers True only when it moved, so those events cost a dict
lookup instead of a reconcile pass (with its Pod LIST). Deletions and first sightings always count.
"""

from __future__ import annotations

from typing import Any

__all__ = ["PodTransitions", "signature"]

Signature = tuple[Any, ...]


def _container(cs: dict[str, Any]) -> tuple[Any, ...]:
    state = cs.get("state") or {}
    last = (cs.get("lastState") or {}).get("terminated") or {}
    term = state.get("terminated") or {}
    return (
        cs.get("name"),
        bool(cs.get("ready")),
        int(cs.get("restartCount") or 0),
        next(iter(state), ""),  # running / waiting / terminated
        (state.get("waiting") or {}).get("reason", ""),
        term.get("exitCode"),
        last.get("exitCode"),
    )


def signature(pod: dict[str, Any]) -> Signature:
    meta, status = pod.get("metadata") or {}, pod.get("status") or {}
    ready = next((c.get("status") for c in status.get("conditions") or [] if c.get("type") == "Ready"), None)
    return (
        status.get("phase"),
        ready,
        bool(meta.get("deletionTimestamp")),
        tuple(_container(cs) for cs in status.get("initContainerStatuses") or []),
        tuple(_container(cs) for cs in status.get("containerStatuses") or []),
    )


class PodTransitions:
    def __init__(self) -> None:
        self._last: dict[str, Signature] = {}  # pod uid -> signature; one entry per live Pod of ours

    def changed(self, event_type: str | None, pod: dict[str, Any]) -> bool:
        uid = str((pod.get("metadata") or {}).get("uid") or "")
        if event_type == "DELETED":
            self._last.pop(uid, None)
            return True
        sig = signature(pod)
        if self._last.get(uid) == sig:
            return False
        self._last[uid] = sig
        return True

    def __len__(self) -> int:
        return len(self._last)
