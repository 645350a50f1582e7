"""What an SQS message carries besides its envelope: the job's counters and failure history.

Used by :mod:`worker_runtime.brokers.sqs.broker` (written on every re-send: a retry, a release,
a delay step, a dead letter) and :mod:`worker_runtime.brokers.sqs.dlq` (read back). SQS keeps no
per-job state of its own beyond a message's receive count, and a retry is a NEW message (SQS
cannot delay a message it already holds), so everything a job accumulates travels in the
message attributes below (SQS allows 10 per message; these are 9):

``wf-attempts``         failed runs recorded (retries and counted dead letters)
``wf-deliveries``       deliveries of earlier messages of this job (this message adds its
                        ``ApproximateReceiveCount``)
``wf-lost``             deliveries of earlier messages that ended without a settling call
``wf-history``          the failure history, JSON (see :func:`encode_history`)
``wf-previous-delay``   the delay the last retry waited (decorrelated jitter grows from it)
``wf-not-before``       epoch seconds before which the job must not run (delays > 900 s wait
                        in steps of at most 900 s, one re-sent message per step)
``wf-reason``, ``wf-dead-lettered-at``, ``wf-worker``   on dead letters only
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from worker_runtime.brokers import base

ATTEMPTS = "wf-attempts"
DELIVERIES = "wf-deliveries"
LOST = "wf-lost"
HISTORY = "wf-history"
PREVIOUS_DELAY = "wf-previous-delay"
NOT_BEFORE = "wf-not-before"
REASON = "wf-reason"
DEAD_LETTERED_AT = "wf-dead-lettered-at"
WORKER = "wf-worker"

ALL = (
    ATTEMPTS,
    DELIVERIES,
    LOST,
    HISTORY,
    PREVIOUS_DELAY,
    NOT_BEFORE,
    REASON,
    DEAD_LETTERED_AT,
    WORKER,
)

HISTORY_BUDGET = 160_000
"""Bytes of history JSON a message carries at most, and never more than its body and other
attributes leave of the server's largest message (``SqsSettings.max_message_bytes``: body and
message attributes, each one's name, type and value, together). Over budget, the oldest
entries lose their tracebacks first, then the oldest entries go (``dropped`` counts them, so
the record says the history is not complete)."""


@dataclass(frozen=True)
class Carried:
    """The counters and history one message carries (zeros for a fresh job)."""

    attempts: int = 0
    deliveries: int = 0
    lost: int = 0
    history: tuple[base.FailureRecord, ...] = ()
    history_dropped: int = 0
    previous_delay: float | None = None
    not_before: float | None = None
    reason: str | None = None
    dead_lettered_at: float | None = None
    worker_id: str = ""


def _value(attrs: Mapping[str, Any], name: str) -> str | None:
    entry = attrs.get(name)
    if not isinstance(entry, Mapping):
        return None
    value = entry.get("StringValue")
    return value if isinstance(value, str) else None


def _number(attrs: Mapping[str, Any], name: str) -> float | None:
    text = _value(attrs, name)
    try:
        return None if text is None else float(text)
    except ValueError:
        return None


def decode_carried(attrs: Mapping[str, Any]) -> Carried:
    """The counters and history of a received message's ``MessageAttributes`` (tolerant:
    a message sent by someone else has none and reads as a fresh job)."""
    history, dropped = decode_history(_value(attrs, HISTORY))
    return Carried(
        attempts=int(_number(attrs, ATTEMPTS) or 0),
        deliveries=int(_number(attrs, DELIVERIES) or 0),
        lost=int(_number(attrs, LOST) or 0),
        history=history,
        history_dropped=dropped,
        previous_delay=_number(attrs, PREVIOUS_DELAY),
        not_before=_number(attrs, NOT_BEFORE),
        reason=_value(attrs, REASON),
        dead_lettered_at=_number(attrs, DEAD_LETTERED_AT),
        worker_id=_value(attrs, WORKER) or "",
    )


def _number_attr(value: float) -> dict[str, str]:
    text = str(int(value)) if float(value).is_integer() else repr(float(value))
    return {"DataType": "Number", "StringValue": text}


def _string_attr(value: str) -> dict[str, str]:
    return {"DataType": "String", "StringValue": value}


def attribute_bytes(attrs: Mapping[str, Mapping[str, str]]) -> int:
    """The bytes SQS counts for ``MessageAttributes``: each one's name, type and value."""
    return sum(
        len(name.encode()) + len(a["DataType"]) + len(a["StringValue"].encode())
        for name, a in attrs.items()
    )


