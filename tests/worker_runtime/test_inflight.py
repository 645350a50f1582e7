"""The read-only list of running jobs, on a single Redis and on a Redis Cluster."""

from __future__ import annotations

import asyncio
from typing import Any

from tests.support import engine as es
from worker_runtime.brokers.redis import inflight, queue


async def test_running_jobs_are_listed_with_their_worker_task_and_lease_longest_first(
    engine_client: Any, queue_name: str
) -> None:
    # Given three jobs: two fetched by different workers, one still waiting
    engine = es.make_engine(engine_client, queue_name)
    await engine.enqueue_many([es.request("a"), es.request("b", priority="high"), es.request("c")])
    [first] = await engine.fetch("w-1", 1)
    [second] = await engine.fetch("w-2", 1)
    # When the running jobs are listed
    jobs = await inflight.fetch_in_flight_jobs(engine_client, queue_name)
    # Then exactly the two fetched jobs appear, each with its worker, task, priority and lease
    assert {(j.job_id, j.worker_id) for j in jobs} == {(first.id, "w-1"), (second.id, "w-2")}
    by_id = {j.job_id: j for j in jobs}
    assert by_id[first.id].task == first.envelope.task and by_id[first.id].priority == "high"
    assert all(j.deliveries == 1 and j.lease_expires_in_seconds for j in jobs)
    assert jobs[0].running_seconds >= jobs[1].running_seconds
    # and a finished job leaves the list
    assert await engine.ack(first)
    assert [j.job_id for j in await inflight.fetch_in_flight_jobs(engine_client, queue_name)] == [
        second.id
    ]


async def test_an_idle_queue_has_no_running_jobs(engine_client: Any, queue_name: str) -> None:
    assert await inflight.fetch_in_flight_jobs(engine_client, queue_name) == []


async def _fetched_a_while_ago(
    engine_client: Any, queue_name: str, *, lease_seconds: float, seconds_ago: float
) -> tuple[queue.QueueClient, queue.Job]:
    """One job, fetched by worker "a" ``seconds_ago`` (Redis' clock runs meanwhile)."""
    engine = es.make_engine(engine_client, queue_name, lease_seconds=lease_seconds)
    await engine.enqueue_many([es.request("a")])
    [job] = await engine.fetch("a", 1)
    await asyncio.sleep(seconds_ago)
    return engine, job


async def test_a_deregistered_workers_job_keeps_its_running_time(
    engine_client: Any, queue_name: str
) -> None:
    # Given a job worker a fetched 0.5 s ago
    engine, job = await _fetched_a_while_ago(
        engine_client, queue_name, lease_seconds=30.0, seconds_ago=0.5
    )
    # When the worker leaves while it still holds the job (a drain that ran out of time: its
    # pending stream entry moves to the consumer that keeps a gone worker's entries)
    await engine.deregister("a")
    # Then the list still shows the job running since it was fetched, by that worker
    [listed] = await inflight.fetch_in_flight_jobs(engine_client, queue_name)
    assert (listed.job_id, listed.worker_id) == (job.id, "a")
    assert listed.running_seconds >= 0.45


async def test_a_reclaimed_job_is_listed_with_its_second_delivery(
    engine_client: Any, queue_name: str
) -> None:
    # Given a job fetched by worker a, whose lease ran out, then fetched again by worker b
    engine, first = await _fetched_a_while_ago(
        engine_client, queue_name, lease_seconds=0.3, seconds_ago=0.4
    )
    [second] = await engine.fetch("b", 1)
    assert (second.id, second.deliveries) == (first.id, 2)
    # When the running jobs are listed
    [listed] = await inflight.fetch_in_flight_jobs(engine_client, queue_name)
    # Then it is listed once, on b, as its second delivery
    assert (listed.job_id, listed.worker_id, listed.deliveries) == (first.id, "b", 2)
