"""`deepdetect-server serve`: run the app under uvicorn with a Kubernetes-shaped shutdown.

On SIGTERM, in order (uvicorn's `Server.shutdown` does steps 3-4; we add 1-2 in front):
1. readiness goes false at once (`/v2/health/ready` answers 503), so endpoints drop the pod;
2. for `shutdown_drain_s` the socket stays open and requests are still served (the load balancer may
   not have noticed yet);
3. stop accepting, let accepted requests finish within what is left of `shutdown_grace_s`;
4. lifespan shutdown: batcher, threads and model are released. A second signal skips to the end.
A watchdog started by the first signal ends the process (exit code 4) if all this overruns the grace.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import socket
import sys
import threading
import time
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING

import uvicorn

from .config import ServerSettings, load_settings
from .logging_setup import setup_logging

if TYPE_CHECKING:
    from .core import Core

log = logging.getLogger("deepdetect.serve")

STARTUP_FAILED = 3
DEADLINE_MISSED = 4
_WATCHDOG_SLACK_S = 0.3


def _hard_exit(grace_s: float) -> None:
    """The last resort of the shutdown contract: whatever still runs (a forward pass on a starved CPU, a
    stuck worker), the process is gone within the grace period it promised, before the kubelet's SIGKILL."""
    log.error("shutdown grace period exceeded: exiting now", extra={"grace_s": grace_s})
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(DEADLINE_MISSED)


class GracefulServer(uvicorn.Server):
    """uvicorn.Server whose first SIGTERM/SIGINT drains before it shuts down."""

    def __init__(self, config: uvicorn.Config, core: Core, drain_s: float, grace_s: float) -> None:
        super().__init__(config)
        self.core = core
        self.drain_s = drain_s
        self.grace_s = grace_s
        self.drain_started: float | None = None

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        if self.drain_started is None and not self.should_exit:
            # Runs in the signal handler: only flip flags, the main loop's tick does the rest.
            self.drain_started = time.monotonic()
            self.core.begin_drain(exit_by=self.drain_started + self.grace_s)
            watchdog = threading.Timer(self.grace_s + _WATCHDOG_SLACK_S, _hard_exit, args=(self.grace_s,))
            watchdog.daemon = True
            watchdog.start()
            return
        self.should_exit = True  # second signal: stop draining, shut down now

    async def on_tick(self, counter: int) -> bool:
        if self.drain_started is not None and time.monotonic() - self.drain_started >= self.drain_s:
            return True
        return await super().on_tick(counter)


def build_server(settings: ServerSettings) -> GracefulServer:
    # Imported here so `deepdetect-server checkpoint ...` does not pay for torch + FastAPI at start-up.
    from .app import create_app
    from .core import Core

    core = Core(settings)
    app = create_app(settings, core)
    drain_s = min(settings.shutdown_drain_s, settings.shutdown_grace_s / 2)
    # Leave a second of the grace period for lifespan shutdown and interpreter exit.
    in_flight_s = max(0.1, settings.shutdown_grace_s - drain_s - 1.0)
    config = uvicorn.Config(app, host=settings.host, port=settings.port, log_config=None, access_log=False,
                            lifespan="on", timeout_graceful_shutdown=in_flight_s, server_header=False)
    return GracefulServer(config, core, drain_s, settings.shutdown_grace_s)


def serve(settings: ServerSettings, sock: socket.socket | None = None) -> int:
    server = build_server(settings)
    asyncio.run(server.serve(sockets=[sock] if sock is not None else None))
    return 0 if server.started else STARTUP_FAILED


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", type=Path, help="YAML settings file (the operator's ConfigMap)")
    parser.add_argument("--checkpoint", type=Path, help="local .safetensors checkpoint")
    parser.add_argument("--checkpoint-sha256", help="refuse any other bytes")
    parser.add_argument("--host")
    parser.add_argument("--port", type=int)
    parser.add_argument("--device", help="auto | cpu | cuda | cuda:N")
    parser.add_argument("--precision", choices=("fp32", "fp16", "bf16", "int8"))
    parser.add_argument("--runtime", choices=("torch", "onnxruntime", "auto"))
    parser.add_argument("--samples", type=Path, help="int8 sample set: a folder or a packed file")
    parser.add_argument("--model-name")
    parser.add_argument("--threshold", type=float)
    parser.add_argument("--max-batch-size", type=int)
    parser.add_argument("--max-delay-ms", type=float)
    parser.add_argument("--auth-mode", choices=("apiKey", "none"))
    parser.add_argument("--api-key-file", type=Path)
    parser.add_argument("--log-level", choices=("debug", "info", "warning", "error"))


def run(args: argparse.Namespace) -> int:
    names = ("checkpoint", "checkpoint_sha256", "host", "port", "device", "precision", "runtime", "samples",
             "model_name",
             "threshold", "max_batch_size", "max_delay_ms", "auth_mode", "api_key_file", "log_level")
    settings = load_settings(args.config, **{n: getattr(args, n) for n in names})
    setup_logging(settings.log_level)
    code = serve(settings)
    # Everything is closed and freed by now. Interpreter teardown with torch loaded still takes one to two
    # seconds of C destructors, which would eat into the grace period: flush and leave.
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
