"""The console's audit log: one line per write attempt saying who did what to which jobs.

In-process on ``memory://NAME`` (its store is shared inside one process): the console app runs
over httpx's ASGI transport from a fixed client address, signed in through the login form as a
browser is (a session cookie, the CSRF token of the confirmation page); ``caplog`` captures the
``workerfleet.console.audit`` records, and each line is checked as the console's own log format
writes it (``cli.cmd_console``).
"""

from __future__ import annotations

import logging
import re
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
import requests
from workerfleet_operator.console import app, security, sources

from tests.support.redis_servers import free_port
from tests.workerfleet_operator import console_support as cs
from worker_runtime import brokers
from worker_runtime import envelope as envelope_mod
from worker_runtime.brokers import base, memory

pytestmark = pytest.mark.timeout(60)

TOKEN = "audit-console-token-5c1e"
AUTH = security.AuthSettings(token=TOKEN)
CLIENT = ("10.0.0.9", 5555)
FORMAT = logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s")


@pytest.fixture
def queue_url() -> Iterator[str]:
    yield f"memory://audit-{uuid.uuid4().hex[:8]}"
    memory.forget_stores()


@dataclass
class SignedIn:
    """The secrets of a client signed in through the login form."""

    cookie: str
    csrf: str

    def secrets(self) -> list[str]:
        return [TOKEN, self.cookie, self.csrf]


def _browser(console: Any, client: tuple[str, int] = CLIENT) -> httpx.AsyncClient:
    transport = httpx.ASGITransport(app=console, client=client)
    return httpx.AsyncClient(transport=transport, base_url="http://console")


async def _sign_in(web: httpx.AsyncClient) -> SignedIn:
    """Sign ``web`` in as a browser does: the token through the form, then a page's CSRF."""
    signed = await web.post("/login", data={"token": TOKEN}, headers={"Origin": "http://console"})
    assert signed.status_code == 303, signed.text
    cookie = web.cookies[security.SESSION_COOKIE]
    page = await web.get("/dlq/purge", params={"pool": "jobs"})
    found = re.search(r'name="csrf" value="([^"]*)"', page.text)
    assert found is not None, page.text
    return SignedIn(cookie, found.group(1))


async def _dead_letter(broker: Any, task: str) -> str:
    await broker.enqueue(base.EnqueueRequest(envelope_mod.build_envelope(task, {"n": 1})))
    (job,) = await broker.fetch("w-seed", 1)
    assert await broker.dead_letter(job, "max_attempts")
    return str(job.id)


async def _enqueue(broker: Any, task: str) -> str:
    env = envelope_mod.build_envelope(task, {"n": 1})
    (result,) = await broker.enqueue_many([base.EnqueueRequest(env)])
    return str(result.job_id)


def _audit_records(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == "workerfleet.console.audit"]


def _fields(record: logging.LogRecord) -> dict[str, Any]:
    fields: dict[str, Any] = getattr(record, "audit")  # noqa: B009 (set through extra=)
    return fields


@pytest.fixture
async def console_over(queue_url: str) -> AsyncIterator[tuple[Any, Any]]:
    """A console with writes on over the memory queue ``jobs``, and the test's own broker."""
    broker = await brokers.open_broker(queue_url, "jobs")
    source = sources.URLSource(queue_url, ["jobs"])
    console = app.build_app(app.ConsoleSettings(auth=AUTH, allow_writes=True), source)
    try:
        yield console, broker
    finally:
        await source.close()
        await broker.close()


