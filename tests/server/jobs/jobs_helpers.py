"""Helpers for the jobs tests: poll a job to its final state, read a metric, write key files."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
from server_helpers import metric

__all__ = ["FINAL", "ServerProcess", "bearer", "key_file", "metric", "wait_job"]

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


def key_file(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


class ServerProcess:
    """`deepdetect-server serve` in its own process (a replica), configured by DEEPDETECT_* variables."""

    def __init__(self, checkpoint: Path, log_path: Path, **settings: object) -> None:
        from server_helpers import free_port

        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = {**os.environ, "DEEPDETECT_DECODE_WORKERS": "1", "DEEPDETECT_CPU_THREADS": "1",
               "DEEPDETECT_SHUTDOWN_DRAIN_S": "0"}
        env.update({f"DEEPDETECT_{k.upper()}": json.dumps(v) if isinstance(v, list | dict) else str(v)
                    for k, v in settings.items()})
        self.log_path = log_path
        with log_path.open("wb") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "deepdetect_server.cli", "serve", "--checkpoint", str(checkpoint),
                 "--host", "127.0.0.1", "--port", str(self.port), "--device", "cpu"], stderr=log, env=env)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def wait_ready(self, timeout: float = 90.0) -> ServerProcess:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"server exited: {self.log_path.read_text()[-2000:]}")
            try:
                if httpx.get(f"{self.url}/v2/health/ready", timeout=1).status_code == 200:
                    return self
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        raise AssertionError("server never became ready")

    def logs(self) -> list[dict[str, Any]]:
        out = []
        for line in self.log_path.read_text().splitlines():
            with contextlib.suppress(json.JSONDecodeError):
                out.append(json.loads(line))
        return out

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGCONT)  # a test may have left it stopped
            self.proc.terminate()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
