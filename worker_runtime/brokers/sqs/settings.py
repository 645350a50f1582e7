"""The SQS broker's settings: parsed from an ``sqs://`` URL, and the SQS queue names of a queue.

Called by :func:`worker_runtime.brokers.sqs.broker.open_sqs_broker` (and so by ``open_broker``
for the ``sqs`` scheme). No client library is imported here.

URL form (no credentials in it, ever: they come from the standard AWS chain)::

    sqs://                                  AWS, region from the chain (AWS_REGION, profile, IRSA)
    sqs://?region=eu-west-1&fifo=true       AWS, a FIFO queue set
    sqs://127.0.0.1:9324?region=us-east-1&secure=false   an SQS-compatible server (ElasticMQ)

Query options: ``region``, ``secure`` (``false`` = plain http to the host), ``fifo``,
``priorities`` (``false`` = one queue, no high/low queues), ``prefix`` (prepended to every SQS
queue name), ``max_message_bytes`` (the largest message the server takes: see
:data:`AWS_MAX_MESSAGE_BYTES` and :data:`COMPATIBLE_MAX_MESSAGE_BYTES` for the defaults).

A workerfleet queue ``Q`` is these SQS queues (``.fifo`` appended on a FIFO set): ``Q-high``,
``Q`` and ``Q-low`` (the priorities, polled in that order; only ``Q`` without priorities) and
``Q-dlq`` (the dead letters). So a name (with its prefix) ending in ``-high``, ``-low`` or
``-dlq`` is refused: it is another queue's SQS queue (see :data:`RESERVED_ENDINGS`).
"""

from __future__ import annotations

import re
import urllib.parse
from dataclasses import dataclass

from worker_runtime import envelope as envelope_mod
from worker_runtime import errors

SQS_NAME_MAX = 80
"""SQS's longest queue name (including a ``.fifo`` suffix)."""

_SQS_NAME = re.compile(r"^[A-Za-z0-9_-]+$")
_LONGEST_SUFFIX = len("-high") + len(".fifo")

RESERVED_ENDINGS = ("-high", "-low", "-dlq")
"""The endings workerfleet gives a queue's other SQS queues. A queue named with one would share
an SQS queue with another: ``emails-high``'s jobs would land in the high queue of ``emails``,
whose workers take them first and dead-letter them as unknown tasks (and each queue's worker
would set its own lease and redrive policy on the shared queue); ``emails-dlq`` would run the
dead letters of ``emails`` as jobs. Refused whatever ``priorities`` says: another deployment of
the same names may have them on."""
_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}

LOOPBACK_HOSTS = frozenset({"127.0.0.1", "localhost", "::1"})

AWS_MAX_MESSAGE_BYTES = 1_048_576
"""The largest message AWS SQS takes since August 2025 (1 MiB of body and message attributes
together), and the largest SendMessageBatch: the default for a URL without a host (AWS) or with
one of AWS's (``*.amazonaws.com``)."""

COMPATIBLE_MAX_MESSAGE_BYTES = 262_144
"""The default for a URL naming another host than AWS's (``*.amazonaws.com``): an SQS-compatible
server. 256 KiB, SQS's limit before August 2025 and still ElasticMQ's (1.6.11 refuses a larger
body, attribute or batch as MessageTooLong); ``max_message_bytes=`` sets another."""

MIN_MESSAGE_BYTES = 1_024
"""The smallest ``max_message_bytes`` (SQS's smallest MaximumMessageSize)."""


@dataclass(frozen=True)
class SqsSettings:
    """Where the SQS API is and how a queue maps onto SQS queues."""

    region: str | None = None
    endpoint_url: str | None = None
    fifo: bool = False
    priorities: bool = True
    prefix: str = ""
    max_message_bytes: int = AWS_MAX_MESSAGE_BYTES
    """The largest message (body and attributes together) and SendMessageBatch the server
    takes: the broker cuts batches and failure histories to it."""

    @property
    def local_endpoint(self) -> bool:
        """True for an endpoint on this machine (a test or demo server, not AWS)."""
        if self.endpoint_url is None:
            return False
        return urllib.parse.urlsplit(self.endpoint_url).hostname in LOOPBACK_HOSTS


def _flag(query: dict[str, str], name: str, default: bool) -> bool:
    value = query.get(name)
    if value is None:
        return default
    if value.lower() in _TRUE:
        return True
    if value.lower() in _FALSE:
        return False
    raise errors.InvalidBrokerURL(f"sqs URL option {name}= must be true or false")


