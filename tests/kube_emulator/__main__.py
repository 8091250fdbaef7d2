"""`python -m kube_emulator --kubeconfig PATH`: the test API server alone, as a stand-in cluster.

It serves until interrupted and writes a kubeconfig pointing at itself, so anything that takes a
KUBECONFIG can run against it: `deepdetect-operator run`, kubectl, or the integration suites with
`DEEPDETECT_TEST_CLUSTER=existing` (the existing-cluster backend's code path, without a cluster).
Run with tests/ on PYTHONPATH.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
from pathlib import Path

import kmock
import yaml

from kube_emulator import make_emulator


def _kubeconfig(server: str) -> str:
    return yaml.safe_dump(
        {
            "apiVersion": "v1",
            "kind": "Config",
            "current-context": "kube-emulator",
            "clusters": [{"name": "kube-emulator", "cluster": {"server": server}}],
            "users": [{"name": "kube-emulator", "user": {"token": "kube-emulator"}}],
            "contexts": [
                {"name": "kube-emulator", "context": {"cluster": "kube-emulator", "user": "kube-emulator"}}
            ],
        }
    )


async def serve(port: int, kubeconfig: Path) -> None:
    emu = make_emulator()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    async with emu, kmock.Server(emu, port=port or None) as server:
        url = str(server.url).rstrip("/")
        await asyncio.to_thread(kubeconfig.write_text, _kubeconfig(url))
        print(f"serving {url}; KUBECONFIG={kubeconfig}", flush=True)
        await stop.wait()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m kube_emulator", description=__doc__.splitlines()[0])
    parser.add_argument("--kubeconfig", type=Path, required=True, help="where to write the kubeconfig")
    parser.add_argument("--port", type=int, default=0, help="port on 127.0.0.1 (default: a free one)")
    args = parser.parse_args(argv)
    asyncio.run(serve(args.port, args.kubeconfig))
    return 0


if __name__ == "__main__":
    sys.exit(main())
