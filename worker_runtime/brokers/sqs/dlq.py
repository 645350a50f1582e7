"""The SQS broker's dead letters: count, list, show, replay (at a rate) and purge the DLQ queue.

Called by :class:`worker_runtime.brokers.sqs.broker.SqsBroker`'s ``DeadLetters`` methods (so by
``workerfleet dlq`` and the console). SQS has no index and no peek: a dead letter is read by
receiving it with a short visibility timeout (:data:`SCAN_HIDE_SECONDS`), which hides it from
other readers meanwhile; what a list or show read is made visible again at once. Reading a
queue larger than :data:`MAX_SCAN` sees only part of it, and SQS's short polls sample its
servers, so on AWS a read can miss a few messages (ElasticMQ's cannot). Each record comes from
the message attributes of :mod:`worker_runtime.brokers.sqs.attributes`; a message that the SQS
redrive policy moved (the backstop for a job whose dead-letter could not be sent) has none and
reads as reason ``max_deliveries``.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from worker_runtime import envelope as envelope_mod
from worker_runtime.brokers import base
from worker_runtime.brokers.sqs import attributes

SCAN_HIDE_SECONDS = 30
"""How long a scan keeps the dead letters it read invisible (released at its end)."""

MAX_SCAN = 10_000
"""Most dead letters one list, show, replay or purge reads."""

EMPTY_ROUNDS = 3
"""Empty short polls in a row after which a scan takes the queue as read."""

BATCH = 10

SendEntry = Callable[[str, attributes.Carried, envelope_mod.JobEnvelope | None], dict[str, Any]]
"""Builds a SendMessage's arguments for (body, carried, envelope): the broker's own encoding."""


@dataclass(frozen=True)
class ScannedLetter:
    """One dead letter read from the DLQ, with the receipt that deletes or releases it."""

    letter: base.DeadLetter
    receipt: str
    body: str
    carried: attributes.Carried


def build_dead_letter(message: dict[str, Any]) -> ScannedLetter:
    """A :class:`~worker_runtime.brokers.base.DeadLetter` from one received DLQ message."""
    body = str(message.get("Body", ""))
    carried = attributes.decode_carried(message.get("MessageAttributes") or {})
    system = message.get("Attributes") or {}
    try:
        data = json.loads(body)
        if not isinstance(data, dict):
            data = {}
    except ValueError:
        data = {}
    sent_at = float(system.get("SentTimestamp", 0)) / 1000.0
    history = carried.history
    letter = base.DeadLetter(
        job_id=str(data.get("id") or message.get("MessageId", "")),
        task=data.get("task") if isinstance(data.get("task"), str) else None,
        reason=carried.reason or base.DeadLetterReason.MAX_DELIVERIES,
        priority=str(data.get("priority") or envelope_mod.Priority.NORMAL),
        dead_lettered_at=carried.dead_lettered_at or sent_at,
        attempts=carried.attempts,
        deliveries=carried.deliveries,
        lost=carried.lost,
        worker_id=carried.worker_id,
        correlation_id=data.get("correlation_id"),
        first_failure_at=history[0].at if history else None,
        last_failure_at=history[-1].at if history else None,
        history=history,
        envelope_raw=body,
    )
    return ScannedLetter(letter, str(message["ReceiptHandle"]), body, carried)


async def scan_dead_letters(client: Any, dlq_url: str) -> list[ScannedLetter]:
    """Every dead letter (up to :data:`MAX_SCAN`), each hidden for :data:`SCAN_HIDE_SECONDS`."""
    seen: dict[str, ScannedLetter] = {}
    empty = 0
    while len(seen) < MAX_SCAN and empty < EMPTY_ROUNDS:
        reply = await client.receive_message(
            QueueUrl=dlq_url,
            MaxNumberOfMessages=BATCH,
            WaitTimeSeconds=0,
            VisibilityTimeout=SCAN_HIDE_SECONDS,
            MessageAttributeNames=list(attributes.ALL),
            MessageSystemAttributeNames=["SentTimestamp", "ApproximateReceiveCount"],
        )
        messages = reply.get("Messages", [])
        empty = 0 if messages else empty + 1
        for message in messages:
            # A letter read again (its hiding ended while the scan went on) has a new receipt,
            # and SQS deletes or releases it only by that one: the older is refused
            seen[str(message["MessageId"])] = build_dead_letter(message)
    return list(seen.values())


async def _batch(
    client: Any, dlq_url: str, letters: Sequence[ScannedLetter], *, delete: bool
) -> int:
    """Delete or release ``letters``, 10 per call; returns how many entries SQS applied."""
    applied = 0
    for start in range(0, len(letters), BATCH):
        chunk = letters[start : start + BATCH]
        if delete:
            entries = [{"Id": str(i), "ReceiptHandle": s.receipt} for i, s in enumerate(chunk)]
            reply = await client.delete_message_batch(QueueUrl=dlq_url, Entries=entries)
        else:
            entries_v = [
                {"Id": str(i), "ReceiptHandle": s.receipt, "VisibilityTimeout": 0}
                for i, s in enumerate(chunk)
            ]
            reply = await client.change_message_visibility_batch(
                QueueUrl=dlq_url, Entries=entries_v
            )
        applied += len(reply.get("Successful", []))
    return applied


async def release_scanned(client: Any, dlq_url: str, letters: Sequence[ScannedLetter]) -> None:
    """Make dead letters a scan read visible again."""
    await _batch(client, dlq_url, letters, delete=False)


async def delete_scanned(client: Any, dlq_url: str, letters: Sequence[ScannedLetter]) -> int:
    """Delete dead letters a scan read; returns how many SQS deleted (a batch's entry can fail
    alone, throttled or with a receipt SQS no longer takes: that letter stays)."""
    return await _batch(client, dlq_url, letters, delete=True)


async def replay_scanned(
    client: Any,
    dlq_url: str,
    letters: Sequence[ScannedLetter],
    *,
    queue_url_for: Callable[[envelope_mod.Priority], str],
    send_entry: Callable[
        [str, attributes.Carried, envelope_mod.JobEnvelope | None], dict[str, Any]
    ],
    reset_attempts: bool,
    rate_per_second: float,
) -> list[str]:
    """Send each dead letter back to its priority's queue as due now (its history kept; a full
    set of attempts again when ``reset_attempts``), then delete it from the DLQ; at most
    ``rate_per_second`` (SQS's own redrive task has the same kind of rate)."""
    if rate_per_second <= 0:
        raise ValueError("rate_per_second must be positive")
    interval = 1.0 / rate_per_second
    replayed: list[str] = []
    for scanned in letters:
        started = time.monotonic()
        env: envelope_mod.JobEnvelope | None
        try:
            env = envelope_mod.parse_envelope(scanned.body)
            priority = env.priority
        except envelope_mod.EnvelopeError:
            env, priority = None, envelope_mod.Priority.NORMAL
        carried = dataclasses.replace(
            scanned.carried,
            attempts=0 if reset_attempts else scanned.carried.attempts,
            lost=0,
            reason=None,
            dead_lettered_at=None,
            worker_id="",
            not_before=None,
        )
        await client.send_message(
            QueueUrl=queue_url_for(priority), **send_entry(scanned.body, carried, env)
        )
        await client.delete_message(QueueUrl=dlq_url, ReceiptHandle=scanned.receipt)
        replayed.append(scanned.letter.job_id)
        await asyncio.sleep(max(0.0, interval - (time.monotonic() - started)))
    return replayed
