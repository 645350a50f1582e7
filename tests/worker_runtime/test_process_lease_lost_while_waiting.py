"""A process job whose lease was lost while it waited for a child is not started there.

A process task's job that finds every child busy waits in the pool with its worker slot and its
lease. Its lease can be found lost meanwhile (another consumer took the job): the job then ran
anyway once a child freed, its result discarded, and it ran a second time where it went. On the
memory broker with a real pool of one spawned child, whose runs the child writes to a file.
"""

from __future__ import annotations

import asyncio
import pathlib
import uuid
from collections.abc import Callable

import pytest

from tests.support import memory_worker
from tests.worker_runtime import tasks_process_lease
from worker_runtime import config, worker
from worker_runtime.brokers import memory
from worker_runtime.worker import held as held_mod

pytestmark = pytest.mark.timeout(180)


async def until(check: Callable[[], bool], what: str) -> None:
    """Wait (bounded: 60 s) until ``check`` holds; AssertionError naming ``what``."""

    async def holds() -> bool:
        return check()

    await memory_worker.until(holds, 60.0, what)


async def test_a_job_whose_lease_was_lost_while_it_waited_for_a_child_runs_once_overall(
    tmp_path: pathlib.Path,
) -> None:
    # Given a worker with two slots and a pool of one child, busy with a long job
    store = f"plost-{uuid.uuid4().hex[:8]}"
    settings = config.WorkerSettings(
        redis_url=f"memory://{store}",
        queue=tasks_process_lease.QUEUE,
        metrics_port=0,
        concurrency=2,
        process_pool_size=1,
        log_level="warning",
    )
    w = worker.Worker(tasks_process_lease.app, settings, install_signal_handlers=False)
    other = memory.MemoryBroker(w.queue_name, store=store)  # the other consumer, and the probe
    runs, gate = tmp_path / "runs", tmp_path / "gate"

    def ran() -> list[str]:
        return runs.read_text().splitlines() if runs.exists() else []

    run = asyncio.create_task(w.run())
    try:
        long_job = {"marker": "long", "runs": str(runs), "gate": str(gate)}
        await memory_worker.enqueue(other, "step", long_job)
        await until(lambda: ran() == ["long 1"], "the long job to start in the child")

        # And a second job the worker holds, waiting for that child (its handler's timer set
        # before the wait, and nothing between that and the wait gives the loop a turn)
        second_id = await memory_worker.enqueue(
            other, "step", {"marker": "second", "runs": str(runs)}
        )

        def waiting() -> held_mod.Held | None:
            return next(
                (h for h in list(w.held.values()) if h.job.id == second_id and h.started), None
            )

        await until(lambda: waiting() is not None, "the second job to wait for the child")
        second = waiting()
        assert second is not None

        # And another consumer took that job (the worker's receipt made free, then fetched),
        # which the worker's renewal finds lost
        assert await other.release(second.job)
        [taken] = await other.fetch("other-consumer", 1)
        assert w.control is not None
        w.control.wake()
        await until(lambda: second.lost, "the renewal to find the lease lost")

        # When the child frees (the long job ends), and the other consumer, which did not run
        # the job, gives it back once the worker let go of its own delivery
        gate.touch()
        await until(lambda: second not in w.held.values(), "the worker to let the job go")
        assert await other.release(taken)
        await until(lambda: w.processed == 2, "both jobs to complete on the worker")
    finally:
        w.request_drain()
        assert await asyncio.wait_for(run, 60) == 0
        await other.close()

    # Then the second job was not started on the delivery whose lease was lost: it ran once in
    # all, on its third delivery (the worker's again), and the lost lease counted once
    assert ran() == ["long 1", "second 3"]
    assert w.metrics.leases_lost._value.get() == 1
