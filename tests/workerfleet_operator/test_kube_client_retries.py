"""The operator's API client retries what the API server asks it to, and follows new tokens.

A scripted loopback HTTP server stands in for the API server (it answers each request with the
next status of its script, and records the Authorization header it got); sleeps go to a fake
clock, so the backoff and Retry-After waits are read, not waited.
"""

from __future__ import annotations

import asyncio
import datetime
import email.utils
import json
import random
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

import kopf
import pytest
from aiohttp import web
from workerfleet_operator.shell import credentials, kube

OK = (200, {"kind": "Deployment", "metadata": {"name": "web"}}, {})


@dataclass
class ScriptedServer:
    """Answers request n with ``script[n]`` (then 200 forever); records what it received."""

    script: list[tuple[int, dict[str, object], dict[str, str]]] = field(default_factory=list)
    seen: list[tuple[str, str | None]] = field(default_factory=list)
    accepted_tokens: set[str] | None = None
    delays: list[float] = field(default_factory=list)
    url: str = ""
    in_flight: int = 0
    peak_in_flight: int = 0

    async def handle(self, request: web.Request) -> web.Response:
        self.in_flight += 1
        self.peak_in_flight = max(self.peak_in_flight, self.in_flight)
        try:
            return await self._answer(request)
        finally:
            self.in_flight -= 1

    async def _answer(self, request: web.Request) -> web.Response:
        authorization = request.headers.get("Authorization")
        self.seen.append((request.method, authorization))
        if self.delays:
            await asyncio.sleep(self.delays.pop(0))
        if self.accepted_tokens is not None and authorization not in {
            f"Bearer {t}" for t in self.accepted_tokens
        }:
            return web.json_response({"kind": "Status", "reason": "Unauthorized"}, status=401)
        status, body, headers = self.script.pop(0) if self.script else OK
        return web.Response(
            status=status, text=json.dumps(body), headers=headers, content_type="application/json"
        )


@pytest.fixture
async def server() -> AsyncIterator[ScriptedServer]:
    scripted = ScriptedServer()
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", scripted.handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    scripted.url = f"http://127.0.0.1:{port}"
    try:
        yield scripted
    finally:
        await runner.cleanup()


def status(code: int, reason: str, **headers: str) -> tuple[int, dict[str, object], dict[str, str]]:
    return (code, {"kind": "Status", "code": code, "reason": reason}, headers)


def client_for(server: ScriptedServer, slept: list[float], **kwargs: object) -> kube.KubeClient:
    async def fake_sleep(seconds: float) -> None:
        slept.append(seconds)

    info = kopf.ConnectionInfo(server=server.url, token="t1", scheme="Bearer")
    return kube.KubeClient(
        info,
        sleep=fake_sleep,
        rng=random.Random(7),
        **kwargs,  # type: ignore[arg-type]
    )


async def read(client: kube.KubeClient) -> dict[str, object] | None:
    return await kube.fetch_object(client, kube.build_ref("Deployment", "ns", "web"))


async def apply(client: kube.KubeClient) -> dict[str, object]:
    body = {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "web"}}
    return await kube.apply_object(client, {**body, "metadata": {"name": "web", "namespace": "ns"}})


Call = Callable[[kube.KubeClient], Awaitable[object]]


async def test_requests_beyond_the_in_flight_cap_wait_their_turn_without_timing_out(
    server: ScriptedServer,
) -> None:
    # Given an API server taking 0.3 s per request, and a client with a 1 s timeout that
    # sends at most 2 requests at once
    server.delays = [0.3] * 12
    client = client_for(server, [], timeout=1.0, max_in_flight=2)
    try:
        # When 12 reads are asked for at once (six rounds: 1.8 s, beyond the timeout)
        answers = await asyncio.gather(*(read(client) for _ in range(12)))
    finally:
        await client.close()
    # Then every read went through on its first try, never more than 2 on their way at once
    assert all(a is not None for a in answers)
    assert client.retry_count == 0 and client.request_count == 12
    assert server.peak_in_flight <= 2 and client.peak_in_flight == 2


