"""Which errors of a broker call the worker survives by retrying with backoff.

Imported by every room that talks to the broker (fetch loop, settler, drain, control thread).
The broker maps its client library's exceptions onto :mod:`worker_runtime.errors` at its edge, so
this is the taxonomy, never a client's own classes.
"""

from __future__ import annotations

from worker_runtime import errors

# A broker call the worker survives by retrying with backoff: no reply (connection dropped or
# stalled, a restarted server still loading, a failover under way) or a refusal (a replica
# promoted: READONLY); TimeoutError is the worker's own deadline around a call. A persistent one
# turns /healthz red (no successful round trip) instead of crashing the pod in a loop.
BROKER_ERRORS: tuple[type[BaseException], ...] = (errors.BrokerError, TimeoutError)


def describe(exc: BaseException) -> str:
    """``repr`` of a broker error for the log, with the client's own error it stands for.

    The class the client raised (``ReadOnlyError``, ``ConnectionResetError``...) is what an
    operator searches the logs for; the taxonomy keeps it as ``__cause__``.
    """
    cause = exc.__cause__
    return repr(exc) if cause is None else f"{exc!r} from {cause!r}"
