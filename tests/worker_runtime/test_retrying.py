"""The retry decision matrix (worker_runtime.retrying): every row, with the real client errors.

httpx, aiohttp and requests are dev dependencies, so their real exception objects are built
here (a missing one fails the import: nothing is skipped). The decorator and the ``raise from``
helper are checked for what the worker receives: ``Reject``, ``RetryLater`` or the error itself.
"""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp
import httpx
import pydantic
import pytest
import requests
from yarl import URL

from worker_runtime import App, Reject, RetryLater, circuit, retrying
from worker_runtime.retrying import Decision

# ---- HTTP status codes: every row of the table --------------------------------------------

STATUS_ROWS = [
    (408, Decision.RETRY_BACKOFF),
    (500, Decision.RETRY_BACKOFF),
    (502, Decision.RETRY_BACKOFF),
    (504, Decision.RETRY_BACKOFF),
    (507, Decision.RETRY_BACKOFF),  # "any other 5xx"
    (429, Decision.RETRY_AFTER),
    (503, Decision.OPEN_CIRCUIT),
    (400, Decision.NEVER_RETRY),
    (401, Decision.NEVER_RETRY),
    (403, Decision.NEVER_RETRY),
    (404, Decision.NEVER_RETRY),
    (405, Decision.NEVER_RETRY),
    (409, Decision.NEVER_RETRY),
    (410, Decision.NEVER_RETRY),
    (422, Decision.NEVER_RETRY),
    (418, Decision.NEVER_RETRY),  # "any other 4xx"
]


@pytest.mark.parametrize(("status", "decision"), STATUS_ROWS, ids=[str(s) for s, _ in STATUS_ROWS])
def test_each_status_code_row_has_its_decision(status: int, decision: Decision) -> None:
    assert retrying.decide(status).decision is decision
    assert retrying.decide_status(status) is decision


# ---- real client exceptions ----------------------------------------------------------------


def _httpx_status(status: int, headers: dict[str, str] | None = None) -> httpx.HTTPStatusError:
    request = httpx.Request("GET", "http://127.0.0.1/x")
    response = httpx.Response(status, headers=headers or {}, request=request)
    return httpx.HTTPStatusError("boom", request=request, response=response)


def _aiohttp_status(status: int, headers: dict[str, str] | None = None) -> BaseException:
    info = aiohttp.RequestInfo(URL("http://127.0.0.1/x"), "GET", {}, URL("http://127.0.0.1/x"))
    return aiohttp.ClientResponseError(info, (), status=status, headers=headers or {})


def _requests_status(status: int, headers: dict[str, str] | None = None) -> BaseException:
    response = requests.Response()
    response.status_code = status
    response.headers.update(headers or {})
    return requests.HTTPError("boom", response=response)


STATUS_ERRORS = {"httpx": _httpx_status, "aiohttp": _aiohttp_status, "requests": _requests_status}


@pytest.mark.parametrize("library", sorted(STATUS_ERRORS))
@pytest.mark.parametrize(
    ("status", "decision"),
    [
        (500, Decision.RETRY_BACKOFF),
        (503, Decision.OPEN_CIRCUIT),
        (429, Decision.RETRY_AFTER),
        (404, Decision.NEVER_RETRY),
    ],
)
def test_a_client_status_error_is_decided_by_its_status(
    library: str, status: int, decision: Decision
) -> None:
    verdict = retrying.decide(STATUS_ERRORS[library](status))
    assert (verdict.decision, verdict.status) == (decision, status)


@pytest.mark.parametrize("library", sorted(STATUS_ERRORS))
def test_a_429_carries_the_servers_retry_after(library: str) -> None:
    verdict = retrying.decide(STATUS_ERRORS[library](429, {"Retry-After": "7"}))
    assert verdict.retry_after == 7.0


def _aiohttp_connector_error() -> BaseException:
    key: Any = type("Key", (), {"ssl": None, "host": "127.0.0.1", "port": 1})()
    return aiohttp.ClientConnectorError(key, OSError(111, "refused"))


