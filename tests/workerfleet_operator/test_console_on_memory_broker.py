"""The web console reads and writes through the broker protocols, so a non-Redis URL works.

In-process on ``memory://NAME`` (its store is shared inside one process): the console app runs
over httpx's ASGI transport with a ``URLSource`` on the memory URL; the test's own broker seeds
the queue and reads what a replay did. The same pages on real Redis in a real browser are
tests/workerfleet_operator/test_console_browser.py.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from workerfleet_operator.console import app, security, sources

from worker_runtime import brokers
from worker_runtime import envelope as envelope_mod
from worker_runtime.brokers import base, memory

pytestmark = pytest.mark.timeout(60)

TOKEN = "memory-console-token"


@pytest.fixture
async def queue_url() -> AsyncIterator[str]:
    yield f"memory://console-{uuid.uuid4().hex[:8]}"
    memory.forget_stores()


async def _seed(broker: Any) -> tuple[str, str]:
    """One dead letter (a ValueError of charge_card) and one job held by worker w-busy."""
    await broker.enqueue(base.EnqueueRequest(envelope_mod.build_envelope("charge_card", {"n": 1})))
    (d,) = await broker.fetch("w-seed", 1)
    failure = base.Failure("ValueError", "card declined <b>now</b>", "Traceback: here", "w-seed")
    assert await broker.dead_letter(d, "max_attempts", failure=failure)
    await broker.enqueue(base.EnqueueRequest(envelope_mod.build_envelope("resize", {"n": 2})))
    (held,) = await broker.fetch("w-busy", 1)
    return d.id, held.id


async def test_pools_queue_dlq_job_and_a_replay_work_on_a_memory_url(queue_url: str) -> None:
    # Given a memory queue with one dead letter and one running job, and a console over it
    broker = await brokers.open_broker(queue_url, "jobs")
    dead_id, running_id = await _seed(broker)
    auth = security.AuthSettings(token=TOKEN)
    source = sources.URLSource(queue_url, ["jobs"])
    console = app.build_app(app.ConsoleSettings(auth=auth, allow_writes=True), source)
    headers = {"Authorization": f"Bearer {TOKEN}"}
    transport = httpx.ASGITransport(app=console)
    try:
        async with httpx.AsyncClient(transport=transport, base_url="http://console") as web:
            # When the pages are read
            pools = await web.get("/", headers=headers)
            queue = await web.get("/queue", params={"pool": "jobs"}, headers=headers)
            dlq = await web.get(
                "/dlq", params={"pool": "jobs", "error": "ValueError"}, headers=headers
            )
            # (an offset edited by hand into the URL shows the first page, not an error)
            odd = await web.get("/dlq", params={"pool": "jobs", "offset": "abc"}, headers=headers)
            job = await web.get("/job", params={"pool": "jobs", "id": dead_id}, headers=headers)
            # Then each shows the broker's records (the target never with a password)
            assert pools.status_code == 200 and "memory://" in pools.text
            assert queue.status_code == 200
            assert running_id in queue.text and "w-busy" in queue.text
            assert dlq.status_code == 200 and dead_id in dlq.text
            assert odd.status_code == 200 and dead_id in odd.text
            assert job.status_code == 200 and "charge_card" in job.text
            assert "card declined &lt;b&gt;now&lt;/b&gt;" in job.text  # escaped
            # (and it says in words why the job is a dead letter)
            assert "it failed on every attempt it was allowed" in job.text
            # And a replay with the CSRF token puts the job back on the queue
            csrf = security.build_csrf_token(auth, "bearer")
            done = await web.post(
                "/dlq/replay",
                data={"pool": "jobs", "id": dead_id, "csrf": csrf},
                headers=headers,
            )
            assert done.status_code == 200, done.text
    finally:
        await source.close()
    stats = await broker.fetch_stats()
    assert (stats.dead_letter, stats.backlog) == (0, 1)
    assert await broker.show_dead_letter(dead_id) is None
    await broker.close()


async def test_the_queue_page_shows_the_cancelled_total_beside_the_other_totals(
    queue_url: str,
) -> None:
    # Given a memory queue of three jobs, two of them cancelled, and a console over it
    broker = await brokers.open_broker(queue_url, "jobs")
    requests = [
        base.EnqueueRequest(envelope_mod.build_envelope("resize", {"n": n})) for n in range(3)
    ]
    ids = [r.job_id for r in await broker.enqueue_many(requests)]
    assert await broker.cancel_jobs(ids[:2]) == [base.CancelOutcome.CANCELLED] * 2
    auth = security.AuthSettings(token=TOKEN)
    source = sources.URLSource(queue_url, ["jobs"])
    console = app.build_app(app.ConsoleSettings(auth=auth), source)
    transport = httpx.ASGITransport(app=console)
    try:
        async with httpx.AsyncClient(transport=transport, base_url="http://console") as web:
            # When the queue's page is read
            page = await web.get(
                "/queue", params={"pool": "jobs"}, headers={"Authorization": f"Bearer {TOKEN}"}
            )
    finally:
        await source.close()
        await broker.close()
    # Then it shows 2 cancelled next to the 3 enqueued, so the totals add up
    assert page.status_code == 200
    assert '<th>enqueued total</th><td class="n">3</td>' in page.text
    assert '<th>cancelled total</th><td class="n" id="cancelled-total">2</td>' in page.text


def test_a_broker_url_never_shows_its_credentials_or_query() -> None:
    shown = brokers.describe_target("amqp://user:pa55@rabbit.example:5672/vhost")
    assert shown == "amqp://rabbit.example:5672/vhost"
    sqs = brokers.describe_target("sqs://AKID:SECRET@127.0.0.1:9324/?region=x&secret=y")
    assert "SECRET" not in sqs and "secret" not in sqs and sqs.startswith("sqs://127.0.0.1:9324")
