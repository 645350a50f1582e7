"""The console's "find a job" page and its Cancel, through the same confirm and act as a purge.

In-process on ``memory://NAME`` (its store is shared inside one process): the console app runs
over httpx's ASGI transport with a ``URLSource`` on the memory URL; the test's own broker puts
jobs in each state and reads what a cancel did. A broker that cannot look a job up or cancel it
(RabbitMQ, SQS) is the memory broker with those two capabilities taken away: the runtime's
``fetch_job_status`` and ``cancel_jobs`` refuse it by its capabilities, as they refuse those.
The same path in a real browser on real Redis is in test_console_browser.py.
"""

from __future__ import annotations

import dataclasses
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

TOKEN = "find-console-token"
AUTH = security.AuthSettings(token=TOKEN)
BEARER = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture
async def queue_url() -> AsyncIterator[str]:
    yield f"memory://find-{uuid.uuid4().hex[:8]}"
    memory.forget_stores()


class OneQueueSource:
    """A console source of one already open broker (its capabilities as the test set them)."""

    def __init__(self, broker: Any) -> None:
        self.broker = broker

    async def fetch_pools(self) -> list[sources.PoolView]:
        return []

    async def fetch_queue_broker(self, key: str) -> tuple[Any, str]:
        if key != "jobs":
            raise sources.PoolNotFoundError(key)
        return self.broker, "jobs"

    async def close(self) -> None:
        pass


def _client(console: Any, **kwargs: Any) -> httpx.AsyncClient:
    transport = httpx.ASGITransport(app=console)
    return httpx.AsyncClient(transport=transport, base_url="http://console", **kwargs)


async def _enqueue(broker: Any, task: str, delay: float = 0.0) -> str:
    env = envelope_mod.build_envelope(task, {"n": 1})
    (result,) = await broker.enqueue_many([base.EnqueueRequest(env, delay_seconds=delay)])
    return str(result.job_id)


async def _find(web: httpx.AsyncClient, job_id: str) -> httpx.Response:
    return await web.get("/find", params={"pool": "jobs", "id": job_id})


def _cell(page: httpx.Response, cell_id: str) -> str:
    """The text of the page's element ``id="cell_id"`` up to its closing tag."""
    return page.text.split(f'id="{cell_id}">', 1)[1].split("</", 1)[0]


async def test_the_find_page_shows_each_state_with_its_times_and_last_error(
    queue_url: str,
) -> None:
    # Given a queue (keeping finished records) with a job in each state, and a console over it
    options = base.QueueOptions(keep_finished_seconds=600.0)
    broker = await brokers.open_broker(queue_url, "jobs", options=options)
    running = await _enqueue(broker, "resize")
    (held,) = await broker.fetch("w-busy", 1)
    done = await _enqueue(broker, "mail")
    (finishing,) = await broker.fetch("w-done", 1)
    assert await broker.ack(finishing)
    retried = await _enqueue(broker, "charge")
    (failing,) = await broker.fetch("w-fail", 1)
    failure = base.Failure("ValueError", "card <b>declined</b>\nsecond line", "Traceback", "w")
    assert await broker.retry(failing, failure, delay_seconds=600.0)
    dead = await _enqueue(broker, "render")
    (dying,) = await broker.fetch("w-dead", 1)
    assert await broker.dead_letter(dying, "non_retryable", failure=failure)
    waiting = await _enqueue(broker, "thumbnail")
    scheduled = await _enqueue(broker, "later", delay=3600.0)
    assert held.id == running and finishing.id == done
    [lease] = await broker.fetch_job_status([running])
    source = sources.URLSource(queue_url, ["jobs"])
    console = app.build_app(app.ConsoleSettings(auth=AUTH, allow_writes=True), source)
    try:
        async with _client(console, headers=BEARER) as web:
            # When the queue page and each job's page are read
            queue = await web.get("/queue", params={"pool": "jobs"})
            pages = {job_id: await _find(web, job_id) for job_id in (waiting, scheduled)}
            pages |= {job_id: await _find(web, job_id) for job_id in (retried, running)}
            pages |= {job_id: await _find(web, job_id) for job_id in (dead, done)}
    finally:
        await source.close()
        await broker.close()
    # Then the queue page offers the form, and each page shows its job's state and fields
    assert queue.status_code == 200 and 'action="/find"' in queue.text
    assert all(p.status_code == 200 for p in pages.values())
    assert _cell(pages[waiting], "state") == "waiting"
    assert _cell(pages[waiting], "task") == "thumbnail"
    assert _cell(pages[waiting], "priority") == "normal"
    assert _cell(pages[scheduled], "state") == "scheduled"
    assert _cell(pages[scheduled], "due").endswith(" UTC")
    assert _cell(pages[retried], "state") == "scheduled (a retry waiting out its backoff)"
    assert _cell(pages[retried], "attempts") == "1"
    # (the last error's first line only, its markup shown as text)
    last_error = _cell(pages[retried], "last-error")
    assert last_error == "ValueError: card &lt;b&gt;declined&lt;/b&gt;"
    assert _cell(pages[running], "state") == "running"
    assert _cell(pages[running], "worker") == "w-busy"
    assert _cell(pages[running], "lease") == app._when(lease.lease_expires_at)
    assert _cell(pages[dead], "state") == "dead_lettered"
    assert f'href="/job?pool=jobs&amp;id={dead}" id="dead-letter"' in pages[dead].text
    assert _cell(pages[done], "state") == "done"
    assert _cell(pages[done], "finished").endswith(" UTC")
    # And Cancel is offered for the waiting and scheduled jobs only
    offered = {job_id for job_id, page in pages.items() if 'id="cancel-one"' in page.text}
    assert offered == {waiting, scheduled, retried}


