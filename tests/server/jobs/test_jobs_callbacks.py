"""Callbacks: a real HTTP receiver gets signed deliveries, a 500 is retried, a 4xx is final."""

from __future__ import annotations

import hashlib
import hmac
import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
from deepdetect_server.jobs.callbacks import host_allowed, sign
from jobs_helpers import bearer, key_file, metric, wait_job

pytestmark = pytest.mark.timeout(120)

SECRET = b"acme-signing-secret"
ACME = bearer("acme-key")


class Receiver:
    """A webhook receiver on a free port that answers the scripted statuses in turn (then 200)."""

    def __init__(self, statuses: list[int]) -> None:
        self.statuses = list(statuses)
        self.calls: list[dict[str, Any]] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                outer.calls.append({"headers": dict(self.headers), "body": body, "at": time.monotonic(),
                                    "path": self.path})
                status = outer.statuses.pop(0) if outer.statuses else 200
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *_: Any) -> None:
                return None

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/hooks/deepdetect"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def wait_calls(self, n: int, timeout: float = 30.0) -> list[dict[str, Any]]:
        deadline = time.monotonic() + timeout
        while len(self.calls) < n and time.monotonic() < deadline:
            time.sleep(0.02)
        assert len(self.calls) >= n, f"{len(self.calls)} deliveries, expected {n}"
        return self.calls


@pytest.fixture
def receiver(request: pytest.FixtureRequest) -> Iterator[Receiver]:
    recv = Receiver(getattr(request, "param", []))
    recv.thread.start()
    yield recv
    recv.httpd.shutdown()
    recv.httpd.server_close()


@pytest.fixture
def server(start_server, tmp_path: Path, redis_server, redis_prefix: str):
    keys = key_file(tmp_path / "api-key", "acme:acme-key\nglobex:globex-key\n")
    secrets = key_file(tmp_path / "callback-secrets", f"acme:{SECRET.decode()}\n")
    return start_server(auth_mode="apiKey", api_key_file=keys, redis_url=redis_server.url,
                        redis_key_prefix=redis_prefix, callback_allowed_hosts=["127.0.0.1", "*.example.com"],
                        callback_secret_file=secrets, callback_backoff_s=0.3, callback_max_attempts=3,
                        jobs_poll_s=0.05)


def verify(call: dict[str, Any]) -> dict[str, Any]:
    """What a receiver does: recompute the signature over timestamp.body, compare in constant time."""
    headers = {k.lower(): v for k, v in call["headers"].items()}
    expected = "sha256=" + hmac.new(SECRET, headers["x-deepdetect-timestamp"].encode() + b"." + call["body"],
                                    hashlib.sha256).hexdigest()
    assert hmac.compare_digest(headers["x-signature"], expected)
    assert abs(int(headers["x-deepdetect-timestamp"]) - time.time()) < 60
    return headers


@pytest.mark.parametrize("receiver", [[500]], indirect=True)
def test_callback_is_signed_and_retried_after_a_500(server, receiver: Receiver,
                                                    photos: dict[str, bytes]) -> None:
    resp = httpx.post(f"{server.url}/v1/jobs", files={"file": ("a.jpg", photos["astronaut"])},
                      data={"callback_url": receiver.url}, headers=ACME)
    assert resp.status_code == 202, resp.text
    job = wait_job(server.url, resp.headers["Location"], ACME)
    first, second = receiver.wait_calls(2)[:2]
    h1, h2 = verify(first), verify(second)
    assert h1["x-deepdetect-event-id"] == h2["x-deepdetect-event-id"]  # one event, delivered twice
    assert h1["x-deepdetect-event"] == "job.succeeded" and h1["content-type"] == "application/json"
    assert second["at"] - first["at"] >= 0.3 * 0.8  # backed off
    event = json.loads(second["body"])
    assert event["event"] == "job.succeeded" and event["job"]["id"] == job["id"]
    assert event["job"]["result"] == job["result"] and first["path"] == "/hooks/deepdetect"
    delivered = wait_job(server.url, resp.headers["Location"], ACME)
    deadline = time.monotonic() + 10
    while delivered["callback"]["state"] != "delivered" and time.monotonic() < deadline:
        time.sleep(0.05)
        delivered = httpx.get(server.url + resp.headers["Location"], headers=ACME).json()
    assert delivered["callback"] == {"url": receiver.url, "state": "delivered", "attempts": 2}
    time.sleep(0.8)
    assert len(receiver.calls) == 2  # delivered: never again
    text = httpx.get(f"{server.url}/metrics").text
    assert metric(text, "deepdetect_callbacks_total", result="retried") == 1
    assert metric(text, "deepdetect_callbacks_total", result="delivered") == 1


