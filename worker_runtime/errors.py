"""The runtime's one error taxonomy: every error a workerfleet API raises on purpose.

Raised by the brokers (:mod:`worker_runtime.brokers`), the envelope parser, the URL and queue-name
validators; caught by the worker, the producer, the CLI and the operator. A caller handles these
classes and never a client library's own: each broker maps its client's exceptions
(redis-py, aio-pika, botocore) onto this tree at its edge, keeping the original as ``__cause__``.

::

    WorkerfleetError
    ├── ConfigError (also ValueError)       a setting that cannot work; fix the config, not retry
    │   ├── InvalidQueueName
    │   ├── InvalidBrokerURL
    │   │   └── UnsupportedScheme
    │   └── BrokerNotInstalled              the scheme is known, its client package is not
    ├── EnvelopeError (also ValueError)     a stored job that cannot run; ``reason`` goes to the DLQ
    ├── InvalidJob (also ValueError)        a job refused before it is sent; fix the call
    │   ├── UnknownTask                     a task name its App does not register
    │   └── PayloadNotJSON                  a payload value JSON cannot carry (a datetime, a set)
    └── BrokerError                         a broker call failed
        ├── BrokerUnavailable               no reply: the call may or may not have been applied
        ├── BrokerRejected                  the broker answered with an error: not applied
        ├── BrokerPartlyApplied             a batch call applied in part: ``applied``/``refused``/
        │                                   ``lost``
        └── CapabilityMissing               the broker cannot do this (see ``Capabilities``)

The split of :class:`BrokerError` is the one fact a caller needs to recover correctly: after
:class:`BrokerUnavailable` a non-idempotent call (a fetch) may have taken effect, so the worker
recovers what it may have been handed (``Broker.recover``); after :class:`BrokerRejected` nothing
happened and a plain retry is right. After :class:`BrokerPartlyApplied` neither is: the broker
applied the entries named in ``applied`` and not those in ``refused``, so only those go again;
those in ``lost`` were answered as no longer the caller's (a settle or renewal of a lease that
had ended), so sending them again changes nothing.
"""

from __future__ import annotations

import collections
from typing import Literal


class WorkerfleetError(Exception):
    """Base of every error workerfleet raises on purpose."""


class ConfigError(WorkerfleetError, ValueError):
    """A setting (URL, queue name, option) that can never work; retrying does not help.

    Also a ``ValueError``, as the validators that raise it always were.
    """


class InvalidQueueName(ConfigError):
    """A queue name outside :data:`worker_runtime.brokers.base.QUEUE_NAME_PATTERN`."""


class InvalidBrokerURL(ConfigError):
    """A broker URL that cannot work; the message says why and never contains the URL
    (it may carry a password)."""


class UnsupportedScheme(InvalidBrokerURL):
    """A URL whose scheme no broker serves (the message lists the schemes that are served)."""


class BrokerNotInstalled(ConfigError):
    """A known scheme whose broker module or client package is not installed here."""


class EnvelopeError(WorkerfleetError, ValueError):
    """A stored job envelope that cannot be run; ``reason`` is what its DLQ record says.

    ``reason`` is one of :class:`worker_runtime.brokers.base.DeadLetterReason`'s envelope
    reasons (``unparseable_json``, ``invalid_envelope``, ``unknown_schema_version``).
    """

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


class InvalidJob(WorkerfleetError, ValueError):
    """A job the producer refuses before anything is sent: a worker could never run it as
    meant. Also a ``ValueError``, as the producer's other refusals are."""


class UnknownTask(InvalidJob):
    """An enqueue naming a task its App does not register, on a queue the App registers tasks
    for: a worker would dead-letter the job as ``unknown_task``. ``known`` lists the App's task
    names; ``suggestion`` is the closest of them, if any is close."""

    def __init__(
        self, message: str, *, task: str, known: tuple[str, ...], suggestion: str | None
    ) -> None:
        super().__init__(message)
        self.task = task
        self.known = known
        self.suggestion = suggestion


class PayloadNotJSON(InvalidJob):
    """A payload holding a value a job's JSON cannot carry (a ``datetime``, ``Decimal``,
    ``set``, ``bytes``, tuple, a key that is not a string...). ``path`` says where
    (``payload.a.b[1]``), ``type_name`` what it is."""

    def __init__(self, message: str, *, path: str, type_name: str) -> None:
        super().__init__(message)
        self.path = path
        self.type_name = type_name


