"""Every step a handler starts joins its correlation and shows in ``workerfleet trace``.

Jobs a handler enqueues one by one or in a batch (``App.enqueue_many``) carry its correlation
id and name it as their cause; and the trace prints every step however long its chain of
causes (a job that does its work a page at a time and enqueues the next page builds one as
deep as it has pages; the trace keeps up to 1,000 entries). Real worker, real redis-server, the
real command; the history is what each job saw when it ran and the trace that was stored.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable
from typing import Any

from tests.support import cli, memory_worker
from worker_runtime import App, JobContext, config, events, producer, worker
from worker_runtime.brokers import base, open_broker

PAGES = 60
"""Deeper than the 50 levels the tree used to stop at."""


async def publish_and_run(
    url: str, app: App, topic: str, group: str, corr: str, ran_all: Callable[[], bool]
) -> tuple[str, list[base.TraceEntry]]:
    """Register ``group``, publish one event of ``topic`` with correlation id ``corr``, run a
    worker of ``app`` until ``ran_all()``; the event id and the stored trace."""
    publisher = App(queue="publisher")
    broker: Any = await open_broker(url, "publisher")  # a Topics broker (Redis)
    publisher.bind_broker(broker)
    try:
        await broker.subscribe(topic, group)
        root = await publisher.publish(topic, {"what": "orders"}, correlation_id=corr)
        settings = config.WorkerSettings(redis_url=url, metrics_port=0)
        w = worker.Worker(app, settings, install_signal_handlers=False)

        async def check() -> bool:
            return ran_all()

        await memory_worker.run_until(w, check, "every job to run")
        return root.event_id, await broker.fetch_trace(corr)
    finally:
        await broker.close()
        await publisher.aclose()


async def test_jobs_a_handler_enqueues_in_a_batch_inherit_its_correlation_and_name_their_cause(
    redis_server: Any,
) -> None:
    # Given a subscription whose handler enqueues two jobs with one enqueue_many call
    topic = f"shop{uuid.uuid4().hex[:8]}.order.placed"
    app = App(queue=events.subscription_queue(topic, "fulfilment"))
    ran: dict[str, tuple[str | None, str | None, str]] = {}

    @app.subscribe(topic, group="fulfilment")
    async def fulfil(order: dict[str, Any], ctx: JobContext) -> None:
        specs = [producer.JobSpec("reserve-stock", {"sku": sku}) for sku in ("a", "b")]
        await app.enqueue_many(specs)

    @app.task("reserve-stock")
    async def reserve(item: dict[str, str], ctx: JobContext) -> None:
        cause = ctx.headers.get(events.CAUSATION_HEADER)
        ran[item["sku"]] = (ctx.correlation_id, cause, ctx.job_id)

    # When an event is published with a correlation id and a worker handles it
    corr = f"req-{uuid.uuid4().hex[:8]}"
    root, trace = await publish_and_run(
        redis_server.url, app, topic, "fulfilment", corr, lambda: len(ran) == 2
    )
    # Then both jobs ran in the event's correlation, naming the event's job as their cause,
    # and the trace shows them under the event
    assert {sku: seen[:2] for sku, seen in ran.items()} == {"a": (corr, root), "b": (corr, root)}
    assert events.render_trace_tree(trace) == [
        f"event {topic} {root}",
        f"  job reserve-stock {ran['a'][2]}",
        f"  job reserve-stock {ran['b'][2]}",
    ]


async def test_a_chain_of_jobs_each_enqueuing_the_next_prints_every_step_in_the_trace(
    redis_server: Any,
) -> None:
    # Given a subscription whose handler enqueues page 1 of an export, and a page task that
    # enqueues the next page until the last
    topic = f"report{uuid.uuid4().hex[:8]}.export.requested"
    app = App(queue=events.subscription_queue(topic, "export"))
    ran: list[tuple[int, str]] = []

    @app.subscribe(topic, group="export")
    async def start(data: dict[str, Any], ctx: JobContext) -> None:
        await app.enqueue("export-page", {"page": 1})

    @app.task("export-page")
    async def page(data: dict[str, int], ctx: JobContext) -> None:
        ran.append((data["page"], ctx.job_id))
        if data["page"] < PAGES:
            await app.enqueue("export-page", {"page": data["page"] + 1})

    # When the event is published and a worker runs the chain to its last page
    corr = f"req-{uuid.uuid4().hex[:8]}"
    root, _ = await publish_and_run(
        redis_server.url, app, topic, "export", corr, lambda: len(ran) == PAGES
    )
    assert [n for n, _ in ran] == list(range(1, PAGES + 1))
    done = await asyncio.to_thread(cli.run_cli, "trace", corr, redis_url=redis_server.url)
    # Then the trace prints the event and every page, each one level under the page that
    # enqueued it
    assert done.returncode == 0, done.stderr
    expected = [f"event {topic} {root}"] + [
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
