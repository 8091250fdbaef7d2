"""The emulator over real HTTP in its own thread and event loop: a stand-in cluster that synchronous
clients (the conformance replay, the existing-cluster test backend) reach through a URL or a kubeconfig."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import kmock

from kube_emulator.server import KubeEmulator

T = TypeVar("T")


class ThreadedEmulator:
    """`with ThreadedEmulator(make_emulator()) as cluster: cluster.url` ... stopped on exit."""

    def __init__(self, emu: KubeEmulator) -> None:
        self.emu = emu
        self.url = ""
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._ready = threading.Event()
        self._thread = threading.Thread(
            target=lambda: asyncio.run(self._main()), name="kube-emulator", daemon=True
        )

    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        async with self.emu, kmock.Server(self.emu) as server:
            self.url = str(server.url).rstrip("/")
            self._ready.set()
            await self._stop.wait()

    def __enter__(self) -> ThreadedEmulator:
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError("the emulator thread did not start")
        return self

    def __exit__(self, *exc: object) -> None:
        assert self._loop is not None and self._stop is not None
        self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(10)

    def call(self, fn: Callable[[], Awaitable[T] | T]) -> T:
        """Run `fn` on the emulator's loop (it is not thread-safe) and return its result."""
        assert self._loop is not None

        async def run() -> Any:
            result = fn()
            return await result if asyncio.iscoroutine(result) else result

        return asyncio.run_coroutine_threadsafe(run(), self._loop).result(30)  # type: ignore[no-any-return]
