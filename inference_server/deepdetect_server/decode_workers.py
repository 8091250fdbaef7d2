"""Video decoding in worker processes the server can kill: a hostile file hurts only its worker.

FFmpeg parses untrusted bytes in C. A file that makes it spin, crash or allocate without bound must cost
one request, not the server: each worker is a spawned process (no forked locks or CUDA state), with an
address-space limit, serving one job at a time over a pipe. Past the decode deadline, or when its pipe
breaks (it crashed or was killed), the worker is killed and a fresh one takes its place; only the request
it was serving gets an error. `concurrent.futures.ProcessPoolExecutor` cannot do that: one dead worker
breaks the whole pool and fails every pending future.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import multiprocessing
import os
import time
from collections.abc import Callable
from multiprocessing.connection import Connection
from typing import Any

from .errors import DecodeFailed, DeepDetectError

log = logging.getLogger("deepdetect.decode")

Job = tuple[Callable[..., Any], tuple[Any, ...]]  # a module-level function and its arguments (picklable)


def _serve(conn: Connection, memory_mb: int) -> None:
    """Worker main loop: run jobs until the pipe closes; errors travel back as values."""
    with contextlib.suppress(ImportError, ValueError, OSError):
        import resource

        limit = memory_mb * 1024 * 1024
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    while True:
        try:
            fn, args = conn.recv()
        except (EOFError, OSError):
            return
        try:
            reply: tuple[str, Any] = ("ok", fn(*args))
        except DeepDetectError as exc:
            reply = ("error", exc)
        except MemoryError:
            reply = ("error", DecodeFailed("decoding the video needed more memory than a worker may use"))
        except Exception as exc:  # a decoder bug: this request fails, the worker lives on
            reply = ("error", DecodeFailed(f"decoding failed: {type(exc).__name__}"))
        conn.send(reply)


class _Worker:
    def __init__(self, ctx: Any, memory_mb: int) -> None:
        self.conn, child = ctx.Pipe()
        self.process = ctx.Process(target=_serve, args=(child, memory_mb), daemon=True,
                                   name="deepdetect-decode-worker")
        self.process.start()
        child.close()

    @property
    def pid(self) -> int:
        return int(self.process.pid or 0)

    def call(self, job: Job, timeout_s: float) -> Any:
        """Blocking: send the job, wait for its reply until the deadline (run in a thread)."""
        self.conn.send(job)
        if not self.conn.poll(timeout_s):
            raise TimeoutError
        status, value = self.conn.recv()  # EOFError when the worker died
        if status == "error":
            raise value
        return value

    def kill(self) -> None:
        with contextlib.suppress(Exception):
            self.process.kill()
            self.process.join(5)
        with contextlib.suppress(Exception):
            self.conn.close()


class DecodeWorkers:
    """`await run(job, timeout_s)` on an idle worker; a worker past its deadline or dead is replaced."""

    def __init__(self, size: int, memory_mb: int, on_replace: Callable[[], None] = lambda: None) -> None:
        self.size = size
        self.on_replace = on_replace
        self.busy: set[int] = set()  # pids of workers serving a job now
        self.memory_mb = memory_mb
        self._ctx = multiprocessing.get_context("spawn")
        self._idle: asyncio.Queue[_Worker] | None = None
        self._all: set[_Worker] = set()
        self.replaced = 0

    async def start(self) -> None:
        self._idle = asyncio.Queue()
        for worker in await asyncio.gather(*(asyncio.to_thread(self._spawn) for _ in range(self.size))):
            self._idle.put_nowait(worker)

    def _spawn(self) -> _Worker:
        worker = _Worker(self._ctx, self.memory_mb)
        self._all.add(worker)
        return worker

    def pids(self) -> list[int]:
        return sorted(w.pid for w in self._all)

    async def run(self, job: Job, timeout_s: float) -> Any:
        assert self._idle is not None, "start() first"
        worker = await self._idle.get()
        healthy = False
        self.busy.add(worker.pid)
        try:
            value = await asyncio.to_thread(worker.call, job, timeout_s)
            healthy = True
            return value
        except DeepDetectError:
            healthy = True  # a refusal from a working worker
            raise
        except TimeoutError:
            raise DecodeFailed(f"decoding took longer than {timeout_s:g} s: the worker was stopped") from None
        except (EOFError, OSError, BrokenPipeError):
            raise DecodeFailed("the decode worker died on this file: it was replaced") from None
        finally:
            self.busy.discard(worker.pid)
            # Cancelled (the request's own deadline) counts as unhealthy too: the worker may still be busy.
            if healthy:
                self._idle.put_nowait(worker)
            else:
                self._replace(worker)

    def _replace(self, worker: _Worker) -> None:
        started = time.monotonic()
        self._all.discard(worker)
        self.replaced += 1
        self.on_replace()
        assert self._idle is not None
        idle = self._idle

        def respawn() -> None:
            worker.kill()
            fresh = self._spawn()
            log.warning("decode worker replaced", extra={"old_pid": worker.pid, "new_pid": fresh.pid,
                                                          "s": round(time.monotonic() - started, 3)})
            loop.call_soon_threadsafe(idle.put_nowait, fresh)

        loop = asyncio.get_running_loop()
        loop.run_in_executor(None, respawn)

    async def stop(self) -> None:
        for worker in list(self._all):
            worker.kill()
        self._all.clear()


def current_pid() -> int:
    """A job that says which worker ran it (tests)."""
    return os.getpid()
