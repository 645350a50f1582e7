"""A child acquired for a job that will not run goes back to the pool unused.

The worker acquires a child for a process job and may then find the job must not start (its
lease was lost while it waited). :meth:`processes.ProcessPool.release` gives the child back:
these tests hold that the pool's accounting stays right (the slot, the idle child, its job
count, the retirement metric) and that a drain still stops every child. Real spawned children.
"""

from __future__ import annotations

import asyncio

import pytest

from worker_runtime import processes

pytestmark = pytest.mark.timeout(120)

NO_OP = processes.Call("builtins", "len", [1, 2], None)
"""A job for a child: a stdlib function the child imports by name, as it does a handler."""


async def test_a_child_given_back_unused_is_reused_by_the_next_job_without_counting_a_job() -> None:
    # Given a pool of one child that is recycled after each job, and a child acquired for a
    # job that will not run
    retired: list[str] = []
    pool = processes.ProcessPool(1, max_jobs_per_child=1, on_child_retired=retired.append)
    try:
        child = await pool.acquire()
        pids = pool.pids

        # When it is given back, and the next job acquires one (bounded: a slot never given
        # back would keep it waiting)
        await pool.release(child)
        again = await asyncio.wait_for(pool.acquire(), 60)

        # Then that job gets the same child, not recycled (it ran nothing), and runs on it
        assert again is child
        assert (pool.started, pool.pids, retired) == (1, pids, [])
        reply = await pool.run(again, NO_OP)
        assert reply.error is None
        assert retired == ["jobs"]  # recycled after the job it did run
    finally:
        await pool.close()
    assert pool.pids == []


async def test_a_dead_child_given_back_is_forgotten_and_the_next_job_gets_a_new_one() -> None:
    # Given a pool of one child, acquired for a job that will not run, which died meanwhile
    pool = processes.ProcessPool(1)
    try:
        child = await pool.acquire()
        child.kill()
        await child.reap(10.0)

        # When it is given back and the next job acquires one
        await pool.release(child)
        fresh = await asyncio.wait_for(pool.acquire(), 60)

        # Then that job gets a new child, which runs it
        assert fresh is not child and pool.started == 2
        assert pool.pids == [fresh.process.pid]
        assert (await pool.run(fresh, NO_OP)).error is None
    finally:
        await pool.close()
    assert pool.pids == []


async def test_a_child_given_back_during_the_drain_is_stopped_and_every_child_ends() -> None:
    # Given a pool of two started children, one acquired for a job that will not run
    retired: list[str] = []
    pool = processes.ProcessPool(2, on_child_retired=retired.append)
    try:
        await pool.prestart()
        pids = pool.pids
        child = await pool.acquire()

        # When the pool is closed (the drain's end) while that child is out, and it is given
        # back then
        closing = asyncio.create_task(pool.close(wait_seconds=10.0))
        await asyncio.sleep(0)  # the close begins: the pool takes no new job
        with pytest.raises(processes.ProcessPoolError, match="closed"):
            await pool.acquire()
        await pool.release(child)
        await asyncio.wait_for(closing, 60)
    finally:
        await pool.close()

    # Then the given-back child was told to stop and exited by itself (not killed after the
    # close's wait), counted as retired at the close, and no child is left
    assert child.process.exitcode == 0
    assert retired == ["closed"]
    assert len(pids) == 2 and pool.pids == []