@pytest.mark.parametrize("code", [429, 500, 502, 503, 504])
@pytest.mark.parametrize("call", [read, apply], ids=["get", "server-side-apply"])
async def test_a_throttled_or_failing_answer_is_retried_until_the_request_goes_through(
    server: ScriptedServer, code: int, call: Call
) -> None:
    server.script = [status(code, "Later"), status(code, "Later")]
    slept: list[float] = []
    client = client_for(server, slept)
    try:
        answer = await call(client)
    finally:
        await client.close()
    assert answer == OK[1]
    assert len(server.seen) == 3 and len(slept) == 2
    assert all(0.0 <= s <= kube.RetryPolicy().max_seconds for s in slept)


async def test_a_short_retry_after_is_waited_inside_the_request(server: ScriptedServer) -> None:
    # Given an API server that throttles one read, asking for 3 s
    server.script = [status(429, "TooManyRequests", **{"Retry-After": "3"})]
    slept: list[float] = []
    told: list[tuple[float, bool]] = []
    client = client_for(server, slept, on_retry_after=lambda s, slept: told.append((s, slept)))
    try:
        # When the read is sent
        answer = await read(client)
    finally:
        await client.close()
    # Then the client waited the 3 s the server asked for (fake clock) and got the answer
    assert answer == OK[1] and slept == [3.0]
    assert told == [(3.0, True)]


@pytest.mark.parametrize(
    ("header", "honoured"),
    [
        pytest.param("30", 30.0, id="thirty_seconds_in_full"),
        pytest.param("3600", 60.0, id="an_hour_bounded_at_a_minute"),
    ],
)
async def test_a_long_retry_after_is_honoured_by_the_caller_not_slept_inside_the_request(
    server: ScriptedServer, caplog: pytest.LogCaptureFixture, header: str, honoured: float
) -> None:
    # Given an API server that throttles a write, asking for longer than a request waits (8 s)
    server.script = [status(429, "TooManyRequests", **{"Retry-After": header})]
    slept: list[float] = []
    told: list[tuple[float, bool]] = []
    client = client_for(server, slept, on_retry_after=lambda s, slept: told.append((s, slept)))
    try:
        # When the write is sent
        with (
            caplog.at_level("INFO", logger="workerfleet.operator.kube"),
            pytest.raises(kube.ApiError) as caught,
        ):
            await apply(client)
    finally:
        await client.close()
    # Then nothing was slept inside it: the error goes back at once, sent once, carrying the
    # wait the caller honours (the server's, up to the 60 s bound: once capped at 8 s, a
    # server asking for 30 s was asked again after 8)
    assert slept == [] and len(server.seen) == 1
    assert caught.value.status == 429 and caught.value.retry_after == honoured
    # And the wait is visible: a log line and the metric's hook
    assert told == [(honoured, False)]
    assert any(f"wait {honoured:.1f}s" in r.getMessage() for r in caplog.records)


async def test_backoff_is_jittered_and_grows(server: ScriptedServer) -> None:
    policy = kube.RetryPolicy(attempts=6, base_seconds=1.0, max_seconds=100.0, budget_seconds=1e6)
    rng = random.Random(1)
    delays = [[policy.delay_for(n, None, rng) for n in range(1, 6)] for _ in range(200)]
    for n in range(5):
        column = [d[n] for d in delays]
        assert max(column) <= 2**n and len(set(column)) > 100  # spread over [0, 2^n]
    assert sum(d[4] for d in delays) > sum(d[0] for d in delays) * 4


async def test_retries_are_bounded_and_the_last_error_reaches_the_caller(
    server: ScriptedServer,
) -> None:
    server.script = [status(503, "ServiceUnavailable")] * 10
    slept: list[float] = []
    client = client_for(server, slept, retry=kube.RetryPolicy(attempts=4))
    try:
        with pytest.raises(kube.ApiError) as caught:
            await read(client)
    finally:
        await client.close()
    assert caught.value.status == 503
    assert len(server.seen) == 4 and len(slept) == 3


async def test_the_waiting_budget_bounds_retries_that_ask_for_long_waits(
    server: ScriptedServer,
) -> None:
    server.script = [status(429, "TooManyRequests", **{"Retry-After": "5"})] * 10
    slept: list[float] = []
    policy = kube.RetryPolicy(attempts=10, max_seconds=5.0, budget_seconds=12.0)
    client = client_for(server, slept, retry=policy)
    try:
        with pytest.raises(kube.ApiError):
            await read(client)
    finally:
        await client.close()
    assert slept == [5.0, 5.0]  # a third wait would pass the 12 s budget


