"""Real local servers for the checkpoint tests: an HTTP file server whose files change, and moto's S3."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from email.utils import formatdate
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from rollout_helpers import S3_CREDS, Bucket, FileServer


def _handler(state: FileServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args: Any) -> None:  # keep pytest output clean
            pass

        def _serve(self, with_body: bool) -> None:
            state.requests.append((self.command, self.path))
            if state.delay_s:
                time.sleep(state.delay_s)
            if state.fail_5xx > 0:
                state.fail_5xx -= 1
                self._plain(503, b"busy")
                return
            if state.require_token and self.headers.get("Authorization") != f"Bearer {state.require_token}":
                self._plain(401, b"no")
                return
            if self.command == "HEAD" and state.head_not_allowed:
                self._plain(405, b"")
                return
            served = state.files.get(self.path.split("?", 1)[0])
            if served is None:
                self._plain(404, b"not found")
                return
            self.send_response(200)
            self.send_header("Content-Type", "application/octet-stream")
            if served.etag:
                self.send_header("ETag", served.etag)
            if served.last_modified is not None:
                self.send_header("Last-Modified", formatdate(served.last_modified, usegmt=True))
            if served.content_length:
                self.send_header("Content-Length", str(len(served.body)))
            else:
                self.send_header("Connection", "close")
            self.end_headers()
            if with_body:
                self.wfile.write(served.body[: served.cut_at])
            if not served.content_length or served.cut_at is not None:
                self.close_connection = True

        def _plain(self, code: int, body: bytes) -> None:
            self.send_response(code)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)

        def do_GET(self) -> None:
            self._serve(True)

        def do_HEAD(self) -> None:
            self._serve(False)

    return Handler


class _QuietServer(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # clients that hang up early (timeouts, HEAD-less GETs) are part of the tests


@pytest.fixture
def file_server() -> Iterator[FileServer]:
    state = FileServer(url="")
    server = _QuietServer(("127.0.0.1", 0), _handler(state))
    state.url = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield state
    finally:
        server.shutdown()
        server.server_close()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def moto_endpoint() -> Iterator[str]:
    """moto's S3-compatible server on a free loopback port, shared by a module's tests."""
    from moto.server import ThreadedMotoServer

    port = _free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.stop()


@pytest.fixture
def s3(moto_endpoint: str) -> Bucket:
    """A boto3 client on moto with a fresh bucket per test (moto keeps state across a module)."""
    import uuid

    import boto3

    client = boto3.client(
        "s3",
        endpoint_url=moto_endpoint,
        aws_access_key_id=S3_CREDS["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=S3_CREDS["AWS_SECRET_ACCESS_KEY"],
        region_name=S3_CREDS["AWS_REGION"],
    )
    name = f"models-{uuid.uuid4().hex[:12]}"
    client.create_bucket(Bucket=name)
    return Bucket(client, name, moto_endpoint)
