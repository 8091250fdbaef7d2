"""The dynamic batcher on its own: size and delay triggers, admission, deadlines, isolation, one thread."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest
from deepdetect_server.batcher import Batcher
from deepdetect_server.errors import DeadlineExceeded, InferenceFailed, NotReady, Overloaded

pytestmark = pytest.mark.timeout(60)


class Recorder:
    """A run_batch that records batches and the thread it ran on; optionally slow or failing."""

    def __init__(self, delay_s: float = 0.0, fail_on: object = None) -> None:
        self.batches: list[list[int]] = []
        self.threads: set[str] = set()
        self.delay_s = delay_s
        self.fail_on = fail_on

    def __call__(self, items: list[int]) -> list[int]:
        self.threads.add(threading.current_thread().name)
        self.batches.append(list(items))
        if self.delay_s:
            time.sleep(self.delay_s)
        if self.fail_on in items:
            raise ValueError(f"poison item {self.fail_on}")
        return [x * 10 for x in items]


async def started(run: Recorder, **kw: float) -> Batcher[int, int]:
    b: Batcher[int, int] = Batcher(run, **{"max_batch_size": 4, "max_delay_ms": 20, "max_queue": 64, **kw})
    await b.start()
    return b


async def test_batch_leaves_when_full_without_waiting_for_the_delay() -> None:
    run = Recorder()
    b = await started(run, max_batch_size=4, max_delay_ms=5_000)
    t0 = time.monotonic()
    results = await asyncio.gather(*(b.submit([i]) for i in range(8)))
    assert time.monotonic() - t0 < 2.0  # nowhere near the 5 s delay
    assert [r[0] for r in results] == [i * 10 for i in range(8)]
    assert sorted(len(x) for x in run.batches) == [4, 4]
    await b.stop()


async def test_batch_leaves_after_the_delay_when_not_full() -> None:
    run = Recorder()
    b = await started(run, max_batch_size=100, max_delay_ms=80)
    t0 = time.monotonic()
    results = await asyncio.gather(*(b.submit([i]) for i in range(3)))
    elapsed = time.monotonic() - t0
    assert 0.07 <= elapsed < 1.0
    assert run.batches == [[0, 1, 2]] and [r[0] for r in results] == [0, 10, 20]
    await b.stop()


async def test_items_arriving_within_the_delay_join_the_batch() -> None:
    run = Recorder()
    b = await started(run, max_batch_size=100, max_delay_ms=400)

    async def late(i: int, after: float) -> list[int]:
        await asyncio.sleep(after)
        return await b.submit([i])

    await asyncio.gather(late(0, 0), late(1, 0.03), late(2, 0.06))
    assert run.batches == [[0, 1, 2]]
    await b.stop()


async def test_each_caller_gets_its_own_results_in_order() -> None:
    run = Recorder()
    b = await started(run, max_batch_size=5, max_delay_ms=10)
    requests = [list(range(i * 3, i * 3 + 1 + i % 3)) for i in range(12)]  # 1 to 3 items each
    results = await asyncio.gather(*(b.submit(r) for r in requests))
    for req, res in zip(requests, results, strict=True):
        assert res == [x * 10 for x in req]
    assert max(len(x) for x in run.batches) <= 5
    await b.stop()


async def test_forward_runs_on_one_dedicated_thread_off_the_loop() -> None:
    run = Recorder()
    b = await started(run, max_batch_size=2, max_delay_ms=1)
    await asyncio.gather(*(b.submit([i]) for i in range(10)))
    assert len(run.threads) == 1
    (name,) = run.threads
    assert name.startswith("deepdetect-forward") and name != threading.main_thread().name
    await b.stop()


async def test_full_queue_is_refused_at_once() -> None:
    run = Recorder(delay_s=0.2)
    b = await started(run, max_batch_size=1, max_delay_ms=0, max_queue=3)
    first = asyncio.create_task(b.submit([0]))
    await asyncio.sleep(0.05)  # item 0 is running; the queue is empty again
    waiting = [asyncio.create_task(b.submit([i])) for i in (1, 2, 3)]
    await asyncio.sleep(0)
    with pytest.raises(Overloaded, match="queue full"):
        await b.submit([4])
    with pytest.raises(Overloaded):
        b.reserve(1)
    assert [r[0] for r in await asyncio.gather(first, *waiting)] == [0, 10, 20, 30]
    assert b.depth == 0
    await b.stop()


async def test_reservation_counts_before_items_exist_and_can_be_released() -> None:
    b = await started(Recorder(), max_queue=4)
    r = b.reserve(3)
    assert b.depth == 3
    with pytest.raises(Overloaded):
        b.reserve(2)
    r.release()
    assert b.depth == 0
    assert await b.submit([1, 2, 3, 4]) == [10, 20, 30, 40]
    await b.stop()


async def test_deadline_gives_deadline_exceeded_and_frees_the_slot() -> None:
    run = Recorder(delay_s=0.3)
    b = await started(run, max_batch_size=1, max_delay_ms=0, max_queue=4)
    blocker = asyncio.create_task(b.submit([0]))
    await asyncio.sleep(0.02)
    with pytest.raises(DeadlineExceeded):
        await b.submit([1], deadline_s=0.05)
    assert await blocker == [0]
    await asyncio.sleep(0.05)
    assert [0] in run.batches and [1] not in run.batches  # the timed-out item never ran
    assert b.depth == 0
    await b.stop()


async def test_failed_batch_fails_only_its_own_callers() -> None:
    run = Recorder(fail_on=13)
    b = await started(run, max_batch_size=2, max_delay_ms=30)
    good_before = await b.submit([1])
    results = await asyncio.gather(b.submit([12]), b.submit([13]), return_exceptions=True)
    good_after = await asyncio.gather(b.submit([2]), b.submit([3]))
    assert good_before == [10] and [r[0] for r in good_after] == [20, 30]
    assert all(isinstance(r, InferenceFailed) for r in results)
    assert "poison item 13" in str(results[1])
    await b.stop()


async def test_wrong_result_count_is_an_error_for_that_batch() -> None:
    b: Batcher[int, int] = Batcher(lambda items: [1], max_batch_size=4, max_delay_ms=20, max_queue=8)
    await b.start()
    with pytest.raises(InferenceFailed, match="1 results for 2 inputs"):
        await b.submit([1, 2])
    await b.stop()


async def test_stop_finishes_queued_work_then_refuses_new() -> None:
    run = Recorder(delay_s=0.05)
    b = await started(run, max_batch_size=1, max_delay_ms=0)
    tasks = [asyncio.create_task(b.submit([i])) for i in range(4)]
    await asyncio.sleep(0.01)
    await b.stop(grace_s=5)
    assert [t.result()[0] for t in tasks] == [0, 10, 20, 30]
    with pytest.raises(NotReady):
        await b.submit([9])


async def test_stop_fails_what_cannot_finish_in_time() -> None:
    run = Recorder(delay_s=0.2)
    b = await started(run, max_batch_size=1, max_delay_ms=0)
    tasks = [asyncio.create_task(b.submit([i])) for i in range(5)]
    await asyncio.sleep(0.01)
    await b.stop(grace_s=0.05)
    outcomes = await asyncio.gather(*tasks, return_exceptions=True)
    assert any(isinstance(o, NotReady) for o in outcomes)