class BrokerError(WorkerfleetError):
    """A broker call failed. ``operation`` names the call (``fetch``, ``ack``...) when known."""

    def __init__(self, message: str, *, operation: str = "") -> None:
        super().__init__(message)
        self.operation = operation


class BrokerUnavailable(BrokerError):
    """No reply from the broker (connection refused or cut, timeout, failover in progress).

    The call MAY have been applied: the request can have reached the broker and only the
    reply been lost. Settling calls are fenced, so sending them again is safe; after a fetch
    the caller recovers the deliveries the lost reply carried (``Broker.recover``).

    ``sent`` is False when the request certainly never left this process (no connection could
    be opened): then it was not applied, and there is nothing to recover.
    """

    def __init__(self, message: str, *, operation: str = "", sent: bool = True) -> None:
        super().__init__(message, operation=operation)
        self.sent = sent


class BrokerRejected(BrokerError):
    """The broker answered with an error (a read-only replica, a script error, access denied).

    An answer means the call was NOT applied; retrying later is safe and nothing needs recovery.
    """


class BrokerPartlyApplied(BrokerError):
    """A batch call the broker applied in part (SQS answers each entry of a batch on its own).

    ``applied`` names the entries applied (job ids): sending them again would apply them twice.
    ``refused`` maps each entry not applied to its own error: ``BrokerRejected`` refused for good,
    ``BrokerUnavailable`` "not now" (or no reply: it may have been applied). ``lost`` names the
    entries the broker answered as no longer the caller's: a settle or a renewal of a delivery
    whose lease had ended (what a ``False`` ack or a renewal's ``lost`` says on a whole answer).
    Not a ``BrokerRejected``: a caller that reads that as "nothing applied" would send the
    applied entries again. A call with a fetch in it (``ack_and_fetch``) raises it before
    fetching: nothing was handed out.
    """

    def __init__(
        self,
        message: str,
        *,
        operation: str = "",
        applied: tuple[str, ...],
        refused: dict[str, BrokerError],
        lost: tuple[str, ...] = (),
    ) -> None:
        super().__init__(message, operation=operation)
        self.applied = applied
        self.refused = refused
        self.lost = lost

    def answers_for(self, job_ids: list[str]) -> list[Literal["applied", "lost", "refused"] | None]:
        """What the broker answered for each of ``job_ids`` (the entries sent, in order):
        ``"applied"``, ``"lost"`` or ``"refused"``; None where its answer does not tell which
        entry it meant: a job it does not name, or names twice, or sent twice (two deliveries
        of one job in the batch). The worker's fetch loop (acks) and control thread (renewals)
        read a partly applied batch through this."""
        named = collections.Counter([*self.applied, *self.refused, *self.lost])
        sent = collections.Counter(job_ids)
        applied, lost = set(self.applied), set(self.lost)
        answers: list[Literal["applied", "lost", "refused"] | None] = []
        for job_id in job_ids:
            if named[job_id] != 1 or sent[job_id] != 1:
                answers.append(None)
            elif job_id in applied:
                answers.append("applied")
            elif job_id in lost:
                answers.append("lost")
            else:
                answers.append("refused")
        return answers


class CapabilityMissing(BrokerError):
    """The broker was asked for something its ``Capabilities`` say it cannot do."""


def describe_error(exc: BaseException) -> str:
    """``Type: message`` for logs and error texts, whatever the class's own ``repr`` says.

    redis-py 8 gave its exceptions a ``repr`` of a category alone (``network:ConnectionError``),
    which dropped the one fact an operator needs ("Error 111 connecting to 127.0.0.1:6379.
    Connection refused.").
    """
    text = message_of(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def message_of(exc: BaseException) -> str:
    """``str(exc)``, or a stand-in when the exception's own ``__str__`` raises.

    A handler's exception class is user code: one whose ``__str__`` failed made recording the
    failure fail, so the job was neither retried nor dead-lettered and came back only when its
    lease ran out, with no failure in its history.
    """
    try:
        return str(exc)
    except Exception as inner:  # anything user code raises
        return f"<str() of {type(exc).__qualname__} raised {type(inner).__name__}>"
