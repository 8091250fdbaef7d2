"""`make demo`: the whole data plane on one CPU, no cluster, in about half a minute.

Creates an UNTRAINED demo checkpoint, starts the server in a subprocess on a free port, sends a real photo
(scikit-image's astronaut) to /v1/detect, prints the verdict, shows what the operator would create for
examples/cpu.yaml (when that part is installed), and stops the server with SIGTERM as Kubernetes would.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

ARCH, SIZE = "test_efficientnet", 160
UNTRAINED = (
    "NOTE: the demo checkpoint is UNTRAINED (random weights): its verdict means nothing. "
    "To serve a real detector, see docs/server.md 'Serving a real checkpoint'."
)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def photo_jpeg() -> bytes:
    from PIL import Image
    from skimage import data

    buf = io.BytesIO()
    Image.fromarray(data.astronaut()).save(buf, "JPEG", quality=90)
    return buf.getvalue()


def wait_ready(base: str, proc: subprocess.Popen[bytes], timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with code {proc.returncode} before it was ready")
        try:
            if httpx.get(f"{base}/v2/health/ready", timeout=1.0).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.25)
    raise RuntimeError("server did not become ready in time")


def show_operator_render() -> None:
    root = Path.cwd()
    example = root / "examples" / "cpu.yaml"
    exe = shutil.which("deepdetect-operator") or str(Path(sys.executable).with_name("deepdetect-operator"))
    if not example.exists() or not Path(exe).exists():
        print("\n(skipping the operator preview: deepdetect-operator or examples/cpu.yaml is not there yet)")
        return
    print(f"\n== what the operator would create for {example.relative_to(root)} "
          "(deepdetect-operator render -f examples/cpu.yaml) ==")
    result = subprocess.run([exe, "render", "-f", str(example)], capture_output=True, text=True, timeout=120)
    print(result.stdout if result.returncode == 0 else f"(render failed: {result.stderr.strip()[-500:]})")


def main() -> int:
    print(UNTRAINED)
    with tempfile.TemporaryDirectory(prefix="deepdetect-demo-") as tmp:
        ckpt = Path(tmp) / "demo.safetensors"
        cli = [sys.executable, "-m", "deepdetect_server.cli"]
        print(f"\n== creating a demo checkpoint ({ARCH}, {SIZE}px, random init) ==")
        subprocess.run([*cli, "checkpoint", "create", "--arch", ARCH, "--input-size", str(SIZE),
                        "--out", str(ckpt)], check=True)
        port = free_port()
        base = f"http://127.0.0.1:{port}"
        log_path = Path(tmp) / "server.log"
        print(f"\n== starting the server on {base} (CPU; JSON logs in {log_path.name}) ==")
        env = {**os.environ, "DEEPDETECT_SHUTDOWN_DRAIN_S": "0"}
        with log_path.open("wb") as log_file:
            proc = subprocess.Popen([*cli, "serve", "--checkpoint", str(ckpt), "--host", "127.0.0.1",
                                     "--port", str(port), "--device", "cpu"], stderr=log_file, env=env)
            try:
                try:
                    wait_ready(base, proc)
                except RuntimeError:
                    print(log_path.read_text()[-3000:], file=sys.stderr)
                    raise
                print("ready:", httpx.get(f"{base}/v2/health/ready").json())
                print("\n== POST /v1/detect with a real photo (skimage.data.astronaut, JPEG) ==")
                print(f"   curl -F file=@astronaut.jpg {base}/v1/detect")
                resp = httpx.post(f"{base}/v1/detect", files={"file": ("astronaut.jpg", photo_jpeg(),
                                                                      "image/jpeg")}, timeout=30)
                print(json.dumps(resp.json(), indent=2))
                print(UNTRAINED)
                show_operator_render()
            finally:
                proc.send_signal(signal.SIGTERM)
                try:
                    code = proc.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    code = proc.wait()
        print(f"\n== server stopped (SIGTERM, exit code {code}) ==")
        return 0 if resp.status_code == 200 and code == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