TRANSPORT_ROWS: list[tuple[str, BaseException, Decision]] = [
    ("builtin TimeoutError", TimeoutError("slow"), Decision.RETRY_BACKOFF),
    (
        "builtin ConnectionRefusedError",
        ConnectionRefusedError(111, "refused"),
        Decision.RETRY_BACKOFF,
    ),
    ("httpx.ReadTimeout", httpx.ReadTimeout("slow"), Decision.RETRY_BACKOFF),
    ("httpx.ConnectError", httpx.ConnectError("refused"), Decision.RETRY_BACKOFF),
    ("httpx.RemoteProtocolError", httpx.RemoteProtocolError("reset"), Decision.RETRY_BACKOFF),
    ("httpx.InvalidURL", httpx.InvalidURL("nope"), Decision.NEVER_RETRY),
    ("httpx.UnsupportedProtocol", httpx.UnsupportedProtocol("ftp"), Decision.NEVER_RETRY),
    ("aiohttp.ServerTimeoutError", aiohttp.ServerTimeoutError("slow"), Decision.RETRY_BACKOFF),
    ("aiohttp.ClientConnectorError", _aiohttp_connector_error(), Decision.RETRY_BACKOFF),
    ("aiohttp.ServerDisconnectedError", aiohttp.ServerDisconnectedError(), Decision.RETRY_BACKOFF),
    ("aiohttp.InvalidURL", aiohttp.InvalidURL("nope"), Decision.NEVER_RETRY),
    ("requests.ReadTimeout", requests.ReadTimeout("slow"), Decision.RETRY_BACKOFF),
    ("requests.ConnectionError", requests.ConnectionError("refused"), Decision.RETRY_BACKOFF),
    ("requests.MissingSchema", requests.exceptions.MissingSchema("x"), Decision.NEVER_RETRY),
    ("requests.InvalidURL", requests.exceptions.InvalidURL("x"), Decision.NEVER_RETRY),
    ("an unclassified error", KeyError("surprise"), Decision.RETRY_BACKOFF),
]


def _validation_error() -> pydantic.ValidationError:
    class Model(pydantic.BaseModel):
        n: int

    try:
        Model.model_validate({"n": "x"})
    except pydantic.ValidationError as exc:
        return exc
    raise AssertionError("the model accepted a string")


@pytest.mark.parametrize(
    ("exc", "decision"),
    [(e, d) for _, e, d in TRANSPORT_ROWS] + [(_validation_error(), Decision.NEVER_RETRY)],
    ids=[n for n, _, _ in TRANSPORT_ROWS] + ["pydantic.ValidationError"],
)
def test_each_exception_row_has_its_decision(exc: BaseException, decision: Decision) -> None:
    assert retrying.decide(exc).decision is decision


# ---- what the handler raises ----------------------------------------------------------------


def test_never_retry_becomes_a_reject_naming_the_status() -> None:
    error = retrying.build_error(_httpx_status(404))
    assert isinstance(error, Reject)
    assert "HTTP 404" in error.reason


def test_retry_after_becomes_retry_later_with_the_servers_delay() -> None:
    error = retrying.build_error(_requests_status(429, {"Retry-After": "12"}))
    assert isinstance(error, RetryLater)
    assert error.delay == 12.0


def test_a_429_without_retry_after_is_left_to_the_workers_backoff() -> None:
    exc = _httpx_status(429)
    assert retrying.build_error(exc) is exc


def test_a_backoff_error_is_raised_unchanged() -> None:
    exc = httpx.ConnectError("refused")
    assert retrying.build_error(exc) is exc


