"""Watches as the API server's watch cache serves them.

- Every change is logged with its resourceVersion; a watch from `resourceVersion=N` replays what came
  after N (kopf lists, then watches from the list's version: nothing is sent twice), a watch without one
  (or from "0") starts with a synthetic ADDED per existing object. A version older than the log is a
  410 Expired ERROR event, as from a real server whose watch cache moved on.
- With a label or field selector, an object that starts matching arrives as ADDED and one that stops
  matching as DELETED (the cache filters old and new state, `watch.Filter`).
- The stream ends after `timeoutSeconds`.
"""

from __future__ import annotations

import asyncio
import collections
from dataclasses import dataclass, field
from typing import Any

import kmock

from kube_emulator.selectors import selected

Obj = dict[str, Any]
LOG_SIZE = 100_000


@dataclass(frozen=True)
class Change:
    rv: int
    resource: kmock.resource
    namespace: str | None
    type: str  # ADDED | MODIFIED | DELETED
    old: Obj | None
    new: Obj


@dataclass
class Watcher:
    resource: kmock.resource
    namespace: str | None
    name: str | None
    label_selector: str | None
    field_selector: str | None
    plural: str
    queue: asyncio.Queue[Obj] = field(default_factory=asyncio.Queue)

    def matches(self, obj: Obj | None) -> bool:
        if obj is None:
            return False
        meta = obj.get("metadata") or {}
        if self.namespace is not None and meta.get("namespace") != self.namespace:
            return False
        if self.name is not None and meta.get("name") != self.name:
            return False
        return selected(obj, self.label_selector, self.field_selector, self.plural)

    def event(self, change: Change) -> Obj | None:
        """The event this watcher sees for a change, if any."""
        if change.resource != self.resource:
            return None
        was, now = self.matches(change.old), self.matches(change.new) and change.type != "DELETED"
        if change.type == "DELETED":
            return {"type": "DELETED", "object": change.new} if self.matches(change.new) else None
        if was and now:
            return {"type": "MODIFIED", "object": change.new}
        if now:
            return {"type": "ADDED", "object": change.new}
        if was:
            return {"type": "DELETED", "object": change.new}
        return None


class ChangeLog:
    def __init__(self) -> None:
        self.changes: collections.deque[Change] = collections.deque(maxlen=LOG_SIZE)
        self.watchers: list[Watcher] = []

    def publish(self, change: Change) -> None:
        self.changes.append(change)
        for watcher in self.watchers:
            event = watcher.event(change)
            if event is not None:
                watcher.queue.put_nowait(event)

    def since(self, watcher: Watcher, rv: int) -> list[Obj] | None:
        """Events after `rv` for this watcher, or None when the log no longer reaches back that far."""
        if self.changes and rv < self.changes[0].rv - 1 and len(self.changes) == LOG_SIZE:
            return None
        events = []
        for change in self.changes:
            if change.rv > rv:
                event = watcher.event(change)
                if event is not None:
                    events.append(event)
        return events