@pytest.mark.parametrize("receiver", [[404]], indirect=True)
def test_a_4xx_is_final_and_counted(server, receiver: Receiver, photos: dict[str, bytes]) -> None:
    resp = httpx.post(f"{server.url}/v1/jobs", content=photos["coffee"], headers=ACME,
                      params={"callback_url": receiver.url})
    assert resp.status_code == 202
    receiver.wait_calls(1)
    deadline = time.monotonic() + 10
    job = httpx.get(server.url + resp.headers["Location"], headers=ACME).json()
    while job["callback"]["state"] != "failed" and time.monotonic() < deadline:
        time.sleep(0.05)
        job = httpx.get(server.url + resp.headers["Location"], headers=ACME).json()
    assert job["callback"] == {"url": receiver.url, "state": "failed", "attempts": 1, "error": "HTTP 404"}
    time.sleep(0.8)
    assert len(receiver.calls) == 1
    assert metric(httpx.get(f"{server.url}/metrics").text, "deepdetect_callbacks_total", result="failed") == 1


@pytest.mark.parametrize("receiver", [[503, 503, 503]], indirect=True)
def test_attempts_are_bounded(server, receiver: Receiver, photos: dict[str, bytes]) -> None:
    resp = httpx.post(f"{server.url}/v1/jobs", content=photos["rocket"], headers=ACME,
                      params={"callback_url": receiver.url})
    receiver.wait_calls(3)
    time.sleep(1.5)
    assert len(receiver.calls) == 3  # callback_max_attempts
    job = httpx.get(server.url + resp.headers["Location"], headers=ACME).json()
    assert job["callback"]["state"] == "failed" and job["callback"]["attempts"] == 3


@pytest.mark.parametrize(("url", "why"), [
    ("http://10.0.0.1/hook", "not in this server's allow-list"),
    ("http://evil.example.com.attacker.net/hook", "not in this server's allow-list"),
    ("ftp://127.0.0.1/hook", "http:// or https://"),
    ("http://user:pw@127.0.0.1/hook", "credentials"),
    ("/relative", "absolute"),
])
def test_disallowed_callback_urls_are_refused(server, photos: dict[str, bytes], url: str, why: str) -> None:
    resp = httpx.post(f"{server.url}/v1/jobs", content=photos["coffee"], headers=ACME,
                      params={"callback_url": url})
    assert resp.status_code == 400 and why in resp.json()["error"]


def test_a_tenant_without_a_secret_gets_no_callbacks(server, photos: dict[str, bytes]) -> None:
    resp = httpx.post(f"{server.url}/v1/jobs", content=photos["coffee"], headers=bearer("globex-key"),
                      params={"callback_url": "http://127.0.0.1:9/hook"})
    assert resp.status_code == 400 and "no callback signing secret" in resp.json()["error"]


def test_allow_list_patterns() -> None:
    allowed = ["hooks.acme.io", "*.example.com"]
    assert host_allowed("hooks.acme.io", allowed) and host_allowed("HOOKS.ACME.IO.", allowed)
    assert host_allowed("a.example.com", allowed) and host_allowed("a.b.example.com", allowed)
    assert not host_allowed("example.com", allowed) and not host_allowed("badexample.com", allowed)
    assert not host_allowed("hooks.acme.io.evil", allowed)


def test_signature_is_hmac_of_timestamp_dot_body() -> None:
    expected = hmac.new(b"k", b"1700000000.{}", "sha256").hexdigest()
    assert sign(b"k", "1700000000", b"{}") == "sha256=" + expected
