"""A job as every store keeps it, and as the API shows it.

Stores keep records as flat string maps (a Redis hash); `JobRecord.from_fields` / `to_fields` are the only
translation, so the in-process and Redis stores cannot drift apart in what they remember.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from typing import Any, Literal, cast

JobState = Literal["queued", "running", "succeeded", "failed", "canceled"]
FinalState = Literal["succeeded", "failed", "canceled"]
TERMINAL: frozenset[str] = frozenset({"succeeded", "failed", "canceled"})
CallbackState = Literal["", "pending", "delivered", "failed"]


def _iso(ts: float | None) -> str | None:
    if ts is None:
        return None
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ts)) + f".{int(ts % 1 * 1000):03d}Z"


@dataclass
class JobRecord:
    id: str
    tenant: str
    state: JobState
    created_at: float
    updated_at: float
    params: dict[str, Any] = field(default_factory=dict)
    callback_url: str = ""
    size: int = 0
    started_at: float | None = None
    finished_at: float | None = None
    attempts: int = 0  # claims so far
    lost: int = 0  # leases that lapsed (the replica running it died)
    worker: str = ""
    result: dict[str, Any] | None = None
    error: dict[str, Any] | None = None  # {"status": int, "message": str}
    event_id: str = ""  # of the final event, stable across callback retries
    callback_state: CallbackState = ""
    callback_attempts: int = 0
    callback_error: str = ""

    @property
    def terminal(self) -> bool:
        return self.state in TERMINAL

    def public(self) -> dict[str, Any]:
        """The API's view (GET /v1/jobs/{id}, callback bodies)."""
        out: dict[str, Any] = {
            "id": self.id,
            "status": self.state,
            "created_at": _iso(self.created_at),
            "updated_at": _iso(self.updated_at),
            "started_at": _iso(self.started_at),
            "finished_at": _iso(self.finished_at),
            "attempts": self.attempts,
        }
        if self.result is not None:
            out["result"] = self.result
        if self.error is not None:
            out["error"] = self.error
        if self.callback_url:
            out["callback"] = {"url": self.callback_url, "state": self.callback_state or "pending",
                               "attempts": self.callback_attempts}
            if self.callback_error:
                out["callback"]["error"] = self.callback_error
        return out

    def to_fields(self) -> dict[str, str]:
        raw: dict[str, Any] = {
            "id": self.id, "tenant": self.tenant, "state": self.state, "created_at": self.created_at,
            "updated_at": self.updated_at, "params": json.dumps(self.params),
            "callback_url": self.callback_url,
            "size": self.size, "attempts": self.attempts, "lost": self.lost, "worker": self.worker,
            "event_id": self.event_id, "callback_state": self.callback_state,
            "callback_attempts": self.callback_attempts, "callback_error": self.callback_error,
            "started_at": self.started_at, "finished_at": self.finished_at,
            "result": None if self.result is None else json.dumps(self.result),
            "error": None if self.error is None else json.dumps(self.error),
        }
        return {k: repr(v) if isinstance(v, float) else str(v) for k, v in raw.items() if v is not None}

    @classmethod
    def from_fields(cls, f: dict[str, str]) -> JobRecord:
        def opt_float(name: str) -> float | None:
            return float(f[name]) if f.get(name) else None

        return cls(
            id=f["id"], tenant=f["tenant"], state=cast(JobState, f["state"]),
            created_at=float(f["created_at"]), updated_at=float(f["updated_at"]),
            params=json.loads(f.get("params") or "{}"), callback_url=f.get("callback_url", ""),
            size=int(f.get("size") or 0), started_at=opt_float("started_at"),
            finished_at=opt_float("finished_at"), attempts=int(f.get("attempts") or 0),
            lost=int(f.get("lost") or 0), worker=f.get("worker", ""),
            result=json.loads(f["result"]) if f.get("result") else None,
            error=json.loads(f["error"]) if f.get("error") else None,
            event_id=f.get("event_id", ""), callback_state=cast(CallbackState, f.get("callback_state", "")),
            callback_attempts=int(f.get("callback_attempts") or 0),
            callback_error=f.get("callback_error", ""),
        )


@dataclass(frozen=True)
class NewJob:
    """What a submission hands the store."""

    id: str
    tenant: str
    payload: bytes
    params: dict[str, Any]
    callback_url: str
    body_sha256: str  # of media + params + callback: the idempotency fingerprint
    idempotency_key: str | None  # already hashed; scoped to the tenant by the store


@dataclass(frozen=True)
class Submitted:
    job: JobRecord
    created: bool  # False: an idempotent replay of an earlier submission


@dataclass(frozen=True)
class Claim:
    """A job this worker holds the lease of; `token` proves it to every later store call."""

    job: JobRecord
    payload: bytes
    token: str
