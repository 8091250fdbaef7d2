"""SIGTERM under load, with the real CLI in a subprocess: not ready at once, nothing accepted is lost,
exit within the grace period; and the process's logs are JSON lines without keys."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest
from deepdetect_server.serve import DEADLINE_MISSED
from server_helpers import free_port, jpeg

pytestmark = pytest.mark.timeout(120)

KEY = "shutdown-test-key-51c2"
GRACE_S = 8.0


def wait_ready(url: str, proc: subprocess.Popen[bytes], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, "server exited during start-up"
        try:
            if httpx.get(f"{url}/v2/health/ready", timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    raise AssertionError("server never became ready")


async def wait_inflight(client: httpx.AsyncClient, at_least: int, within_s: float = 20.0) -> None:
    """Poll the server's own in-flight gauge until it holds `at_least` requests."""
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        text = (await client.get("/metrics")).text
        match = re.search(r"^deepdetect_inflight_requests(?:\{[^}]*\})? ([0-9.e+]+)$", text, re.MULTILINE)
        if match and float(match.group(1)) >= at_least:
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"the server never held {at_least} requests in flight")


def test_sigterm_under_load_loses_no_accepted_request(checkpoint: Path, tmp_path: Path, photo_arrays) -> None:
    keys = tmp_path / "api-key"
    keys.write_text(KEY + "\n")
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = {**os.environ, "DEEPDETECT_SHUTDOWN_DRAIN_S": "1.0", "DEEPDETECT_SHUTDOWN_GRACE_S": str(GRACE_S),
           "DEEPDETECT_MAX_BATCH_SIZE": "4", "DEEPDETECT_AUTH_MODE": "apiKey",
           "DEEPDETECT_API_KEY_FILE": str(keys), "DEEPDETECT_DECODE_WORKERS": "2",
           "DEEPDETECT_CACHE_ENABLED": "false"}  # repeated images must each reach the model
    log_path = tmp_path / "server.log"
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "deepdetect_server.cli", "serve", "--checkpoint", str(checkpoint),
             "--host", "127.0.0.1", "--port", str(port), "--device", "cpu"], stderr=log, env=env)
    try:
        wait_ready(url, proc)
        images = [jpeg(arr, side=1200 + 40 * i) for i, arr in enumerate(photo_arrays.values())] * 12
        headers = {"Authorization": f"Bearer {KEY}"}

        async def scenario() -> tuple[list[httpx.Response], int, list[int], float]:
            limits = httpx.Limits(max_connections=len(images) + 10)
            async with httpx.AsyncClient(base_url=url, timeout=30, limits=limits) as ac:
                load = [asyncio.create_task(ac.post("/v1/detect", content=img, headers=headers))
                        for img in images]
                # SIGTERM once the server holds at least half the load (a fixed sleep raced a fast machine).
                await wait_inflight(ac, len(load) // 2 + 1)
                proc.send_signal(signal.SIGTERM)
                unfinished = sum(not t.done() for t in load)
                sent = time.monotonic()
                await asyncio.sleep(0.05)
                ready = (await ac.get("/v2/health/ready")).status_code
                # During the drain window the pod is not ready but still answers (load balancer lag).
                late = await asyncio.gather(*(ac.post("/v1/detect", content=images[i], headers=headers)
                                              for i in range(3)))
                assert unfinished > len(load) // 2, "the load finished before SIGTERM: test proves nothing"
                return list(await asyncio.gather(*load)), ready, [r.status_code for r in late], sent

        responses, ready_after_term, late, sent = asyncio.run(scenario())
        assert proc.poll() is None, "server exited before in-flight requests finished"
        assert ready_after_term == 503
        code = proc.wait(timeout=GRACE_S + 2)
        exit_s = time.monotonic() - sent
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert [r.status_code for r in responses] == [200] * len(images)
    assert late == [200, 200, 200]
    assert code == 0 and exit_s < GRACE_S
    text = log_path.read_text()
    assert KEY not in text
    records = [json.loads(line) for line in text.splitlines() if line.strip()]
    messages = {r["msg"] for r in records}
    assert {"model ready", "draining: readiness is now false", "stopped"} <= messages
    served = [r for r in records if r.get("route") == "/v1/detect" and r.get("status") == 200]
    assert len(served) == len(images) + 3


def test_backlog_longer_than_the_grace_period_still_exits_in_time(tmp_path: Path, photo_arrays) -> None:
    """More accepted work than the grace allows: the process still exits on time, and says so in a 503
    or a closed connection, never by hanging."""
    from server_helpers import make_checkpoint

    slow = make_checkpoint(tmp_path / "slow.safetensors", 320)
    grace = 3.0
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = {**os.environ, "DEEPDETECT_SHUTDOWN_DRAIN_S": "0.5", "DEEPDETECT_SHUTDOWN_GRACE_S": str(grace),
           "DEEPDETECT_MAX_BATCH_SIZE": "2", "DEEPDETECT_DECODE_WORKERS": "1", "DEEPDETECT_MAX_QUEUE": "1000",
           "DEEPDETECT_CACHE_ENABLED": "false"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "deepdetect_server.cli", "serve", "--checkpoint", str(slow),
         "--host", "127.0.0.1", "--port", str(port), "--device", "cpu"], stderr=subprocess.DEVNULL, env=env)
    exited: list[float] = []
    watcher = threading.Thread(target=lambda: (proc.wait(), exited.append(time.monotonic())), daemon=True)
    watcher.start()
    try:
        wait_ready(url, proc)
        images = [jpeg(arr, side=1400) for arr in photo_arrays.values()] * 60

        async def scenario() -> tuple[list[object], float]:
            limits = httpx.Limits(max_connections=len(images))
            async with httpx.AsyncClient(base_url=url, timeout=30, limits=limits) as ac:
                load = [asyncio.create_task(ac.post("/v1/detect", content=img)) for img in images]
                await asyncio.sleep(0.5)
                proc.send_signal(signal.SIGTERM)
                sent = time.monotonic()
                return list(await asyncio.gather(*load, return_exceptions=True)), sent

        outcomes, sent = asyncio.run(scenario())
        code = proc.wait(timeout=grace + 5)
        watcher.join(timeout=5)
        exit_s = exited[0] - sent
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    # 0: everything accepted was answered or refused in time; 4: the watchdog ended work that overran the
    # grace (a starved CPU mid-forward). Either way the process is gone on time.
    assert code in (0, DEADLINE_MISSED) and exit_s < grace + 0.5
    ok = [o for o in outcomes if isinstance(o, httpx.Response) and o.status_code == 200]
    refused = [o for o in outcomes if isinstance(o, httpx.Response) and o.status_code == 503]
    dropped = [o for o in outcomes if isinstance(o, httpx.TransportError)]
    assert ok and refused  # the backlog is told to retry elsewhere
    assert all("shutting down" in r.json()["error"] for r in refused)
    assert len(ok) + len(refused) + len(dropped) == len(images)


