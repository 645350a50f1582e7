"""A job enqueued without an idempotency key can use the documented idempotency idiom.

``if await ctx.already_done(): return`` ... side effect ... ``ctx.mark_done_on_ack()`` is the
idiom docs/runtime.md shows, and most jobs carry no idempotency key (``workerfleet enqueue``'s
and ``enqueue_sync``'s default). ``already_done()`` answered False for such a job and
``mark_done_on_ack()`` raised ValueError after the side effect, so the attempt failed: the side
effect was repeated on every attempt and the job ended in the DLQ as ``max_attempts``. Both now
default to ``job-id:<job id>``, which one job keeps across its retries and redeliveries.

The histories are read from a real redis-server (the queue's counters and DLQ, the done
markers) and from what the handlers did; the worker runs in this process.
"""

from __future__ import annotations

from typing import Any

import pydantic
import pytest
import redis.asyncio

from tests.support import engine as es
from tests.support import memory_worker
from tests.worker_runtime import workerproc
from tests.worker_runtime.workerproc import wait_until
from worker_runtime import App, JobContext, Retry, config, envelope, worker
from worker_runtime.brokers.redis import keys, stats


class Email(pydantic.BaseModel):
    to: str


def _email_app(queue_name: str, redis_url: str, sent: list[str], skipped: list[str]) -> App:
    """The docs' ``send-email`` task, async and sync: the idiom around one side effect."""
    email_app = App(queue=queue_name, redis_url=redis_url)
    retry = Retry(max_attempts=3)

    @email_app.task("send-email", retry=retry)
    async def send_email(payload: Email, ctx: JobContext) -> None:
        if await ctx.already_done():
            skipped.append(ctx.job_id)
            return
        sent.append(ctx.job_id)  # the side effect: an email that must go out once
        ctx.mark_done_on_ack()

    @email_app.task("send-email-sync", retry=retry)
    def send_email_sync(payload: Email, ctx: JobContext) -> None:
        if ctx.already_done_sync():
            skipped.append(ctx.job_id)
            return
        sent.append(ctx.job_id)
        ctx.mark_done_on_ack()

    return email_app


@pytest.mark.parametrize("task", ["send-email", "send-email-sync"])
async def test_a_job_without_idempotency_key_sends_once_and_a_later_delivery_of_it_sends_none(
    redis_server: Any, redis_client: redis.asyncio.Redis, queue_name: str, task: str
) -> None:
    # Given the docs' idempotent send-email task (3 attempts) and a job of it enqueued the
    # default way, without an idempotency key
    client = redis_client
    sent: list[str] = []
    skipped: list[str] = []
    email_app = _email_app(queue_name, redis_server.url, sent, skipped)
    job_id = (await email_app.enqueue(task, Email(to="a@b"))).job_id
    await email_app.aclose()
    settings = config.WorkerSettings(
        redis_url=redis_server.url,
        queue=queue_name,
        metrics_port=0,
        log_level="warning",
        retry_backoff_base_seconds=0.01,
        retry_backoff_jitter="none",
    )
    w = worker.Worker(email_app, settings, install_signal_handlers=False)

    async def settled(completed: int) -> bool:
        s = await stats.fetch_queue_stats(client, queue_name)
        return s.completed_total == completed or s.dead_letter > 0

    # When a worker runs it
    await memory_worker.run_until(w, lambda: settled(1), "the job to settle")
    # Then the email went out once and the job was acked (it used to fail at
    # mark_done_on_ack after sending, be retried, send again and die as max_attempts),
    # with its done marker recorded under the job's id
    s = await stats.fetch_queue_stats(client, queue_name)
    assert (sent, skipped) == ([job_id], [])
    assert (s.completed_total, s.dead_letter, s.backlog, s.in_flight) == (1, 0, 0, 0)
    assert await client.exists(keys.build_keys(queue_name).done(f"job-id:{job_id}")) == 1

    # When the same job is delivered again after its ack (its producer sends it again once
    # the enqueue-dedup window has passed)
    again = envelope.build_envelope(task, {"to": "a@b"}, job_id=job_id)
    await es.enqueue_again(es.make_engine(client, queue_name), again)
    w = worker.Worker(email_app, settings, install_signal_handlers=False)
    await memory_worker.run_until(w, lambda: settled(2), "the second delivery to settle")
    # Then the handler found the job done and sent nothing more; both deliveries were acked
    s = await stats.fetch_queue_stats(client, queue_name)
    assert (sent, skipped) == ([job_id], [job_id])
    assert (s.completed_total, s.dead_letter) == (2, 0)


def test_a_process_task_without_idempotency_key_records_its_done_marker_under_its_job_id(
    wf: workerproc.Testbed,
) -> None:
    # Given a process task whose child calls ctx.mark_done_on_ack(), and a job of it enqueued
    # without an idempotency key
    app_path = "tests.worker_runtime.tasks_processes:app"
    wf.spawn(concurrency=1, app=app_path, extra_env={"WORKERFLEET_RETRY_MAX_ATTEMPTS": "1"})
    job_id = wf.producer.enqueue("done-on-ack", {"marker": "k"}).job_id
    # When the worker runs it in a child
    wait_until(lambda: wf.stats().completed_total + wf.stats().dead_letter, 60, "the job")
    # Then it ran once and was acked with the marker the parent's ctx.already_done() reads
    s = wf.stats()
    assert [(e["job"], e["key"]) for e in wf.starts()] == [(job_id, None)]
    assert (s.completed_total, s.dead_letter) == (1, 0)
    prefix = "{wf:" + wf.queue + "}"
    assert wf.client.get(f"{prefix}:done:job-id:{job_id}") == "1"