async def test_an_unknown_id_says_so_and_when_it_was_enqueued_if_the_queue_remembers(
    queue_url: str,
) -> None:
    # Given a queue where one job was enqueued and cancelled, and a console over it
    broker = await brokers.open_broker(queue_url, "jobs")
    gone = await _enqueue(broker, "resize")
    assert await broker.cancel_jobs([gone]) == [base.CancelOutcome.CANCELLED]
    [status] = await broker.fetch_job_status([gone])
    source = sources.URLSource(queue_url, ["jobs"])
    console = app.build_app(app.ConsoleSettings(auth=AUTH, allow_writes=True), source)
    try:
        async with _client(console, headers=BEARER) as web:
            # When a mistyped id and the cancelled job's id are looked up
            typo = await _find(web, "no-such-job")
            cancelled = await _find(web, gone)
    finally:
        await source.close()
        await broker.close()
    # Then both say there is no such job, the cancelled one with its enqueue time, no Cancel
    assert typo.status_code == 200 and "No job no-such-job in queue jobs." in typo.text
    assert "enqueued at" not in typo.text
    assert f"No job {gone} in queue jobs." in cancelled.text
    assert f"It was enqueued at {app._when(status.enqueued_at)}" in cancelled.text
    assert "no longer in the queue" in cancelled.text
    assert 'id="cancel-one"' not in cancelled.text + typo.text


async def test_a_broker_that_cannot_look_a_job_up_shows_no_form_and_its_url_says_why(
    queue_url: str,
) -> None:
    # Given a broker without status_by_id and cancel_by_id (as RabbitMQ and SQS)
    broker = await brokers.open_broker(queue_url, "jobs")
    broker.capabilities = dataclasses.replace(
        broker.capabilities, status_by_id=False, cancel_by_id=False
    )
    waiting = await _enqueue(broker, "resize")
    console = app.build_app(
        app.ConsoleSettings(auth=AUTH, allow_writes=True), OneQueueSource(broker)
    )
    csrf = security.build_csrf_token(AUTH, "bearer")
    try:
        async with _client(console, headers=BEARER) as web:
            # When its queue page, the find URL and a cancel (confirm and act) are requested
            queue = await web.get("/queue", params={"pool": "jobs"})
            found = await _find(web, waiting)
            confirm = await web.get("/job/cancel", params={"pool": "jobs", "id": waiting})
            act = await web.post("/job/cancel", data={"pool": "jobs", "id": waiting, "csrf": csrf})
        # (its own capabilities back, to read what the console left)
        broker.capabilities = memory.CAPABILITIES
        [status] = await broker.fetch_job_status([waiting])
    finally:
        await broker.close()
    # Then the queue page has no form, and each URL is a page saying the broker cannot
    assert queue.status_code == 200 and 'action="/find"' not in queue.text
    assert found.status_code == 501 and "cannot look a job up by id" in found.text
    for page in (confirm, act):
        assert page.status_code == 501 and "cannot cancel a job by id" in page.text
    # And the job is still waiting
    assert status.state == base.JobState.WAITING


async def _cancel_setup(queue_url: str, *, allow_writes: bool = True) -> tuple[Any, Any, Any]:
    broker = await brokers.open_broker(queue_url, "jobs")
    source = sources.URLSource(queue_url, ["jobs"])
    console = app.build_app(app.ConsoleSettings(auth=AUTH, allow_writes=allow_writes), source)
    return broker, source, console


