"""Dynamic batching: many concurrent callers, one forward pass per batch, each caller its own answer.

A batch leaves when it holds `max_batch_size` items or its first item has waited `max_delay_ms`, whichever
comes first. The forward pass runs on one dedicated thread (a model is not re-entrant and a GPU gains
nothing from two), so the event loop only moves futures around.

Admission is bounded: a request reserves its slots *before* it spends CPU on decoding, and the slots are
given back when its items enter a batch. More than `max_queue` waiting images means `Overloaded` (503 with
Retry-After) instead of an ever-growing queue. A failed batch fails only the callers that were in it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Generic, Protocol, TypeVar

from .errors import DeadlineExceeded, InferenceFailed, NotReady, Overloaded

T = TypeVar("T")
R = TypeVar("R")

log = logging.getLogger("deepdetect.batcher")


class BatchObserver(Protocol):
    """What the batcher reports (metrics implement it; tests may too)."""

    def batch_done(self, size: int, queue_waits: Sequence[float], inference_s: float) -> None: ...


@dataclass(eq=False)
class _Pending(Generic[T, R]):
    item: T
    future: asyncio.Future[R]
    enqueued: float = field(default_factory=time.monotonic)


class Batcher(Generic[T, R]):
    """Collects items from concurrent callers into batches for `run_batch` (called on the worker thread)."""

    def __init__(
        self,
        run_batch: Callable[[list[T]], Sequence[R]],
        *,
        max_batch_size: int,
        max_delay_ms: float,
        max_queue: int,
        observer: BatchObserver | None = None,
        thread_name: str = "deepdetect-forward",
    ) -> None:
        if max_batch_size < 1 or max_queue < 1:
            raise ValueError("max_batch_size and max_queue must be >= 1")
        self._run_batch = run_batch
        self.max_batch_size = max_batch_size
        self.max_delay_s = max_delay_ms / 1000.0
        self.max_queue = max_queue
        self._observer = observer
        self._thread_name = thread_name
        self._queue: asyncio.Queue[_Pending[T, R]] = asyncio.Queue()
        self._reserved = 0  # slots promised to callers whose items have not entered a batch yet
        self._busy = False
        self._closed = False
        self._task: asyncio.Task[None] | None = None
        self._worker: ThreadPoolExecutor | None = None

    # --- lifecycle -------------------------------------------------------------------------------------

    async def start(self) -> None:
        self._worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix=self._thread_name)
        self._task = asyncio.create_task(self._collect(), name="deepdetect-batcher")

    async def stop(self, grace_s: float = 10.0) -> None:
        """Refuse new work, let queued work finish for up to `grace_s`, then fail what is left."""
        self._closed = True
        deadline = time.monotonic() + grace_s
        # Polling two conditions at 10 ms is simpler than an Event per state change, and runs once.
        while (self._queue.qsize() or self._busy) and time.monotonic() < deadline:  # noqa: ASYNC110
            await asyncio.sleep(0.01)
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        while not self._queue.empty():
            pending = self._queue.get_nowait()
            if not pending.future.done():
                pending.future.set_exception(NotReady("server is shutting down"))
        if self._worker is not None:
            self._worker.shutdown(wait=False, cancel_futures=True)

    # --- callers ---------------------------------------------------------------------------------------

    @property
    def depth(self) -> int:
        """Images admitted and not yet in a batch (decoding or queued)."""
        return self._reserved

    def reserve(self, n: int) -> Reservation[T, R]:
        """Claim `n` slots before doing expensive work for them (check-and-claim is atomic: one loop)."""
        if self._closed:
            raise NotReady("server is shutting down")
        if self._reserved + n > self.max_queue:
            raise Overloaded(f"queue full ({self._reserved} of {self.max_queue} waiting): retry later")
        self._reserved += n
        return Reservation(self, n)

    async def submit(self, items: Sequence[T], deadline_s: float | None = None) -> list[R]:
        """Reserve, enqueue and wait: the simple path when items are ready."""
        return await self.reserve(len(items)).submit(items, deadline_s)

    def _release(self, n: int) -> None:
        self._reserved -= n

    def _enqueue(self, items: Sequence[T]) -> list[asyncio.Future[R]]:
        loop = asyncio.get_running_loop()
        futures: list[asyncio.Future[R]] = []
        for item in items:
            fut: asyncio.Future[R] = loop.create_future()
            self._queue.put_nowait(_Pending(item, fut))
            futures.append(fut)
        return futures

    # --- the collector ---------------------------------------------------------------------------------

    async def _collect(self) -> None:
        while True:
            first = await self._queue.get()
            batch = [first]
            try:
                await self._fill(batch, closes_at=first.enqueued + self.max_delay_s)
                self._release(len(batch))
                live = [p for p in batch if not p.future.done()]  # callers that timed out are skipped
                if live:
                    self._busy = True
                    await self._dispatch(live)
            except asyncio.CancelledError:
                # stop() gave up waiting: whoever is still in hand gets an answer, not a hang.
                _fail(batch, NotReady("server is shutting down"))
                raise
            finally:
                self._busy = False

    async def _fill(self, batch: list[_Pending[T, R]], closes_at: float) -> None:
        while len(batch) < self.max_batch_size:
            try:
                batch.append(self._queue.get_nowait())
                continue
            except asyncio.QueueEmpty:
                pass
            remaining = closes_at - time.monotonic()
            if remaining <= 0:
                return
            item = await self._get_within(remaining)
            if item is None:
                return
            batch.append(item)

    async def _get_within(self, wait_s: float) -> _Pending[T, R] | None:
        """queue.get() with a timeout that never loses an item to the cancellation race."""
        getter = asyncio.ensure_future(self._queue.get())
        done, _ = await asyncio.wait({getter}, timeout=wait_s)
        if getter in done:
            return getter.result()
        getter.cancel()
        try:
            return await getter  # it may have completed between the timeout and the cancel
        except asyncio.CancelledError:
            return None

    async def _dispatch(self, batch: list[_Pending[T, R]]) -> None:
        loop = asyncio.get_running_loop()
        started = time.monotonic()
        waits = [started - p.enqueued for p in batch]
        try:
            results = await loop.run_in_executor(self._worker, self._run_batch, [p.item for p in batch])
            if len(results) != len(batch):
                raise RuntimeError(f"model returned {len(results)} results for {len(batch)} inputs")
        except Exception as exc:
            log.exception("batch failed", extra={"batch_size": len(batch)})
            _fail(batch, InferenceFailed(f"inference failed for this batch: {type(exc).__name__}: {exc}"))
            return
        finally:
            if self._observer is not None:
                self._observer.batch_done(len(batch), waits, time.monotonic() - started)
        for p, result in zip(batch, results, strict=True):
            if not p.future.done():
                p.future.set_result(result)


def _fail(batch: list[_Pending[T, R]], error: Exception) -> None:
    for p in batch:
        if not p.future.done():
            p.future.set_exception(error)


class Reservation(Generic[T, R]):
    """Slots claimed in a batcher; submit the items once they are ready, or release the slots."""

    def __init__(self, batcher: Batcher[T, R], n: int) -> None:
        self._batcher = batcher
        self._n = n
        self._open = True

    def release(self) -> None:
        if self._open:
            self._open = False
            self._batcher._release(self._n)

    async def submit(self, items: Sequence[T], deadline_s: float | None = None) -> list[R]:
        if not self._open or len(items) != self._n:
            raise ValueError("a reservation is submitted once, with exactly its number of items")
        self._open = False  # from here the collector releases the slots as items enter batches
        futures = self._batcher._enqueue(items)
        gathered = asyncio.gather(*futures)
        try:
            return list(await asyncio.wait_for(gathered, deadline_s))
        except TimeoutError:
            raise DeadlineExceeded("request timed out waiting for the model") from None
        finally:
            for fut in futures:  # on timeout or cancellation: the collector will skip these
                if not fut.done():
                    fut.cancel()