def encode_carried(
    carried: Carried, *, body_bytes: int = 0, max_bytes: int
) -> dict[str, dict[str, str]]:
    """``MessageAttributes`` for a message that carries ``carried`` (zero counters left out)
    beside a body of ``body_bytes``: the history is cut to what a message of ``max_bytes`` leaves
    (a large job with a long history was a copy SQS refused, every time it was retried)."""
    out: dict[str, dict[str, str]] = {}
    if carried.attempts:
        out[ATTEMPTS] = _number_attr(carried.attempts)
    if carried.deliveries:
        out[DELIVERIES] = _number_attr(carried.deliveries)
    if carried.lost:
        out[LOST] = _number_attr(carried.lost)
    if carried.previous_delay is not None:
        out[PREVIOUS_DELAY] = _number_attr(carried.previous_delay)
    if carried.not_before is not None:
        out[NOT_BEFORE] = _number_attr(carried.not_before)
    if carried.reason is not None:
        out[REASON] = _string_attr(carried.reason)
    if carried.dead_lettered_at is not None:
        out[DEAD_LETTERED_AT] = _number_attr(carried.dead_lettered_at)
    if carried.worker_id:
        out[WORKER] = _string_attr(carried.worker_id)
    if carried.history or carried.history_dropped:
        room = max_bytes - body_bytes - attribute_bytes(out) - len(HISTORY) - len("String")
        budget = min(HISTORY_BUDGET, room)
        out[HISTORY] = _string_attr(
            encode_history(carried.history, carried.history_dropped, budget)
        )
    return out


def _record_json(record: base.FailureRecord, *, traceback: bool) -> dict[str, Any]:
    return {
        "e": record.error_type,
        "m": record.message,
        "t": record.traceback if traceback else "",
        "w": record.worker_id,
        "at": record.at,
        "a": record.attempt,
        "d": record.delivery,
    }


def encode_history(
    history: Sequence[base.FailureRecord], dropped: int = 0, budget: int = HISTORY_BUDGET
) -> str:
    """The history as compact JSON within ``budget`` bytes (see :data:`HISTORY_BUDGET`)."""
    records = list(history)
    keep_traceback = [True] * len(records)
    while True:
        text = json.dumps(
            {
                "dropped": dropped,
                "records": [
                    _record_json(r, traceback=t)
                    for r, t in zip(records, keep_traceback, strict=True)
                ],
            },
            separators=(",", ":"),
        )
        if len(text.encode()) <= budget or not records:
            return text
        if True in keep_traceback[:-1]:
            keep_traceback[keep_traceback.index(True)] = False
        else:
            records.pop(0)
            keep_traceback.pop(0)
            dropped += 1


def decode_history(text: str | None) -> tuple[tuple[base.FailureRecord, ...], int]:
    """(records, how many older records were dropped) from :func:`encode_history`'s JSON."""
    if not text:
        return (), 0
    try:
        data = json.loads(text)
        records = tuple(
            base.FailureRecord(
                error_type=str(r.get("e", "")),
                message=str(r.get("m", "")),
                traceback=str(r.get("t", "")),
                worker_id=str(r.get("w", "")),
                at=float(r.get("at", 0.0)),
                attempt=int(r.get("a", 0)),
                delivery=int(r.get("d", 0)),
            )
            for r in data.get("records", [])
        )
        return records, int(data.get("dropped", 0))
    except (ValueError, TypeError, AttributeError):
        return (), 0
