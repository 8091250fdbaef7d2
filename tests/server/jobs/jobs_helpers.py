"""Helpers for the jobs tests: poll a job to its final state, read a metric, write key files."""

from __future__ import annotations

import re
import time
from pathlib import Path
from typing import Any

import httpx

FINAL = {"succeeded", "failed", "canceled"}


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def wait_job(url: str, location: str, headers: dict[str, str], timeout: float = 60.0,
             until: set[str] | None = None) -> dict[str, Any]:
    """GET the job until its status is in `until` (default: a final one); the last body."""
    until = until or FINAL
    deadline = time.monotonic() + timeout
    body: dict[str, Any] = {}
    while time.monotonic() < deadline:
        resp = httpx.get(url + location, headers=headers, timeout=10)
        if resp.status_code == 200:
            body = resp.json()
            if body["status"] in until:
                return body
        time.sleep(0.05)
    raise AssertionError(f"job {location} never reached {sorted(until)}; last seen {body}")


def metric(text: str, name: str, **labels: str) -> float:
    """Sum of a metric's samples whose labels include `labels` (0 when absent)."""
    total = 0.0
    for m in re.finditer(rf"^{re.escape(name)}(\{{[^}}]*\}})? ([0-9.eE+-]+)$", text, re.MULTILINE):
        got = dict(re.findall(r'(\w+)="([^"]*)"', m.group(1) or ""))
        if all(got.get(k) == v for k, v in labels.items()):
            total += float(m.group(2))
    return total


def key_file(path: Path, text: str) -> Path:
    path.write_text(text)
    return path