async def test_each_write_logs_one_line_saying_who_from_where_did_what_to_which_ids(
    console_over: tuple[Any, Any], caplog: pytest.LogCaptureFixture
) -> None:
    # Given a queue with two dead letters and a waiting and a running job, and an engineer
    # signed in through the form from 10.0.0.9
    console, broker = console_over
    replayed, purged = await _dead_letter(broker, "charge"), await _dead_letter(broker, "mail")
    running = await _enqueue(broker, "resize")
    (held,) = await broker.fetch("w-busy", 1)
    waiting = await _enqueue(broker, "thumb")
    assert held.id == running
    # When they replay one dead letter, purge the other and cancel three ids
    with caplog.at_level(logging.INFO, logger="workerfleet.console.audit"):
        async with _browser(console) as web:
            me = await _sign_in(web)
            form = {"pool": "jobs", "csrf": me.csrf}
            replay = await web.post("/dlq/replay", data={**form, "id": replayed})
            purge = await web.post("/dlq/purge", data={**form, "id": purged})
            cancel = await web.post(
                "/job/cancel", data={**form, "id": [waiting, running, "no-such-job"]}
            )
    assert [replay.status_code, purge.status_code, cancel.status_code] == [200, 200, 200]
    # Then each write left one line naming the action, queue, who, client, ids and outcome
    lines = _audit_records(caplog)
    assert [_fields(r)["action"] for r in lines] == ["replay", "purge", "cancel"]
    assert all(r.levelno == logging.INFO for r in lines)
    session = security.describe_identity(AUTH, "session|" + me.cookie)
    assert session.startswith("token:session-")
    common = {"outcome": "done", "pool": "jobs", "queue": "jobs", "who": session}
    assert _fields(lines[0]) == {
        "action": "replay", **common, "client": "10.0.0.9", "asked": 1, "replayed": 1,
        "ids": [replayed],
    }  # fmt: skip
    assert _fields(lines[1]) == {
        "action": "purge", **common, "client": "10.0.0.9", "asked": 1, "purged": 1,
        "ids": [purged],
    }  # fmt: skip
    assert _fields(lines[2]) == {
        "action": "cancel", **common, "client": "10.0.0.9", "asked": 3, "cancelled": 1,
        "running": 1, "dead_lettered": 0, "unknown": 1,
        "ids": [waiting, running, "no-such-job"],
    }  # fmt: skip
    # And the line the console writes says the same as key=value pairs
    text = FORMAT.format(lines[1])
    assert " INFO workerfleet.console.audit: console write: action=purge outcome=done " in text
    assert f'who={session} client=10.0.0.9 asked=1 purged=1 ids=["{purged}"]' in text
    # And no line carries the token, the session cookie or the CSRF token
    for record in lines:
        for secret in me.secrets():
            assert secret not in FORMAT.format(record)
            assert secret not in repr(_fields(record))


async def test_a_write_without_the_csrf_token_is_refused_logged_and_changes_nothing(
    console_over: tuple[Any, Any], caplog: pytest.LogCaptureFixture
) -> None:
    # Given a queue with a dead letter and an engineer signed in through the form
    console, broker = console_over
    dead = await _dead_letter(broker, "charge")
    # When a purge of it is posted without the CSRF token
    with caplog.at_level(logging.INFO, logger="workerfleet.console.audit"):
        async with _browser(console) as web:
            me = await _sign_in(web)
            refused = await web.post("/dlq/purge", data={"pool": "jobs", "id": dead})
    # Then it is refused, the dead letter is still there, and one line says so and why
    assert refused.status_code == 403
    assert [d.job_id for d in await broker.list_dead_letters()] == [dead]
    [line] = _audit_records(caplog)
    assert _fields(line) == {
        "action": "purge", "outcome": "refused", "reason": "missing or wrong CSRF token",
        "pool": "jobs", "who": security.describe_identity(AUTH, "session|" + me.cookie),
        "client": "10.0.0.9", "asked": 1, "ids": [dead],
    }  # fmt: skip
    for secret in me.secrets():
        assert secret not in FORMAT.format(line)


