"""Start-up time per runtime, with an empty runtime cache and with the cache the first start left behind.

For each runtime (torch, onnxruntime, int8) it starts `deepdetect-server serve` on a fresh cache folder,
times process start to `/v2/health/ready` 200, stops it (SIGTERM), then starts it again on the same folder
and times that too. The server's own `model ready` line says what the time went on (graph export or cache
read, quantization, parity, the thread plan's timing runs). Servers run one at a time.

    python bench/startup.py --arch efficientnet_b0 --input-size 224
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from bare import make_checkpoint  # noqa: E402
from server import free_port, make_photos, ready_line, server_cli, start, stop, torch_env, wait_ready  # noqa: E402

CONFIGS = {"torch": ["--runtime", "torch"], "onnxruntime": ["--runtime", "onnxruntime"],
           "int8": ["--runtime", "onnxruntime", "--precision", "int8"]}


def time_start(ckpt: Path, cache: Path, extra: list[str], env: dict[str, str], logdir: Path, name: str
               ) -> tuple[float, dict[str, object]]:
    port = free_port()
    cmd = [*server_cli(), "serve", "--checkpoint", str(ckpt), "--host", "127.0.0.1", "--port", str(port),
           "--device", "cpu", *extra]
    t0 = time.perf_counter()
    srv = start(name, cmd, port, "/v2/health/ready", {**env, "DEEPDETECT_RUNTIME_CACHE_DIR": str(cache)},
                logdir)
    try:
        wait_ready([srv], timeout=900)
        return time.perf_counter() - t0, ready_line(srv.log)
    finally:
        stop(srv)


def graph_origin(ready: dict[str, object], runtime: str) -> str:
    """export, cache or supplied: where the served graph came from (torch has none)."""
    sel = ready.get("selection") or {}
    cands = sel.get("candidates", {}) if isinstance(sel, dict) else {}
    key = "onnxruntime-int8" if runtime == "int8" else "onnxruntime"
    return str(cands.get(key, {}).get("graph", "-"))


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--arch", default="test_efficientnet")
    p.add_argument("--input-size", type=int, default=160)
    p.add_argument("--runtimes", default="torch,onnxruntime,int8")
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="deepdetect-startup-") as tmp:
        root = Path(tmp)
        ckpt = root / "model.safetensors"
        make_checkpoint(ckpt, args.arch, args.input_size)
        samples = root / "samples"
        samples.mkdir()
        for i, jpg in enumerate(make_photos(32, 300, 1400, quality=85)):
            (samples / f"s{i:02d}.jpg").write_bytes(jpg)
        env = torch_env(0, {"DEEPDETECT_SAMPLES": str(samples), "DEEPDETECT_SHUTDOWN_DRAIN_S": "0"})
        print(f"start-up to ready, {args.arch} {args.input_size}px on CPU (seconds)")
        print(f"{'runtime':<12} {'cold cache':>10} {'warm cache':>10} {'graph (cold -> warm)':>22}")
        for name in [r.strip() for r in args.runtimes.split(",") if r.strip()]:
            cache = root / f"cache-{name}"
            cold, first = time_start(ckpt, cache, CONFIGS[name], env, root, f"{name}-cold")
            warm, second = time_start(ckpt, cache, CONFIGS[name], env, root, f"{name}-warm")

            graphs = f"{graph_origin(first, name)} -> {graph_origin(second, name)}"
            print(f"{name:<12} {cold:>10.1f} {warm:>10.1f} {graphs:>22}",
                  flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
