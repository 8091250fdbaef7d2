"""The killable decode pool on its own: real spawned processes, real signals, real memory limits."""

from __future__ import annotations

import asyncio
import os
import time

import pytest
from deepdetect_server.decode_workers import DecodeWorkers
from deepdetect_server.errors import DecodeFailed

pytestmark = pytest.mark.timeout(120)


async def test_a_hung_job_is_killed_at_its_deadline_while_the_other_worker_serves():
    pool = DecodeWorkers(2, 1024)
    await pool.start()
    try:
        before = set(pool.pids())
        hung = asyncio.create_task(pool.run((time.sleep, (30,)), timeout_s=3))
        await asyncio.sleep(0.1)
        pids = [await pool.run((os.getpid, ()), timeout_s=5) for _ in range(3)]
        assert not hung.done() and len(set(pids)) == 1  # the free worker served them meanwhile
        with pytest.raises(DecodeFailed, match="longer than 3 s"):
            await hung
        deadline = time.monotonic() + 20
        while len(pool.pids()) < 2 and time.monotonic() < deadline:  # noqa: ASYNC110 (a process count)
            await asyncio.sleep(0.05)
        after = set(pool.pids())
        assert len(after) == 2 and len(after & before) == 1 and pool.replaced == 1
        assert {await pool.run((os.getpid, ()), timeout_s=5) for _ in range(4)} <= after
    finally:
        await pool.stop()


async def test_a_job_over_the_memory_limit_fails_alone_and_the_worker_lives():
    pool = DecodeWorkers(1, 512)
    await pool.start()
    try:
        [pid] = pool.pids()
        with pytest.raises(DecodeFailed, match="more memory"):
            await pool.run((bytearray, (1 << 30,)), timeout_s=10)  # 1 GiB in a 512 MiB address space
        assert await pool.run((os.getpid, ()), timeout_s=5) == pid and pool.replaced == 0
    finally:
        await pool.stop()


async def test_a_cancelled_request_does_not_leave_a_busy_worker_behind():
    pool = DecodeWorkers(1, 1024)
    await pool.start()
    try:
        [pid] = pool.pids()
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.3):  # the request's own deadline, shorter than the decode's
                await pool.run((time.sleep, (30,)), timeout_s=30)
        got = await asyncio.wait_for(pool.run((os.getpid, ()), timeout_s=5), 20)
        assert got != pid and pool.replaced == 1
    finally:
        await pool.stop()
