"""The console's sign-in and CSRF rules, unit by unit, and the auth-proxy mode on a real process."""

from __future__ import annotations

import asyncio
import logging
import re
import uuid
from collections.abc import Callable

import httpx
import pytest
import requests
from workerfleet_operator.console import app, security, sources

from tests.support.redis_servers import RedisServer
from tests.workerfleet_operator import console_support as cs
from worker_runtime import brokers
from worker_runtime import envelope as envelope_mod
from worker_runtime.brokers import base, memory

AUTH = security.AuthSettings(token="t0ken")


def test_a_session_is_good_until_it_expires_and_a_forged_or_future_one_is_refused() -> None:
    cookie = security.build_session_cookie(AUTH, now=1_000_000.0)
    assert security.check_session_cookie(AUTH, cookie, now=1_000_000.0)
    assert security.check_session_cookie(AUTH, cookie, now=1_000_000.0 + security.SESSION_SECONDS)
    assert not security.check_session_cookie(
        AUTH, cookie, now=1_000_001.0 + security.SESSION_SECONDS
    )
    issued, _, signature = cookie.partition(".")
    assert not security.check_session_cookie(AUTH, f"{int(issued) + 60}.{signature}", now=2e6)
    other = security.AuthSettings(token="t0ken")  # another process: another key
    assert not security.check_session_cookie(other, cookie, now=1_000_000.0)


def test_identities_and_their_csrf_tokens() -> None:
    proxied = security.AuthSettings(token=None, proxy_header="X-Forwarded-User")
    local = "127.0.0.1"
    assert security.identify(proxied, {"x-forwarded-user": "ana"}, {}, local) == "proxy|ana"
    assert security.identify(proxied, {}, {}, local) is None
    assert security.identify(proxied, {"authorization": "Bearer t0ken"}, {}, local) is None
    assert security.identify(AUTH, {"authorization": "Bearer t0ken"}, {}, local) == "bearer"
    assert security.identify(AUTH, {"authorization": "Bearer nope"}, {}, local) is None
    assert security.identify(AUTH, {"x-forwarded-user": "ana"}, {}, local) is None  # not set up
    ana, bob = (security.build_csrf_token(proxied, f"proxy|{u}") for u in ("ana", "bob"))
    assert ana != bob and security.check_csrf_token(proxied, "proxy|ana", ana)
    assert not security.check_csrf_token(proxied, "proxy|bob", ana)
    with pytest.raises(ValueError, match="token or a trusted auth-proxy header"):
        security.AuthSettings()


def test_the_proxy_header_is_believed_only_from_a_trusted_proxy_and_refused_from_anyone_else() -> (
    None
):
    ingress = security.AuthSettings(
        proxy_header="X-Forwarded-User",
        trusted_proxies=security.parse_trusted_proxies(["10.0.0.0/24", "fd00::7"]),
    )
    header = {"x-forwarded-user": "ana"}
    for proxy in ("10.0.0.7", "::ffff:10.0.0.7", "fd00::7"):
        assert security.identify(ingress, header, {}, proxy) == "proxy|ana"
        assert security.untrusted_proxy_header(ingress, header, proxy) is None
    for stranger in ("10.0.1.7", "127.0.0.1", "fd00::8", None, "?"):
        assert security.identify(ingress, header, {}, stranger) is None
        reason = security.untrusted_proxy_header(ingress, header, stranger)
        assert reason is not None and "not a trusted auth proxy" in reason
    # Without the header there is nothing to refuse; without a list, loopback is the proxy.
    assert security.untrusted_proxy_header(ingress, {}, "10.0.1.7") is None
    beside = security.AuthSettings(proxy_header="X-Forwarded-User")
    assert security.identify(beside, header, {}, "127.0.0.1") == "proxy|ana"
    assert security.identify(beside, header, {}, "10.0.0.7") is None
    with pytest.raises(ValueError, match="not an IP address or CIDR: 'ingress'"):
        security.parse_trusted_proxies(["10.0.0.0/8", "ingress"])