async def test_a_conflict_is_not_retried_blindly_the_caller_must_read_again(
    server: ScriptedServer,
) -> None:
    server.script = [status(409, "Conflict")]
    client = client_for(server, [])
    try:
        with pytest.raises(kube.ApiError) as caught:
            await apply(client)
    finally:
        await client.close()
    assert caught.value.is_conflict and len(server.seen) == 1


async def test_a_new_event_is_retried_on_429_but_not_after_a_5xx(server: ScriptedServer) -> None:
    involved = {"apiVersion": "v1", "kind": "WorkerPool", "metadata": {"name": "p"}}
    server.script = [status(429, "TooManyRequests"), status(500, "InternalError")]
    client = client_for(server, [])
    try:
        with pytest.raises(kube.ApiError) as caught:
            await kube.apply_event(client, involved, event_type="Normal", reason="R", message="m")
    finally:
        await client.close()
    # the 429 was retried; the 500 may have come after the Event was stored: not sent twice
    assert caught.value.status == 500 and len(server.seen) == 2


async def test_a_timeout_is_retried(server: ScriptedServer) -> None:
    server.delays = [2.0]  # the first answer comes after the client's 0.5 s timeout
    slept: list[float] = []
    client = client_for(server, slept, timeout=0.5)
    try:
        assert await read(client) == OK[1]
    finally:
        await client.close()
    assert len(server.seen) == 2 and len(slept) == 1


async def test_after_a_401_the_client_loads_the_new_token_and_resends(
    server: ScriptedServer,
) -> None:
    # Given the server accepts only t2, and the login source now hands out t2
    server.accepted_tokens = {"t2"}
    tokens = iter(["t2"])
    shared = credentials.Credentials(
        lambda: kopf.ConnectionInfo(server=server.url, token=next(tokens), scheme="Bearer"),
        initial=kopf.ConnectionInfo(server=server.url, token="t1", scheme="Bearer"),
    )
    client = kube.KubeClient(shared)
    try:
        # When a request goes out with the old token t1
        answer = await read(client)
        # Then it was refused once, the login loaded again, and the request resent with t2
        second = await read(client)
    finally:
        await client.close()
    assert answer == OK[1] and second == OK[1]
    assert [a for _, a in server.seen] == ["Bearer t1", "Bearer t2", "Bearer t2"]
    assert shared.loads == 1


async def test_a_login_replaced_by_kopf_is_used_from_the_next_request_on(
    server: ScriptedServer,
) -> None:
    shared = credentials.Credentials.fixed(
        kopf.ConnectionInfo(server=server.url, token="t1", scheme="Bearer")
    )
    client = kube.KubeClient(shared)
    try:
        await read(client)
        shared.replace(kopf.ConnectionInfo(server=server.url, token="t2", scheme="Bearer"))
        await read(client)
    finally:
        await client.close()
    assert [a for _, a in server.seen] == ["Bearer t1", "Bearer t2"]


async def test_an_expired_login_is_loaded_again_before_the_request(
    server: ScriptedServer,
) -> None:
    now = [1_000.0]
    past = datetime.datetime.fromtimestamp(999.0, datetime.UTC)
    shared = credentials.Credentials(
        lambda: kopf.ConnectionInfo(server=server.url, token="fresh", scheme="Bearer"),
        initial=kopf.ConnectionInfo(server=server.url, token="old", expiration=past),
        now=lambda: now[0],
    )
    client = kube.KubeClient(shared)
    try:
        await read(client)
    finally:
        await client.close()
    assert [a for _, a in server.seen] == ["Bearer fresh"]


async def test_a_write_without_the_lease_is_not_sent(server: ScriptedServer) -> None:
    leading = [True]
    client = client_for(server, [], fence=lambda: leading[0])
    try:
        await apply(client)
        leading[0] = False
        assert await read(client) == OK[1]  # reads go on
        with pytest.raises(kube.FencedError):
            await apply(client)
    finally:
        await client.close()
    assert [m for m, _ in server.seen] == ["PATCH", "GET"]


