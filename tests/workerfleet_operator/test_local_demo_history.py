"""The demo's history: a job is lost unless it completed, was dead-lettered, or the broker still
holds its id; no count of the queue's excuses a missing job.

The judgement itself is pure (``history.judge_history``); the ids the broker holds are read from
a real redis-server (``demo.fetch_final_state``), and the load generator's record of what the
broker accepted is checked against a broker whose reply to a stored batch was lost.
"""

from __future__ import annotations

import asyncio

from workerfleet_operator.local import demo, history

from tests.support import redis_servers
from worker_runtime import brokers as runtime_brokers
from worker_runtime import errors, producer
from worker_runtime.brokers import base


def test_a_job_lost_while_another_is_still_queued_is_reported_lost() -> None:
    # Given a history where "a" ran, "queued" is still in the queue, "gone" is nowhere, and the
    # queue also holds "resent", a job of a re-sent batch the history never recorded
    runs = [history.Run("a", 1, True)]
    held = {"queued", "resent"}
    # When it is judged with the ids the broker holds (the count would be 2: one per missing id)
    outcome = history.judge_history(["a", "queued", "gone"], runs, [], held)
    # Then the queued job is pending and the other one is lost
    assert (outcome.completed, outcome.pending, outcome.lost) == (1, 1, 1)
    assert outcome.missing == ("gone",)
    assert outcome.held == ("queued",)
    assert outcome.checked and outcome.unchecked == 0


def test_completed_retried_and_dead_lettered_jobs_are_judged_from_their_runs() -> None:
    runs = [
        history.Run("a", 1, True),
        history.Run("b", 1, False),
        history.Run("b", 2, True),
        history.Run("p", 1, False),
        history.Run("p", 2, False),
        history.Run("stranger", 1, True),  # not enqueued by this run: not counted
    ]
    outcome = history.judge_history(["a", "b", "p"], runs, ["p"], set())
    assert (outcome.enqueued, outcome.completed, outcome.dead_lettered) == (3, 2, 1)
    assert outcome.retried == 2  # b once, p once
    assert (outcome.pending, outcome.lost) == (0, 0)


def test_a_broker_that_cannot_list_its_jobs_leaves_missing_ones_unchecked_and_says_so() -> None:
    # Given a broker (RabbitMQ, SQS) that cannot list the ids it holds, and counts 5 queued
    # When two enqueued jobs neither completed nor were dead-lettered
    outcome = history.judge_history(
        ["a", "x", "y"], [history.Run("a", 1, True)], [], None, held_count=5
    )
    # Then they are neither excused by the count nor claimed lost: they are unchecked
    assert (outcome.pending, outcome.lost, outcome.unchecked) == (5, 0, 2)
    assert not outcome.checked
    # And the summary says so, on the jobs line, in its own line, and in the demo: line
    result = demo.DemoResult(
        broker="rabbitmq",
        enqueued=3,
        completed=1,
        pending=outcome.pending,
        pending_checked=outcome.checked,
        lost=outcome.lost,
        unchecked=outcome.unchecked,
        missing=outcome.missing,
    )
    summary = demo.build_summary(result)
    assert "still queued ~5, lost 0" in summary
    assert "unchecked: 2 job(s) neither completed nor dead-lettered" in summary
    assert "rabbitmq cannot list the jobs it holds" in summary
    assert " lost=0 unchecked=2 " in summary.splitlines()[-1]


def test_the_final_state_names_every_job_redis_still_holds_ready_delayed_and_in_flight(
    redis_server: redis_servers.RedisServer, queue_name: str
) -> None:
    # Given a Redis queue with one completed job, one in flight, one ready and one delayed
    options = base.QueueOptions()

    async def fill() -> dict[str, str]:
        broker = await runtime_brokers.open_broker(redis_server.url, queue_name, options=options)

        async def send(name: str, delay: float | None = None) -> str:
            spec = producer.JobSpec("t", {"n": name}, delay=delay)
            return (await broker.enqueue(producer.build_request(spec))).job_id

        try:
            ids = {"done": await send("done")}
            for delivery in await broker.fetch("w", 1):
                await broker.ack(delivery)
            ids["busy"] = await send("busy")
            assert [d.id for d in await broker.fetch("w", 1)] == [ids["busy"]]
            ids["ready"] = await send("ready")
            ids["delayed"] = await send("delayed", delay=600.0)
            return ids
        finally:
            await broker.close()

    ids = asyncio.run(fill())
    # When the demo reads the final state after its drain
    final = demo.fetch_final_state(redis_server.url, queue_name, options)
    # Then it names the three live jobs, and not the completed one
    assert final.held_ids == {ids["busy"], ids["ready"], ids["delayed"]}
    assert final.dead_letter_ids == set()


class ReplyLostOnce:
    """A broker that stores the first batch and loses the reply, then answers the re-send."""

    def __init__(self) -> None:
        self.stored: list[str] = []
        self.calls = 0

    def enqueue_many(self, requests: list[base.EnqueueRequest]) -> list[base.EnqueueResult]:
        self.calls += 1
        results = [
            base.EnqueueResult(r.envelope.id, r.envelope.id not in self.stored) for r in requests
        ]
        self.stored.extend(r.envelope.id for r in requests if r.envelope.id not in self.stored)
        if self.calls == 1:
            raise errors.BrokerUnavailable("reply lost")
        return results


def test_jobs_a_lost_reply_stored_are_kept_in_the_history_when_the_resend_finds_them() -> None:
    # Given a load of a few jobs and a broker that loses the reply of the batch it stored
    plan = (demo.Phase("burst", 0.0, 0.05, 100.0),)
    load = demo.LoadGenerator("memory://", "q", plan)
    target = ReplyLostOnce()
    # When the load generator sends them (the re-send is answered created=False)
    load._send_plan(target)  # type: ignore[arg-type]
    # Then every job the broker holds is in the history, once, and the error was counted
    assert target.stored and sorted(load.enqueued_ids) == sorted(target.stored)
    assert load.counts.enqueued == len(target.stored)
    assert load.counts.errors == 1