async def test_cancel_goes_through_the_confirmation_page_and_shows_each_outcome(
    queue_url: str,
) -> None:
    # Given a waiting job, a running one, a dead letter, and a console with writes on
    broker, source, console = await _cancel_setup(queue_url)
    running = await _enqueue(broker, "resize")
    (held,) = await broker.fetch("w-busy", 1)
    dead = await _enqueue(broker, "render")
    (dying,) = await broker.fetch("w-dead", 1)
    assert await broker.dead_letter(dying, "non_retryable")
    waiting = await _enqueue(broker, "thumbnail")
    ids = [waiting, running, dead, "no-such-job"]
    try:
        async with _client(console, headers=BEARER) as web:
            # When the cancel of the waiting job is asked for, nothing happens before confirming
            confirm = await web.get("/job/cancel", params={"pool": "jobs", "id": waiting})
            assert confirm.status_code == 200 and "Cancel 1 job(s) of jobs?" in confirm.text
            [before] = await broker.fetch_job_status([waiting])
            assert before.state == base.JobState.WAITING
            # And the confirmation form (its CSRF token) is posted for four ids
            csrf = confirm.text.split('name="csrf" value="')[1].split('"')[0]
            done = await web.post("/job/cancel", data={"pool": "jobs", "csrf": csrf, "id": ids})
    finally:
        await source.close()
    # Then each id's outcome is shown, and only the waiting job is gone
    assert done.status_code == 200, done.text
    assert "Cancelled 1 of 4 job(s)" in done.text
    outcomes = ("cancelled", "running", "dead_lettered", "unknown")
    for job_id, outcome in zip(ids, outcomes, strict=True):
        row = done.text.split(f'<tr data-job="{job_id}">', 1)[1].split("</tr>", 1)[0]
        assert f'<td class="outcome">{outcome}</td>' in row
    states = [s.state for s in await broker.fetch_job_status(ids)]
    assert states == ["unknown", "running", "dead_lettered", "unknown"]
    assert held.id == running
    await broker.close()


async def test_a_cancel_without_the_csrf_token_or_from_another_site_is_refused_and_cancels_nothing(
    queue_url: str,
) -> None:
    # Given a waiting job and a console with writes on, signed in through the browser's cookie
    broker, source, console = await _cancel_setup(queue_url)
    waiting = await _enqueue(broker, "thumbnail")
    cookie = security.build_session_cookie(AUTH)
    try:
        async with _client(console, cookies={security.SESSION_COOKIE: cookie}) as web:
            # When another site's page posts the cancel form with the session (no token, then
            # a forged one), and a request without any sign-in posts it with a real token
            forged = [
                await web.post(
                    "/job/cancel",
                    data={"pool": "jobs", "id": waiting, **token},
                    headers={"Origin": "https://evil.example"},
                )
                for token in ({}, {"csrf": "0" * 64})
            ]
        async with _client(console) as stranger:
            csrf = security.build_csrf_token(AUTH, "session|" + cookie)
            anonymous = await stranger.post(
                "/job/cancel", data={"pool": "jobs", "id": waiting, "csrf": csrf}
            )
    finally:
        await source.close()
    # Then all are refused, and the job still waits
    for page in forged:
        assert page.status_code == 403 and "missing or wrong CSRF token" in page.text
    assert anonymous.status_code == 401
    [status] = await broker.fetch_job_status([waiting])
    assert status.state == base.JobState.WAITING
    await broker.close()


async def test_a_read_only_console_offers_no_cancel_and_refuses_one(queue_url: str) -> None:
    # Given a waiting job and a console without writes
    broker, source, console = await _cancel_setup(queue_url, allow_writes=False)
    waiting = await _enqueue(broker, "thumbnail")
    try:
        async with _client(console, headers=BEARER) as web:
            # When its page is read, its cancel asked for and the form posted anyway
            found = await _find(web, waiting)
            confirm = await web.get("/job/cancel", params={"pool": "jobs", "id": waiting})
            csrf = confirm.text.split('name="csrf" value="')[1].split('"')[0]
            act = await web.post("/job/cancel", data={"pool": "jobs", "id": waiting, "csrf": csrf})
    finally:
        await source.close()
    # Then no Cancel is offered, the confirmation says read-only, the post is refused
    assert found.status_code == 200 and 'id="cancel-one"' not in found.text
    assert "This console is read-only" in confirm.text and 'id="confirm"' not in confirm.text
    assert act.status_code == 403 and "read-only" in act.text
    [status] = await broker.fetch_job_status([waiting])
    assert status.state == base.JobState.WAITING
    await broker.close()