async def test_a_pod_that_is_not_the_trusted_proxy_cannot_purge_with_the_proxy_header(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # Given a console with writes on behind an auth proxy at 10.0.0.1, over a queue with one
    # dead letter
    url = f"memory://proxied-{uuid.uuid4().hex[:8]}"
    broker = await brokers.open_broker(url, "jobs")
    await broker.enqueue(base.EnqueueRequest(envelope_mod.build_envelope("charge", {"n": 1})))
    (dead,) = await broker.fetch("w-seed", 1)
    assert await broker.dead_letter(dead, "max_attempts")
    assert isinstance(broker, base.DeadLetters)
    letters: base.DeadLetters = broker
    auth = security.AuthSettings(
        proxy_header="X-Forwarded-User",
        trusted_proxies=security.parse_trusted_proxies(["10.0.0.1"]),
    )
    source = sources.URLSource(url, ["jobs"])
    console = app.build_app(app.ConsoleSettings(auth=auth, allow_writes=True), source)
    claim = {"X-Forwarded-User": "x"}
    purge = {"pool": "jobs", "id": dead.id}

    async def try_purge(peer: str) -> tuple[httpx.Response, httpx.Response]:
        transport = httpx.ASGITransport(app=console, client=(peer, 5555))
        async with httpx.AsyncClient(transport=transport, base_url="http://console") as web:
            page = await web.get("/dlq/purge", params=purge, headers=claim)
            found = re.search(r'name="csrf" value="([^"]*)"', page.text)
            csrf = found.group(1) if found else ""
            done = await web.post("/dlq/purge", data={**purge, "csrf": csrf}, headers=claim)
            return page, done

    try:
        # When another pod (10.0.0.9) sends the header, reads the confirmation page and posts
        with caplog.at_level(logging.WARNING, logger="workerfleet.console"):
            page, done = await try_purge("10.0.0.9")
        # Then both are refused with the reason, logged, and the dead letter is still there
        for refused in (page, done):
            assert refused.status_code == 403
            assert "X-Forwarded-User header came from 10.0.0.9" in refused.text
            assert "not a trusted auth proxy" in refused.text
        assert "came from 10.0.0.9" in caplog.text
        assert [e.job_id for e in await letters.list_dead_letters()] == [dead.id]
        # When the trusted proxy sends the same requests
        page, done = await try_purge("10.0.0.1")
        # Then its user purges the dead letter
        assert page.status_code == 200 and done.status_code == 200
        assert "Purged 1 of 1" in done.text
        assert await letters.list_dead_letters() == []
    finally:
        await source.close()
        await broker.close()
        memory.forget_stores()


def test_secrets_never_reach_the_display_target() -> None:
    shown = brokers.describe_target("rediss://user:pa55@redis.example:6380/2")
    assert shown == "rediss://redis.example:6380/2"
    sentinel = brokers.describe_target("redis+sentinel://:pw@s1:26379,s2/mymaster/1")
    assert sentinel == "redis+sentinel://s1:26379,s2:26379/mymaster/1"
    assert "pw" not in sentinel


def start_proxied_console(
    redis_factory: Callable[..., RedisServer], queue_name: str, *extra_args: str
) -> cs.ConsoleProcess:
    """A console process (writes on) over a seeded queue, behind X-Forwarded-User."""
    server = redis_factory()
    asyncio.run(cs.seed_queue(server.url, queue_name))
    return cs.ConsoleProcess(
        server.url, [queue_name], allow_writes=True,
        extra_args=["--auth-proxy-header", "X-Forwarded-User", *extra_args],
    )  # fmt: skip


def test_behind_an_auth_proxy_the_header_signs_in_and_its_absence_is_refused(
    redis_factory: Callable[..., RedisServer], queue_name: str
) -> None:
    proc = start_proxied_console(redis_factory, queue_name)
    try:
        ok = requests.get(proc.base + "/", headers={"X-Forwarded-User": "ana"}, timeout=10)
        assert ok.status_code == 200 and "ana" in ok.text and queue_name in ok.text
        refused = requests.get(proc.base + "/", timeout=10)
        assert refused.status_code == 401 and queue_name not in refused.text
        # The proxy beside the console (loopback, trusted by default) names its own client in
        # X-Forwarded-For: the peer stays the proxy, so its header is still believed.
        forwarded = {"X-Forwarded-User": "ana", "X-Forwarded-For": "203.0.113.7"}
        ok = requests.get(proc.base + "/", headers=forwarded, timeout=10)
        assert ok.status_code == 200 and "ana" in ok.text
    finally:
        proc.stop()


def test_a_console_trusting_another_proxy_refuses_the_header_from_loopback_and_logs_it(
    redis_factory: Callable[..., RedisServer], queue_name: str
) -> None:
    # Given a real console process that trusts only the proxy at 10.0.0.1
    proc = start_proxied_console(redis_factory, queue_name, "--trusted-proxy", "10.0.0.1")
    try:
        # When a client on loopback sends the header, claiming to be forwarded by 10.0.0.1
        claim = {"X-Forwarded-User": "x", "X-Forwarded-For": "10.0.0.1"}
        refused = requests.get(proc.base + "/", headers=claim, timeout=10)
        # Then it is refused with the reason, which the console logs
        assert refused.status_code == 403 and queue_name not in refused.text
        assert "came from 127.0.0.1, which is not a trusted auth proxy" in refused.text
        assert "came from 127.0.0.1" in proc.log()
        # And the token still signs in
        ok = requests.get(
            proc.base + "/", headers={"Authorization": f"Bearer {cs.TOKEN}"}, timeout=10
        )
        assert ok.status_code == 200 and queue_name in ok.text
    finally:
        proc.stop()


def test_an_unusable_trusted_proxy_stops_the_console_before_it_serves() -> None:
    from workerfleet_operator import cli as operator_cli

    code = operator_cli.main(
        ["console", "--auth-proxy-header", "X-Forwarded-User", "--trusted-proxy", "ingress",
         "--broker-url", "memory://x", "--queue", "jobs"]
    )  # fmt: skip
    assert code == 2


def test_a_client_offering_wrong_tokens_is_slowed_down_until_its_window_passes() -> None:
    # Given the wrong-token counter on a fake clock: 3 wrong tries per 60 s
    now = [1000.0]
    guesses = security.WrongTokens(limit=3, window_seconds=60.0, clock=lambda: now[0])
    # When one address offers three wrong tokens within the window
    for _ in range(3):
        assert guesses.seconds_blocked("10.0.0.1") == 0
        guesses.record("10.0.0.1")
        now[0] += 1.0
    # Then it must wait until its first wrong try leaves the window; another address need not
    assert guesses.seconds_blocked("10.0.0.1") == 57
    assert guesses.seconds_blocked("10.0.0.2") == 0
    now[0] += 57.0
    assert guesses.seconds_blocked("10.0.0.1") == 0


async def test_the_console_answers_429_after_too_many_wrong_tokens_and_still_admits_others() -> (
    None
):
    # Given a console (on a memory queue) whose token a client tries to guess
    source = sources.URLSource(f"memory://guess-{uuid.uuid4().hex[:8]}", ["jobs"])
    console = app.build_app(app.ConsoleSettings(auth=AUTH), source)
    transport = httpx.ASGITransport(app=console, client=("10.0.0.9", 5555))
    try:
        async with httpx.AsyncClient(transport=transport, base_url="http://console") as web:
            # When it offers more wrong tokens than allowed, by form and as a bearer
            origin = {"Origin": "http://console"}
            codes = [
                (await web.post("/login", data={"token": f"guess{i}"}, headers=origin)).status_code
                for i in range(security.WRONG_TOKEN_LIMIT)
            ]
            refused = await web.post("/login", data={"token": "t0ken"}, headers=origin)
            bearer = await web.get("/", headers={"Authorization": "Bearer t0ken"})
        # Then each wrong one was 401, and from then on even the right token waits (429, with
        # Retry-After) until the window passes
        assert codes == [401] * security.WRONG_TOKEN_LIMIT
        assert refused.status_code == 429 and int(refused.headers["Retry-After"]) > 0
        assert bearer.status_code == 429
        # And another address signs in as usual
        other = httpx.ASGITransport(app=console, client=("10.0.0.10", 5555))
        async with httpx.AsyncClient(transport=other, base_url="http://console") as web:
            ok = await web.get("/", headers={"Authorization": "Bearer t0ken"})
        assert ok.status_code == 200
    finally:
        await source.close()
        memory.forget_stores()