async def test_a_read_only_console_and_a_stranger_each_leave_a_refusal_line(
    queue_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    # Given a read-only console over a queue with a dead letter, and a signed-in engineer
    broker = await brokers.open_broker(queue_url, "jobs")
    dead = await _dead_letter(broker, "charge")
    source = sources.URLSource(queue_url, ["jobs"])
    console = app.build_app(app.ConsoleSettings(auth=AUTH), source)
    try:
        # When the engineer posts a purge with the CSRF token, and a stranger (not signed in)
        # posts one too
        with caplog.at_level(logging.INFO, logger="workerfleet.console.audit"):
            async with _browser(console) as web, _browser(console, ("10.0.0.66", 5555)) as stranger:
                me = await _sign_in(web)
                form = {"pool": "jobs", "id": dead, "csrf": me.csrf}
                read_only = await web.post("/dlq/purge", data=form)
                unsigned = await stranger.post("/dlq/purge", data={"pool": "jobs", "id": dead})
        assert [d.job_id for d in await broker.list_dead_letters()] == [dead]
    finally:
        await source.close()
        await broker.close()
    # Then both are refused and logged with the reason; the stranger's form is not read
    assert (read_only.status_code, unsigned.status_code) == (403, 401)
    engineer, outsider = (_fields(r) for r in _audit_records(caplog))
    assert engineer["outcome"] == "refused" and engineer["reason"] == "read-only console"
    assert engineer["ids"] == [dead] and engineer["client"] == "10.0.0.9"
    assert outsider == {
        "action": "purge", "outcome": "refused", "reason": "not signed in", "who": "-",
        "client": "10.0.0.66",
    }  # fmt: skip


async def test_a_write_to_a_broker_that_does_not_answer_logs_that_it_failed(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # Given a console with writes on over a Redis that is down, used with the token
    source = sources.URLSource(f"redis://127.0.0.1:{free_port()}/0", ["jobs"])
    console = app.build_app(app.ConsoleSettings(auth=AUTH, allow_writes=True), source)
    transport = httpx.ASGITransport(app=console, client=CLIENT, raise_app_exceptions=False)
    csrf = security.build_csrf_token(AUTH, "bearer")
    try:
        # When a cancel is posted
        with caplog.at_level(logging.INFO, logger="workerfleet.console.audit"):
            async with httpx.AsyncClient(
                transport=transport,
                base_url="http://console",
                headers={"Authorization": f"Bearer {TOKEN}"},
            ) as web:
                failed = await web.post(
                    "/job/cancel", data={"pool": "jobs", "id": "j1", "csrf": csrf}
                )
    finally:
        await source.close()
    # Then its line says it failed, that it may have been done in part, and for which ids
    assert failed.status_code == 503
    [line] = _audit_records(caplog)
    fields = _fields(line)
    assert (fields["action"], fields["outcome"], fields["who"]) == (
        "cancel",
        "failed",
        "token:bearer",
    )
    assert "does not answer" in fields["reason"] and "done in part" in fields["reason"]
    assert fields["ids"] == ["j1"] and fields["queue"] == "jobs"
    assert TOKEN not in FORMAT.format(line) and csrf not in FORMAT.format(line)


async def test_a_purge_of_the_most_ids_a_confirmation_lists_logs_a_line_no_id_can_split(
    console_over: tuple[Any, Any], caplog: pytest.LogCaptureFixture
) -> None:
    # Given a queue with a dead letter, a signed-in engineer, and a form as a 1000-id
    # confirmation page posts it: the dead letter's id, one 100,000 characters long, one with an
    # escape sequence, a carriage return and a forged log line, one of bytes that are not
    # UTF-8, and unknown ids
    console, broker = console_over
    dead = await _dead_letter(broker, "charge")
    forged = "x\x1b[2K\r2026-01-01 INFO workerfleet.console.audit: console write: action=nothing"
    odd = [dead, forged, "a" * 100_000, "bad-\udcff-bytes"]
    ids = odd + [f"job-{n:04}" for n in range(app.ACTION_LIMIT - len(odd))]
    # When they post the purge (with reset_attempts, as a replay's form has it)
    with caplog.at_level(logging.INFO, logger="workerfleet.console.audit"):
        async with _browser(console) as web:
            me = await _sign_in(web)
            form = {"pool": "jobs", "csrf": me.csrf, "reset_attempts": "1"}
            purge = await web.post(
                "/dlq/purge", data={**form, "id": [app.quote_job_id(i) for i in ids]}
            )
    # Then the dead letter is purged, and the line is one line of bounded length naming the
    # first 50 ids, each printable and bounded, and how many more there were
    assert purge.status_code == 200, purge.text
    assert await broker.list_dead_letters() == []
    [line] = _audit_records(caplog)
    text = FORMAT.format(line)
    assert "\n" not in text and len(text) < 5_000
    fields = _fields(line)
    assert (fields["asked"], fields["purged"]) == (app.ACTION_LIMIT, 1)
    assert len(fields["ids"]) == app.AUDIT_IDS_SHOWN and fields["more_ids"] == 950
    assert fields["ids"][0] == dead and fields["ids"][4] == "job-0000"
    # a terminal reading the log gets no escape sequence or carriage return from an id
    assert fields["ids"][1] == forged.replace("\x1b", "\\x1b").replace("\r", "\\r")
    assert "\x1b" not in text and "\r" not in text
    assert fields["ids"][2] == "a" * app.AUDIT_TEXT_MAX + "...(100000 chars)"
    assert fields["ids"][3] == "bad-\\xff-bytes"
    text.encode("utf-8")  # printable: a handler writing UTF-8 does not fail on it


async def test_a_ten_thousand_id_purge_is_refused_with_one_bounded_line(
    console_over: tuple[Any, Any], caplog: pytest.LogCaptureFixture
) -> None:
    # Given a queue with a dead letter and a signed-in engineer
    console, broker = console_over
    dead = await _dead_letter(broker, "charge")
    ids = [dead] + [f"job-{n:05}" for n in range(9_999)]
    # When they post a purge naming 10,000 ids (more than any confirmation page lists)
    with caplog.at_level(logging.INFO, logger="workerfleet.console.audit"):
        async with _browser(console) as web:
            me = await _sign_in(web)
            purge = await web.post("/dlq/purge", data={"pool": "jobs", "csrf": me.csrf, "id": ids})
    # Then it is refused, nothing is purged, and one short line says why
    assert purge.status_code == 400
    assert [d.job_id for d in await broker.list_dead_letters()] == [dead]
    [line] = _audit_records(caplog)
    assert len(FORMAT.format(line)) < 1_000
    fields = _fields(line)
    assert (fields["action"], fields["outcome"]) == ("purge", "refused")
    assert "Too many fields" in fields["reason"] and "ids" not in fields


def test_a_console_process_writes_the_audit_line_to_its_log_without_the_token() -> None:
    # Given a real console process with writes on over a memory queue, used with the token
    proc = cs.ConsoleProcess(f"memory://audit-{uuid.uuid4().hex[:8]}", ["jobs"], allow_writes=True)
    bearer = {"Authorization": f"Bearer {cs.TOKEN}"}
    try:
        page = requests.get(
            proc.base + "/dlq/purge",
            params={"pool": "jobs", "id": "j1"},
            headers=bearer,
            timeout=10,
        )
        found = re.search(r'name="csrf" value="([^"]*)"', page.text)
        assert found is not None, page.text
        # When a purge is posted
        done = requests.post(
            proc.base + "/dlq/purge",
            data={"pool": "jobs", "id": "j1", "csrf": found.group(1)},
            headers=bearer,
            timeout=10,
        )
        log = proc.log()
    finally:
        proc.stop()
    # Then its log (stderr) has the audit line at INFO, and neither the token nor the CSRF token
    assert done.status_code == 200
    assert " INFO workerfleet.console.audit: console write: action=purge outcome=done " in log
    assert 'who=token:bearer client=127.0.0.1 asked=1 purged=0 ids=["j1"]' in log
    assert cs.TOKEN not in log and found.group(1) not in log