async def test_a_write_that_waited_for_a_slot_is_not_sent_once_the_lease_is_lost(
    server: ScriptedServer,
) -> None:
    # Given a leading client that sends one request at a time, busy with a slow read
    leading = [True]
    server.delays = [0.5]
    client = client_for(server, [], fence=lambda: leading[0], max_in_flight=1)
    try:
        slow = asyncio.ensure_future(read(client))
        for _ in range(500):  # until the read holds the slot (bounded: 5 s)
            if server.in_flight:
                break
            await asyncio.sleep(0.01)
        assert server.in_flight == 1
        # When a write waits for the slot, and the lease is lost while it waits
        write = asyncio.ensure_future(apply(client))
        await asyncio.sleep(0.1)
        leading[0] = False
        # Then the write is refused once the slot is free, and never reaches the API server
        with pytest.raises(kube.FencedError):
            await write
        assert await slow == OK[1]
    finally:
        await client.close()
    assert [m for m, _ in server.seen] == ["GET"]


async def test_a_write_whose_lease_is_lost_while_it_gets_its_connection_is_not_sent(
    server: ScriptedServer,
) -> None:
    # Given a leading client whose lease is lost after the write passed its checks before the
    # connection (as when the process is stopped while connecting and continued later)
    answers = iter([True, True])
    client = client_for(server, [], fence=lambda: next(answers, False))
    try:
        # When it sends a write
        with pytest.raises(kube.FencedError):
            await apply(client)
    finally:
        await client.close()
    # Then the check once the connection is its own refuses it: the API server saw nothing
    assert server.seen == []


def test_an_exec_plugin_in_the_kubeconfig_gives_the_token(tmp_path: Path) -> None:
    plugin = tmp_path / "plugin.py"
    plugin.write_text(
        "import json\n"
        "print(json.dumps({'apiVersion': 'client.authentication.k8s.io/v1', "
        "'kind': 'ExecCredential', 'status': {'token': 'from-exec', "
        "'expirationTimestamp': '2999-01-01T00:00:00Z'}}))\n"
    )
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "c", "cluster": {"server": "http://127.0.0.1:1"}}],
        "users": [
            {
                "name": "u",
                "user": {
                    "exec": {
                        "apiVersion": "client.authentication.k8s.io/v1",
                        "command": sys.executable,
                        "args": [str(plugin)],
                        "interactiveMode": "Never",
                    }
                },
            }
        ],
        "contexts": [{"name": "x", "context": {"cluster": "c", "user": "u", "namespace": "jobs"}}],
        "current-context": "x",
    }
    path = tmp_path / "kubeconfig"
    path.write_text(json.dumps(config))
    info = credentials.load_kubeconfig_login(str(path))
    assert info.token == "from-exec" and info.scheme == "Bearer"
    assert info.default_namespace == "jobs"
    # loaded again a minute before the plugin's token expires
    expires = datetime.datetime(2999, 1, 1, tzinfo=datetime.UTC)
    assert info.expiration == expires - datetime.timedelta(seconds=60)


def test_inline_kubeconfig_data_is_read_into_memory_and_leaves_no_file(tmp_path: Path) -> None:
    import base64

    ca = base64.b64encode(b"-----BEGIN CERTIFICATE-----\nnot-checked\n").decode()
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {
                "name": "c",
                "cluster": {"server": "https://127.0.0.1:1", "certificate-authority-data": ca},
            }
        ],
        "users": [{"name": "u", "user": {"token": "t"}}],
        "contexts": [{"name": "x", "context": {"cluster": "c", "user": "u"}}],
        "current-context": "x",
    }
    path = tmp_path / "kubeconfig"
    path.write_text(json.dumps(config))
    info = credentials.load_kubeconfig_login(str(path))
    assert info.ca_path is None and info.ca_data == base64.b64decode(ca)
    assert info.token == "t"


async def test_a_retry_after_given_as_an_http_date_is_honoured(server: ScriptedServer) -> None:
    # Given a proxy in front of the API server that answers 503 with Retry-After as an HTTP
    # date (RFC 9110 allows it; the API server itself sends seconds) 6 s ahead
    ahead = datetime.datetime.now(datetime.UTC) + datetime.timedelta(seconds=6)
    date = email.utils.format_datetime(ahead.replace(microsecond=0), usegmt=True)
    server.script = [status(503, "ServiceUnavailable", **{"Retry-After": date})]
    slept: list[float] = []
    client = client_for(server, slept)
    try:
        # When a read is answered so, then it waits until that date before its retry
        assert await read(client) == OK[1]
    finally:
        await client.close()
    assert len(slept) == 1 and 4.0 <= slept[0] <= 6.0