def test_a_503_opens_the_breaker_and_waits_for_it() -> None:
    now = [100.0]
    breaker = circuit.CircuitBreaker(
        failure_threshold=2, reset_timeout_seconds=30.0, clock=lambda: now[0]
    )
    first = retrying.build_error(_aiohttp_status(503), breaker=breaker)
    assert breaker.state is circuit.CircuitState.CLOSED
    assert isinstance(first, aiohttp.ClientResponseError)  # one failure: the worker backs off
    second = retrying.build_error(_aiohttp_status(503), breaker=breaker)
    assert breaker.state is circuit.CircuitState.OPEN
    assert isinstance(second, RetryLater)
    assert second.delay == 30.0


def test_a_503_waits_for_the_longer_of_the_breaker_and_the_server() -> None:
    breaker = circuit.CircuitBreaker(failure_threshold=1, reset_timeout_seconds=5.0)
    error = retrying.build_error(_httpx_status(503, {"Retry-After": "60"}), breaker=breaker)
    assert isinstance(error, RetryLater)
    assert error.delay == 60.0


def test_the_raise_from_helper_keeps_the_cause() -> None:
    exc = _httpx_status(400)
    with pytest.raises(Reject) as raised:
        try:
            raise exc
        except httpx.HTTPStatusError as caught:
            raise retrying.build_error(caught) from caught
    assert raised.value.__cause__ is exc


# ---- the one-line decorator ------------------------------------------------------------------


def test_the_decorator_turns_a_sync_handlers_404_into_a_reject() -> None:
    @retrying.classify_errors
    def handler(payload: dict[str, Any]) -> None:
        raise _requests_status(404)

    with pytest.raises(Reject):
        handler({})


def test_the_decorator_turns_an_async_handlers_429_into_retry_later() -> None:
    @retrying.classify_errors()
    async def handler(payload: dict[str, Any]) -> None:
        raise _httpx_status(429, {"Retry-After": "3"})

    with pytest.raises(RetryLater) as raised:
        asyncio.run(handler({}))
    assert raised.value.delay == 3.0


def test_the_decorator_lets_backoff_errors_and_explicit_decisions_through() -> None:
    @retrying.classify_errors
    async def timeout(payload: dict[str, Any]) -> None:
        raise httpx.ReadTimeout("slow")

    @retrying.classify_errors
    def rejects(payload: dict[str, Any]) -> None:
        raise Reject("mine")

    with pytest.raises(httpx.ReadTimeout):
        asyncio.run(timeout({}))
    with pytest.raises(Reject, match="mine"):
        rejects({})


def test_a_decorated_handler_registers_as_a_task_with_its_payload_and_context() -> None:
    class Charge(pydantic.BaseModel):
        cents: int

    app = App(queue="retrying-test")

    @app.task("charge", payload=Charge)
    @retrying.classify_errors
    async def charge(payload: Charge, ctx: Any) -> None:
        return None

    spec = app.tasks["charge"]
    assert spec.is_async and spec.wants_context
    assert spec.payload_adapter.validate_python({"cents": 5}) == Charge(cents=5)


def test_the_decorator_with_an_open_breaker_does_not_call_and_a_success_closes_it() -> None:
    now = [0.0]
    breaker = circuit.CircuitBreaker(
        failure_threshold=1, reset_timeout_seconds=10.0, clock=lambda: now[0]
    )
    calls: list[int] = []

    @retrying.classify_errors(breaker=breaker)
    def handler(payload: dict[str, int]) -> None:
        calls.append(payload["status"])
        if payload["status"] != 200:
            raise _httpx_status(payload["status"])

    # a 503 opens the breaker (threshold 1) ...
    with pytest.raises(RetryLater):
        handler({"status": 503})
    # ... so the next job is refused without a call, and waits for the breaker
    with pytest.raises(RetryLater) as refused:
        handler({"status": 200})
    assert calls == [503]
    assert refused.value.delay == 10.0
    # after the reset timeout a trial goes through; its success closes the breaker
    now[0] = 10.5
    handler({"status": 200})
    assert calls == [503, 200]
    assert breaker.state is circuit.CircuitState.CLOSED
