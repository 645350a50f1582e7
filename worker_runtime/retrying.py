"""The retry decision matrix as code: what a handler should do about a failed outbound call.

Application handlers that call HTTP services use it, so every team does not re-implement the
same table. :func:`decide` classifies an HTTP status code or an exception (the builtin network
errors and those of httpx, aiohttp and requests, recognised by class name so none of them is
imported) into one of four :class:`Decision` values; :func:`build_error` turns a caught exception
into what the worker understands (``raise retrying.build_error(exc) from exc``), and
:func:`classify_errors` does the same for a whole handler in one decorator line::

    @app.task("charge")
    @retrying.classify_errors(breaker=payments_breaker)
    async def charge(payload: Charge) -> None:
        (await client.post(URL, json=payload.model_dump())).raise_for_status()

The matrix (docs/runtime.md, "The retry decision matrix"):

=========================================================  ===================================
failure                                                    decision
=========================================================  ===================================
network timeout, connection refused/reset, 408, 500,       ``RETRY_BACKOFF``: the error goes
502, 504, any other 5xx, any exception not listed          to the worker, whose backoff waits
429 Too Many Requests                                      ``RETRY_AFTER``: ``RetryLater`` with
                                                           the ``Retry-After`` delay (backoff
                                                           when the header is missing)
503 Service Unavailable                                    ``OPEN_CIRCUIT``: a failure for the
                                                           breaker, retried after the breaker's
                                                           (or the server's) wait
400, 401, 403, 404, 405, 409, 410, 422, any other 4xx,     ``NEVER_RETRY``: ``Reject``, straight
an invalid URL, a pydantic ``ValidationError``             to the dead-letter queue
=========================================================  ===================================

The worker itself already honours a ``Retry-After`` header it finds on ``exc.response``; this
module adds the decisions the worker cannot guess (a 404 that will never succeed).
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, NoReturn, Protocol, TypeVar, cast, overload

from worker_runtime import app as app_mod
from worker_runtime import backoff


class Decision(StrEnum):
    """What to do about one failure."""

    RETRY_BACKOFF = "retry_backoff"
    RETRY_AFTER = "retry_after"
    OPEN_CIRCUIT = "open_circuit"
    NEVER_RETRY = "never_retry"


@dataclass(frozen=True)
class Verdict:
    """A decision, the status it came from (if any) and the server's ``Retry-After`` in seconds."""

    decision: Decision
    status: int | None = None
    retry_after: float | None = None
    why: str = ""


class Breaker(Protocol):
    """What :func:`build_error` needs of a circuit breaker (``CircuitBreaker`` fits)."""

    def record_failure(self) -> None: ...

    def retry_after(self) -> float: ...


class GuardingBreaker(Breaker, Protocol):
    """What :func:`classify_errors` needs: it also asks before the call and reports success."""

    def allow(self) -> bool: ...

    def record_success(self) -> None: ...


NEVER_RETRY_STATUSES = frozenset({400, 401, 403, 404, 405, 409, 410, 422})
"""The client errors the table names; every other 4xx except 408 and 429 is treated alike."""

BACKOFF_STATUSES = frozenset({408, 500, 502, 504})
"""The status codes the table names for a plain retry with backoff (every other 5xx too)."""


def decide_status(status: int) -> Decision:
    """The matrix row of an HTTP status code (2xx/3xx are not failures: backoff, as unknown)."""
    if status == 429:
        return Decision.RETRY_AFTER
    if status == 503:
        return Decision.OPEN_CIRCUIT
    if status in BACKOFF_STATUSES or status >= 500:
        return Decision.RETRY_BACKOFF
    if 400 <= status < 500:
        return Decision.NEVER_RETRY
    return Decision.RETRY_BACKOFF


# Exceptions recognised by (top-level package, class name) anywhere in their MRO, so the client
# libraries are never imported here. Status-carrying errors are decided by their status instead.
_NEVER = {
    ("httpx", "InvalidURL"),
    ("httpx", "UnsupportedProtocol"),
    ("aiohttp", "InvalidURL"),
    ("requests", "InvalidURL"),
    ("requests", "MissingSchema"),
    ("requests", "InvalidSchema"),
    ("pydantic_core", "ValidationError"),
}
_BACKOFF = {
    ("builtins", "TimeoutError"),
    ("builtins", "ConnectionError"),
    ("httpx", "TimeoutException"),
    ("httpx", "TransportError"),
    ("aiohttp", "ServerTimeoutError"),
    ("aiohttp", "ClientConnectionError"),
    ("aiohttp", "ClientPayloadError"),
    ("requests", "Timeout"),
    ("requests", "ConnectionError"),
}


def _class_keys(exc: BaseException) -> list[tuple[str, str]]:
    return [(cls.__module__.split(".")[0], cls.__name__) for cls in type(exc).__mro__]


def _status_of(exc: BaseException) -> int | None:
    # httpx.HTTPStatusError and requests.HTTPError carry .response.status_code; aiohttp's
    # ClientResponseError carries .status.
    response = getattr(exc, "response", None)
    for value in (getattr(response, "status_code", None), getattr(exc, "status", None)):
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    return None


