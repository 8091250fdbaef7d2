"""What the result cache saves and what a job costs over a direct call, in-process and on a real Redis.

For each store (`memory`: no Redis; `redis`: a redis-server of our own on a loopback port) one
`deepdetect-server serve` subprocess, and distinct real photos (crops of scikit-image's):
- detect-miss: the first /v1/detect of a photo (the model runs; the verdict is stored);
- detect-hit:  the same photo again (X-Cache: hit; no model);
- job:         POST /v1/jobs of a photo not seen before, then GET every 5 ms until it succeeded: the full
               round trip of the async path (store, claim, lease, heartbeat, finish, read back).
One client, one request at a time: latency, not throughput. Prints a table of medians and a last line
`ratios: memory hit/miss=X job/detect=Y redis hit/miss=Z job/detect=W`, measured in one run.

    .venv/bin/python bench/jobs.py [--photos 24]
"""

from __future__ import annotations

import argparse
import io
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def photos(n: int, offset: int) -> list[bytes]:
    """`n` distinct JPEGs: crops of scikit-image photos at different places and sizes."""
    from PIL import Image
    from skimage import data

    arrays = [data.astronaut(), data.coffee(), data.chelsea(), data.rocket()]
    out = []
    for i in range(offset, offset + n):
        arr = arrays[i % len(arrays)]
        h, w = arr.shape[:2]
        y, x = (i * 7) % (h // 3), (i * 13) % (w // 3)
        buf = io.BytesIO()
        Image.fromarray(arr[y : y + h // 2 + i, x : x + w // 2 + i]).save(buf, "JPEG", quality=90)
        out.append(buf.getvalue())
    return out


@contextmanager
def redis_server() -> Iterator[str]:
    binary = shutil.which("redis-server")
    if binary is None:
        raise SystemExit("redis-server not found: apt-get install redis-server")
    port = free_port()
    proc = subprocess.Popen([binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                             "--appendonly", "no", "--daemonize", "no"], stdout=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=0.5) as s:
                    s.sendall(b"PING\r\n")
                    if s.recv(16).startswith(b"+PONG"):
                        break
            except OSError:
                time.sleep(0.02)
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        proc.terminate()
        proc.wait(timeout=10)


@contextmanager
def server(checkpoint: Path, env_extra: dict[str, str], log: Path) -> Iterator[str]:
    import httpx

    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(ROOT / "inference_server"), "DEEPDETECT_CPU_THREADS": "1",
           "DEEPDETECT_DECODE_WORKERS": "1", "DEEPDETECT_SHUTDOWN_DRAIN_S": "0",
           "DEEPDETECT_LOG_LEVEL": "warning", "DEEPDETECT_MAX_DELAY_MS": "0",
           "DEEPDETECT_JOBS_POLL_S": "0.05",
           **env_extra}
    with log.open("wb") as fh:
        cmd = [sys.executable, "-m", "deepdetect_server.cli", "serve", "--checkpoint", str(checkpoint),
               "--host", "127.0.0.1", "--port", str(port), "--device", "cpu"]
        proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            if proc.poll() is not None:
                raise RuntimeError(log.read_text()[-2000:])
            try:
                if httpx.get(f"{url}/v2/health/ready", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError("server not ready")
            time.sleep(0.1)
        yield url
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def measure(url: str, seen: list[bytes], fresh: list[bytes]) -> dict[str, float]:
    import httpx

    miss, hit, job = [], [], []
    with httpx.Client(base_url=url, timeout=60) as client:
        client.post("/v1/detect", content=fresh[-1])  # one warm request (connection, first batch)
        for body in seen:
            started = time.perf_counter()
            first = client.post("/v1/detect", content=body)
            miss.append(time.perf_counter() - started)
            started = time.perf_counter()
            again = client.post("/v1/detect", content=body)
            hit.append(time.perf_counter() - started)
            assert first.headers.get("X-Cache") == "miss" and again.headers.get("X-Cache") == "hit", \
                (first.headers, again.headers)
        for body in fresh[:-1]:
            started = time.perf_counter()
            location = client.post("/v1/jobs", content=body).headers["Location"]
            while client.get(location).json()["status"] != "succeeded":
                time.sleep(0.005)
            job.append(time.perf_counter() - started)
    return {"detect-miss": statistics.median(miss) * 1000, "detect-hit": statistics.median(hit) * 1000,
            "job": statistics.median(job) * 1000}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--photos", type=int, default=24)
    args = parser.parse_args(argv)
    sys.path.insert(0, str(ROOT / "inference_server"))
    from deepdetect_server.checkpoint import card_for_architecture, create_checkpoint

    seen, fresh = photos(args.photos, 0), photos(args.photos + 1, 1000)
    results: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory(prefix="deepdetect-bench-jobs-") as tmp, redis_server() as redis_url:
        ckpt = Path(tmp) / "model.safetensors"
        create_checkpoint(ckpt, card_for_architecture("test_efficientnet", 160))
        for store, env in (("memory", {}), ("redis", {"DEEPDETECT_REDIS_URL": redis_url})):
            with server(ckpt, env, Path(tmp) / f"{store}.log") as url:
                results[store] = measure(url, seen, fresh)
    print(f"test_efficientnet 160 px, CPU, one client, {args.photos} photos per column; medians in ms")
    print(f"{'store':8} {'detect-miss':>12} {'detect-hit':>11} {'job':>8}")
    for store, r in results.items():
        print(f"{store:8} {r['detect-miss']:12.2f} {r['detect-hit']:11.2f} {r['job']:8.2f}")
    parts = [f"{s} hit/miss={r['detect-hit'] / r['detect-miss']:.2f} "
             f"job/detect={r['job'] / r['detect-miss']:.2f}" for s, r in results.items()]
    print("ratios: " + " ".join(parts))
    return 0


if __name__ == "__main__":
    sys.exit(main())
