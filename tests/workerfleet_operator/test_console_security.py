"""The console's sign-in and CSRF rules, unit by unit, and the auth-proxy mode on a real process."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable

import httpx
import pytest
import requests
from workerfleet_operator.console import app, security, sources

from tests.support.redis_servers import RedisServer
from tests.workerfleet_operator import console_support as cs
from worker_runtime import brokers
from worker_runtime.brokers import memory

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
    assert security.identify(proxied, {"x-forwarded-user": "ana"}, {}) == "proxy|ana"
    assert security.identify(proxied, {}, {}) is None
    assert security.identify(proxied, {"authorization": "Bearer t0ken"}, {}) is None
    assert security.identify(AUTH, {"authorization": "Bearer t0ken"}, {}) == "bearer"
    assert security.identify(AUTH, {"authorization": "Bearer nope"}, {}) is None
    assert security.identify(AUTH, {"x-forwarded-user": "ana"}, {}) is None  # not configured
    ana, bob = (security.build_csrf_token(proxied, f"proxy|{u}") for u in ("ana", "bob"))
    assert ana != bob and security.check_csrf_token(proxied, "proxy|ana", ana)
    assert not security.check_csrf_token(proxied, "proxy|bob", ana)
    with pytest.raises(ValueError, match="token or a trusted auth-proxy header"):
        security.AuthSettings()


def test_secrets_never_reach_the_display_target() -> None:
    shown = brokers.describe_target("rediss://user:pa55@redis.example:6380/2")
    assert shown == "rediss://redis.example:6380/2"
    sentinel = brokers.describe_target("redis+sentinel://:pw@s1:26379,s2/mymaster/1")
    assert sentinel == "redis+sentinel://s1:26379,s2:26379/mymaster/1"
    assert "pw" not in sentinel


def test_behind_an_auth_proxy_the_header_signs_in_and_its_absence_is_refused(
    redis_factory: Callable[..., RedisServer], queue_name: str
) -> None:
    server = redis_factory()
    asyncio.run(cs.seed_queue(server.url, queue_name))
    proc = cs.ConsoleProcess(
        server.url, [queue_name], allow_writes=False,
        extra_args=["--auth-proxy-header", "X-Forwarded-User"],
    )  # fmt: skip
    try:
        ok = requests.get(proc.base + "/", headers={"X-Forwarded-User": "ana"}, timeout=10)
        assert ok.status_code == 200 and "ana" in ok.text and queue_name in ok.text
        refused = requests.get(proc.base + "/", timeout=10)
        assert refused.status_code == 401 and queue_name not in refused.text
    finally:
        proc.stop()


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