def test_pinned_digest_mismatch_refuses_to_start(checkpoint: Path, tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "deepdetect_server.cli", "serve", "--checkpoint", str(checkpoint),
         "--checkpoint-sha256", "ab" * 32, "--port", str(free_port()), "--host", "127.0.0.1"],
        capture_output=True, text=True, timeout=60)
    assert result.returncode != 0
    errors = [json.loads(line) for line in result.stderr.splitlines() if '"startup failed"' in line]
    assert errors and "does not match its pinned digest" in errors[0]["error"]


@pytest.mark.parametrize(("env", "message"), [
    ({"DEEPDETECT_EXPECT_ARCHITECTURE": "efficientnet_b4"},
     "is a 'test_efficientnet' model but the service expects 'efficientnet_b4'"),
    ({"DEEPDETECT_EXPECT_INPUT_SIZE": "380"}, "expects 160 px inputs but the service declares 380"),
])
def test_checkpoint_contradicting_the_service_refuses_to_start(
        checkpoint: Path, env: dict[str, str], message: str) -> None:
    """The operator passes the CR's architecture and input size: another model's file must not serve."""
    result = subprocess.run(
        [sys.executable, "-m", "deepdetect_server.cli", "serve", "--checkpoint", str(checkpoint),
         "--port", str(free_port()), "--host", "127.0.0.1"],
        capture_output=True, text=True, timeout=60, env={**os.environ, **env})
    assert result.returncode != 0
    errors = [json.loads(line) for line in result.stderr.splitlines() if '"startup failed"' in line]
    assert errors and message in errors[0]["error"]
