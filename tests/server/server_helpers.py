"""Helpers for the server tests (a module with a unique name: several test folders have a conftest)."""

from __future__ import annotations

import asyncio
import io
import re
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
from deepdetect_server.checkpoint import card_for_architecture, create_checkpoint
from deepdetect_server.config import ServerSettings
from deepdetect_server.serve import GracefulServer, build_server
from PIL import Image

ARCH = "test_efficientnet"


def jpeg(arr: np.ndarray, quality: int = 90, side: int | None = None) -> bytes:
    img = Image.fromarray(arr)
    if side is not None:
        w, h = img.size
        img = img.resize((side, round(side * h / w)), Image.Resampling.LANCZOS)
    buf = io.BytesIO()
    img.convert("RGB").save(buf, "JPEG", quality=quality)
    return buf.getvalue()


def encode(arr: np.ndarray, fmt: str, **kw: object) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, fmt, **kw)
    return buf.getvalue()


def make_checkpoint(path: Path, input_size: int = 160, **card: object) -> Path:
    create_checkpoint(path, card_for_architecture(ARCH, input_size, **card))
    return path


def metric(text: str, name: str, **labels: str) -> float:
    """Sum of a metric's samples whose labels include `labels` (0 when absent)."""
    total = 0.0
    for m in re.finditer(rf"^{re.escape(name)}(\{{[^}}]*\}})? ([0-9.eE+-]+)$", text, re.MULTILINE):
        got = dict(re.findall(r'(\w+)="([^"]*)"', m.group(1) or ""))
        if all(got.get(k) == v for k, v in labels.items()):
            total += float(m.group(2))
    return total


def free_socket() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    return sock


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class ThreadedServer:
    """The real server (uvicorn + GracefulServer) on a real socket, in a thread with its own loop."""

    def __init__(self, settings: ServerSettings) -> None:
        self.sock = free_socket()
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self.server: GracefulServer = build_server(settings)
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        asyncio.run(self.server.serve(sockets=[self.sock]))

    def start(self, timeout: float = 60.0) -> ThreadedServer:
        self.thread.start()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{self.url}/v2/health/ready", timeout=2).status_code == 200:
                    return self
            except httpx.TransportError:
                pass
            if not self.thread.is_alive():
                raise RuntimeError("server thread died during start-up")
            time.sleep(0.1)
        raise RuntimeError("server did not become ready")

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)
        self.sock.close()


def server_fixture(settings: ServerSettings) -> Iterator[ThreadedServer]:
    srv = ThreadedServer(settings).start()
    try:
        yield srv
    finally:
        srv.stop()



class RedisProcess:
    """A real `redis-server` of our own on a free loopback port; stop and start it again on the same port.

    `persist_dir` turns on the append-only file there, so a restart keeps what was written (as a
    production Redis that holds jobs must). `tls` = (cert, key, CA) files serves TLS only (rediss://);
    `password` sets requirepass."""

    def __init__(self, persist_dir: Path | None = None, tls: tuple[Path, Path, Path] | None = None,
                 password: str | None = None) -> None:
        import shutil

        self.binary = shutil.which("redis-server")
        if self.binary is None:
            raise RuntimeError("redis-server not found: apt-get install redis-server (.ci/run installs it)")
        self.port = free_port()
        self.persist_dir = persist_dir
        self.tls = tls
        self.password = password
        auth = f":{password}@" if password else ""
        self.url = f"{'rediss' if tls else 'redis'}://{auth}127.0.0.1:{self.port}/0"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 10.0) -> RedisProcess:
        assert self.binary is not None
        args = [self.binary, "--bind", "127.0.0.1", "--save", "", "--daemonize", "no",
                "--loglevel", "warning"]
        if self.tls is not None:
            cert, key, ca = self.tls
            args += ["--port", "0", "--tls-port", str(self.port), "--tls-cert-file", str(cert),
                     "--tls-key-file", str(key), "--tls-ca-cert-file", str(ca), "--tls-auth-clients", "no"]
        else:
            args += ["--port", str(self.port)]
        if self.password:
            args += ["--requirepass", self.password]
        if self.persist_dir is not None:
            args += ["--appendonly", "yes", "--appendfsync", "always", "--dir", str(self.persist_dir)]
        else:
            args += ["--appendonly", "no"]
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.ping():
                return self
            if self.proc.poll() is not None:
                raise RuntimeError(f"redis-server exited with {self.proc.returncode}")
            time.sleep(0.02)
        raise RuntimeError("redis-server did not answer PING")

    def ping(self) -> bool:
        import redis

        options = {"ssl_ca_certs": str(self.tls[2])} if self.tls else {}
        client = redis.Redis.from_url(self.url, socket_timeout=0.5, socket_connect_timeout=0.5, **options)
        try:
            return bool(client.ping())
        except (redis.RedisError, OSError):
            return False
        finally:
            client.close()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=10)
        self.proc = None
