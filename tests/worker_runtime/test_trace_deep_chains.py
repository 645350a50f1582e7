"""``workerfleet trace`` prints every step of a correlation, however long its chain of causes.

A job that does its work a page at a time and enqueues the next page builds a chain as deep as
it has pages; the trace keeps up to 1,000 entries, so the tree printed from it must too. Real
worker, real redis-server, the real command; the history is the pages the handler ran.
"""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

from tests.support import cli
from worker_runtime import App, JobContext, config, events, worker
from worker_runtime.brokers import base, open_broker

PAGES = 60
"""Deeper than the 50 levels the tree used to stop at."""


async def test_a_chain_of_jobs_each_enqueuing_the_next_prints_every_step_in_the_trace(
    redis_server: Any,
) -> None:
    # Given a subscription whose handler enqueues page 1 of an export, and a page task that
    # enqueues the next page until the last
    topic = f"report{uuid.uuid4().hex[:8]}.export.requested"
    queue = events.subscription_queue(topic, "export")
    app = App(queue=queue)
    ran: list[tuple[int, str]] = []

    @app.subscribe(topic, group="export")
    async def start(data: dict[str, Any], ctx: JobContext) -> None:
        await app.enqueue("export-page", {"page": 1})

    @app.task("export-page")
    async def page(data: dict[str, int], ctx: JobContext) -> None:
        ran.append((data["page"], ctx.job_id))
        if data["page"] < PAGES:
            await app.enqueue("export-page", {"page": data["page"] + 1})

    publisher = App(queue="publisher")
    broker = await open_broker(redis_server.url, "publisher")
    publisher.bind_broker(broker)
    await broker.subscribe(topic, "export")
    corr = f"req-{uuid.uuid4().hex[:8]}"
    # When the event is published and a worker runs the chain to its last page
    root = await publisher.publish(topic, {"what": "orders"}, correlation_id=corr)
    settings = config.WorkerSettings(redis_url=redis_server.url, metrics_port=0)
    w = worker.Worker(app, settings, install_signal_handlers=False)
    run = asyncio.create_task(w.run())
    try:
        for _ in range(2000):
            if len(ran) == PAGES:
                break
            await asyncio.sleep(0.01)
    finally:
        w.request_drain()
        assert await asyncio.wait_for(run, 20) == 0
    await broker.close()
    await publisher.aclose()
    assert [n for n, _ in ran] == list(range(1, PAGES + 1))
    done = await asyncio.to_thread(cli.run_cli, "trace", corr, redis_url=redis_server.url)
    # Then the trace prints the event and every page, each one level under the page that
    # enqueued it
    assert done.returncode == 0, done.stderr
    expected = [f"event {topic} {root.event_id}"] + [
        f"{'  ' * n}job export-page {job_id}" for n, job_id in ran
    ]
    assert done.stdout.splitlines() == expected


def test_entries_whose_causes_form_a_loop_are_printed_once_not_dropped() -> None:
    # Given a trace whose two entries name each other as their cause (ids given by hand)
    entries = [
        base.TraceEntry("job", "a", "b", "sync-user", 1.0),
        base.TraceEntry("job", "b", "a", "sync-user", 2.0),
    ]
    # When it is printed
    lines = events.render_trace_tree(entries)
    # Then both are there, the first as a root and the second under it
    assert lines == ["job sync-user a", "  job sync-user b"]
