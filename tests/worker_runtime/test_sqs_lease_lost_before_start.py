"""A job whose lease the worker found lost before its handler started is not started, on SQS.

The worker holds a job from its fetch on; its control thread may find the lease lost (SQS
handed the message to another consumer) before the handler's first step. The handler used to
run anyway, its result discarded, and the job ran a second time when it came back by its
visibility timeout. On the suite's ElasticMQ, with a second consumer taking the message.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Sequence
from typing import Any

import pytest

from tests.support import elasticmq, memory_worker
from worker_runtime import App, JobContext, config, worker
from worker_runtime import envelope as envelope_mod
from worker_runtime.brokers import base
from worker_runtime.brokers.sqs import broker as sqs_broker

pytestmark = pytest.mark.timeout(90)

THIEF_LEASE_SECONDS = 2
"""The other consumer's lease: it never renews, so the job comes back after this long."""


async def test_a_job_whose_lease_was_lost_before_its_handler_started_runs_once_overall(
    elasticmq_server: elasticmq.ElasticMQServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given a queue with one job, and a second consumer (another worker) on it
    queue = f"lost-{uuid.uuid4().hex[:10]}"
    app = App(queue, redis_url=elasticmq_server.url)
    runs: list[int] = []

    @app.task("once")
    async def once(payload: dict[str, str], ctx: JobContext) -> None:
        runs.append(ctx.deliveries)

    await app.enqueue("once", {})
    thief = await sqs_broker.open_sqs_broker(
        elasticmq_server.url, queue, options=base.QueueOptions(lease_seconds=THIEF_LEASE_SECONDS)
    )
    taken: list[base.Delivery] = []

    # And the worker's first fetch is followed by the other consumer taking that message (its
    # visibility cut to 0, received again): the worker's receipt is no longer valid
    fetch = sqs_broker.SqsBroker.fetch

    async def fetch_then_lose_the_lease(
        self: sqs_broker.SqsBroker, worker_id: str, count: int, **kwargs: Any
    ) -> list[base.Delivery]:
        jobs = await fetch(self, worker_id, count, **kwargs)
        if jobs and self is not thief and not taken:
            await thief._client.change_message_visibility(
                QueueUrl=thief._url(envelope_mod.Priority.NORMAL),
                ReceiptHandle=jobs[0].receipt,
                VisibilityTimeout=0,
            )
            for _ in range(50):  # bounded: 50 short polls
                taken.extend(await fetch(thief, "thief", 1, block=0.2))
                if taken:
                    break
            assert taken, "the other consumer never received the message"
        return jobs

    monkeypatch.setattr(sqs_broker.SqsBroker, "fetch", fetch_then_lose_the_lease)
    settings = config.WorkerSettings(
        redis_url=elasticmq_server.url,
        queue=queue,
        metrics_port=0,
        concurrency=1,
        lease_seconds=30.0,
        log_level="warning",
    )
    w = worker.Worker(app, settings, install_signal_handlers=False)

    # And the control thread's renewal finds that lease lost after the job is held and before
    # its handler's first step (the runner's start waits for it, bounded)
    start = w.runner.start
    waited: list[bool] = []

    def start_after_the_renewal_found_it_lost(jobs: Sequence[base.Delivery]) -> None:
        start(jobs)
        if taken and not waited:
            waited.append(True)
            assert w.control is not None
            w.control.wake()
            for _ in range(1000):  # bounded: 10 s
                if w.held and all(h.lost for h in w.held.values()):
                    break
                time.sleep(0.01)
            assert all(h.lost for h in w.held.values()), "the renewal never found it lost"

    monkeypatch.setattr(w.runner, "start", start_after_the_renewal_found_it_lost)

    # When the worker runs until the job came back by the other consumer's visibility timeout
    # (never renewed) and a handler ran on that third delivery
    async def ran_on_its_return() -> bool:
        return any(d >= 3 for d in runs) and w.processed >= 1

    try:
        await memory_worker.run_until(w, ran_on_its_return, "the job's run after it came back")
    finally:
        await thief.close()

    # Then the handler never ran on the delivery whose lease was lost: the job ran once in
    # all, on its return, and the lost lease was counted once
    assert waited == [True]
    assert runs == [3]
    assert w.metrics.leases_lost._value.get() == 1