def parse_sqs_url(url: str) -> SqsSettings:
    """The settings of an ``sqs://`` URL, or :class:`~worker_runtime.errors.InvalidBrokerURL`."""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme != "sqs":
        raise errors.InvalidBrokerURL("an SQS broker URL starts with sqs://")
    if parts.username or parts.password:
        raise errors.InvalidBrokerURL(
            "an sqs:// URL carries no credentials: they come from the AWS credential chain"
        )
    query = dict(urllib.parse.parse_qsl(parts.query, keep_blank_values=True))
    unknown = set(query) - {"region", "secure", "fifo", "priorities", "prefix", "max_message_bytes"}
    if unknown:
        raise errors.InvalidBrokerURL(f"unknown sqs URL options: {', '.join(sorted(unknown))}")
    endpoint = None
    if parts.hostname:
        scheme = "https" if _flag(query, "secure", True) else "http"
        host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
        port = f":{parts.port}" if parts.port else ""
        endpoint = f"{scheme}://{host}{port}{parts.path.rstrip('/')}"
    prefix = query.get("prefix", "")
    if prefix and not _SQS_NAME.match(prefix):
        raise errors.InvalidBrokerURL("sqs URL option prefix= allows letters, digits, - and _")
    return SqsSettings(
        region=query.get("region") or None,
        endpoint_url=endpoint,
        fifo=_flag(query, "fifo", False),
        priorities=_flag(query, "priorities", True),
        prefix=prefix,
        max_message_bytes=_message_bytes(
            query, aws=parts.hostname is None or _on_aws(parts.hostname)
        ),
    )


def _on_aws(host: str) -> bool:
    """Whether ``host`` is one of AWS's own (an SQS endpoint named by its host, a VPC one)."""
    return host.endswith((".amazonaws.com", ".amazonaws.com.cn"))


def _message_bytes(query: dict[str, str], *, aws: bool) -> int:
    """``max_message_bytes=`` of a URL, or the default for where the URL points."""
    text = query.get("max_message_bytes")
    if text is None:
        return AWS_MAX_MESSAGE_BYTES if aws else COMPATIBLE_MAX_MESSAGE_BYTES
    if not text.isdigit() or not MIN_MESSAGE_BYTES <= int(text) <= AWS_MAX_MESSAGE_BYTES:
        raise errors.InvalidBrokerURL(
            f"sqs URL option max_message_bytes= must be a whole number of bytes from"
            f" {MIN_MESSAGE_BYTES:,} to {AWS_MAX_MESSAGE_BYTES:,} (SQS's largest message)"
        )
    return int(text)


@dataclass(frozen=True)
class SqsQueueNames:
    """The SQS queue names of one workerfleet queue."""

    by_priority: tuple[tuple[envelope_mod.Priority, str], ...]
    """(priority, SQS name) in the order fetch polls them: high, normal, low."""
    dead_letter: str

    def for_priority(self, priority: envelope_mod.Priority) -> str:
        """The SQS queue a job of ``priority`` goes to (normal's when priorities are off)."""
        for level, name in self.by_priority:
            if level == priority:
                return name
        return dict(self.by_priority)[envelope_mod.Priority.NORMAL]


def build_queue_names(queue: str, settings: SqsSettings) -> SqsQueueNames:
    """The SQS names of ``queue``; raises :class:`~worker_runtime.errors.InvalidQueueName` when
    SQS cannot hold them (SQS allows letters, digits, ``-`` and ``_``, 80 characters) or when
    they would be another queue's (a name ending in one of :data:`RESERVED_ENDINGS`)."""
    base = settings.prefix + queue
    if not _SQS_NAME.match(base) or len(base) + _LONGEST_SUFFIX > SQS_NAME_MAX:
        raise errors.InvalidQueueName(
            f"queue name {queue!r} cannot be an SQS queue name: SQS allows letters, digits,"
            f" - and _ and at most {SQS_NAME_MAX - _LONGEST_SUFFIX} characters with the prefix"
        )
    ending = next((e for e in RESERVED_ENDINGS if base.endswith(e)), None)
    if ending is not None:
        # the prefix counts: prefix "emails-" with queue "high" is the high queue of "emails"
        owner = base[: -len(ending)]
        raise errors.InvalidQueueName(
            f"queue name {queue!r} cannot be used on SQS: the SQS queue {base!r} is the"
            f" {ending} queue of the queue {owner!r} (a queue Q is the SQS queues Q-high, Q,"
            " Q-low and Q-dlq), and the two queues would share it; choose a name that does"
            " not end in -high, -low or -dlq"
        )
    end = ".fifo" if settings.fifo else ""
    normal = (envelope_mod.Priority.NORMAL, f"{base}{end}")
    levels: tuple[tuple[envelope_mod.Priority, str], ...]
    if settings.priorities:
        levels = (
            (envelope_mod.Priority.HIGH, f"{base}-high{end}"),
            normal,
            (envelope_mod.Priority.LOW, f"{base}-low{end}"),
        )
    else:
        levels = (normal,)
    return SqsQueueNames(by_priority=levels, dead_letter=f"{base}-dlq{end}")