def _retry_after_of(exc: BaseException) -> float | None:
    headers: Any = getattr(exc, "headers", None)
    if headers is None:
        headers = getattr(getattr(exc, "response", None), "headers", None)
    if not isinstance(headers, Mapping) and not hasattr(headers, "get"):
        return None
    try:
        value = headers.get("Retry-After")
    except (AttributeError, TypeError):
        return None
    return backoff.parse_retry_after(str(value)) if value is not None else None


def decide(failure: BaseException | int) -> Verdict:
    """Classify a status code or an exception by the matrix (pure; nothing is imported)."""
    if isinstance(failure, int):
        return Verdict(decide_status(failure), status=failure, why=f"HTTP {failure}")
    status = _status_of(failure)
    if status is not None:
        return Verdict(
            decide_status(status),
            status=status,
            retry_after=_retry_after_of(failure),
            why=f"HTTP {status}",
        )
    for key in _class_keys(failure):
        if key in _NEVER:
            return Verdict(Decision.NEVER_RETRY, why=f"{key[0]}.{key[1]}")
        if key in _BACKOFF:
            return Verdict(Decision.RETRY_BACKOFF, why=f"{key[0]}.{key[1]}")
    return Verdict(Decision.RETRY_BACKOFF, why=f"unclassified {type(failure).__qualname__}")


def build_error(exc: BaseException, *, breaker: Breaker | None = None) -> BaseException:
    """What a handler raises for ``exc``: ``raise retrying.build_error(exc) from exc``.

    ``NEVER_RETRY`` → :class:`~worker_runtime.app.Reject`; ``RETRY_AFTER`` →
    :class:`~worker_runtime.app.RetryLater` with the server's delay (or ``exc`` itself, for the
    worker's backoff, when there is none); ``OPEN_CIRCUIT`` → the breaker records a failure and
    the job waits for the longer of the breaker's and the server's delay; ``RETRY_BACKOFF`` →
    ``exc`` unchanged.
    """
    verdict = decide(exc)
    if verdict.decision is Decision.NEVER_RETRY:
        return app_mod.Reject(f"not retryable ({verdict.why}): {exc}"[:500])
    if verdict.decision is Decision.RETRY_AFTER:
        return exc if verdict.retry_after is None else app_mod.RetryLater(verdict.retry_after)
    if verdict.decision is Decision.OPEN_CIRCUIT:
        waits = [] if verdict.retry_after is None else [verdict.retry_after]
        if breaker is not None:
            breaker.record_failure()
            waits.append(breaker.retry_after())
        positive = [w for w in waits if w > 0]
        return app_mod.RetryLater(max(positive)) if positive else exc
    return exc


F = TypeVar("F", bound=Callable[..., Any])


def _admit(breaker: GuardingBreaker | None) -> None:
    # An open breaker refuses the call: the job waits in Redis for the breaker's wait.
    if breaker is not None and not breaker.allow():
        raise app_mod.RetryLater(max(breaker.retry_after(), 0.001))


def _succeeded(breaker: GuardingBreaker | None) -> None:
    if breaker is not None:
        breaker.record_success()


def _raise_decided(exc: Exception, breaker: Breaker | None) -> NoReturn:
    error = build_error(exc, breaker=breaker)
    if error is exc:
        raise exc
    raise error from exc


@overload
def classify_errors(handler: F, /) -> F: ...


@overload
def classify_errors(*, breaker: GuardingBreaker | None = None) -> Callable[[F], F]: ...


def classify_errors(
    handler: F | None = None, /, *, breaker: GuardingBreaker | None = None
) -> F | Callable[[F], F]:
    """Decorate a handler (sync or async) so what it raises is decided by the matrix.

    Use bare (``@retrying.classify_errors``) or with a breaker. Put it under ``@app.task``: the
    task keeps the handler's signature. ``Reject`` and ``RetryLater`` pass through unchanged.
    With a breaker, an open breaker refuses the call (``RetryLater`` with its wait, the handler
    does not run), a 503 records a failure and a handler that returns records a success.
    """

    def wrap(fn: F) -> F:
        passthrough = (app_mod.Reject, app_mod.RetryLater)
        if inspect.iscoroutinefunction(fn):

            @functools.wraps(fn)
            async def run_async(*args: Any, **kwargs: Any) -> Any:
                _admit(breaker)
                try:
                    result = await fn(*args, **kwargs)
                except passthrough:
                    raise
                except Exception as exc:
                    _raise_decided(exc, breaker)
                _succeeded(breaker)
                return result

            return cast("F", run_async)

        @functools.wraps(fn)
        def run_sync(*args: Any, **kwargs: Any) -> Any:
            _admit(breaker)
            try:
                result = fn(*args, **kwargs)
            except passthrough:
                raise
            except Exception as exc:
                _raise_decided(exc, breaker)
            _succeeded(breaker)
            return result

        return cast("F", run_sync)

    return wrap(handler) if handler is not None else wrap
