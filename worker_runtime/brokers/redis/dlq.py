"""Dead-letter queue tools: list (paged), show, replay (rate-limited) and purge.

Called by ``workerfleet dlq ls|show|replay|purge`` (:mod:`worker_runtime.cli`) and by
applications. Dead letters are written by the engine (:mod:`worker_runtime.brokers.redis.queue`);
retention by length and age is applied there, on every insert (``QueueOptions.dlq_max_length`` and
``dlq_retention_seconds``).
"""

from __future__ import annotations

import asyncio
import base64
import json
import time
from collections.abc import AsyncIterator, Sequence
from typing import Any

import redis.asyncio
import redis.asyncio.cluster
import redis.client

from worker_runtime.brokers import base
from worker_runtime.brokers.redis import keys, scripts

AsyncClient = redis.asyncio.Redis | redis.asyncio.cluster.RedisCluster

REPLAY_BATCH = 100
"""Most dead letters moved back per script call."""

LIST_BATCH = 1000
"""Most dead-letter records one list script call returns."""


FailureRecord = base.FailureRecord
DeadLetter = base.DeadLetter


def _text(value: Any) -> str:
    # A job id that is not UTF-8 keeps its bytes as lone surrogates (and is sent back as them).
    return value.decode("utf-8", "surrogateescape") if isinstance(value, bytes) else str(value)


def build_failure_record(h: dict[str, Any]) -> FailureRecord:
    """One stored failure (an entry of a job's ``history`` list, as the scripts stamp it)."""
    return FailureRecord(
        error_type=str(h.get("error_type", "")),
        message=str(h.get("message", "")),
        traceback=str(h.get("traceback", "")),
        worker_id=str(h.get("worker", "")),
        at=float(h.get("at", 0.0)),
        attempt=int(h.get("attempt", 0)),
        delivery=int(h.get("delivery", 0)),
    )


def build_dead_letter(raw: str | bytes) -> DeadLetter:
    """Parse a stored DLQ record (pure).

    Records are read as bytes: an envelope that is not UTF-8 is stored as ``envelope_base64``
    by the engine, and a record written before that (raw bytes inside its JSON) still parses:
    its bytes are kept through ``surrogateescape`` and reported the same way.
    """
    if isinstance(raw, bytes):
        raw = raw.decode("utf-8", "surrogateescape")
    data = json.loads(raw)
    history_raw = data.get("history") or []
    if not isinstance(history_raw, list):
        history_raw = []
    history = tuple(build_failure_record(h) for h in history_raw if isinstance(h, dict))
    envelope_raw = str(data.get("envelope", ""))
    envelope_base64: str | None = None
    stored_b64 = data.get("envelope_base64")
    if isinstance(stored_b64, str):
        envelope_base64 = stored_b64
        exact = base64.b64decode(stored_b64)
    else:
        exact = envelope_raw.encode("utf-8", "surrogateescape")
    try:
        exact.decode("utf-8")
    except UnicodeDecodeError:
        envelope_raw = exact.decode("utf-8", "backslashreplace")
        envelope_base64 = base64.b64encode(exact).decode("ascii")
    task: str | None = None
    correlation_id: str | None = None
    try:
        env = json.loads(envelope_raw)
        if isinstance(env, dict):
            task = env.get("task") if isinstance(env.get("task"), str) else None
            cid = env.get("correlation_id")
            correlation_id = cid if isinstance(cid, str) else None
    except ValueError:
        pass
    return DeadLetter(
        job_id=str(data["id"]),
        task=task,
        reason=str(data.get("reason", "")),
        priority=str(data.get("priority", "normal")),
        dead_lettered_at=float(data.get("dead_lettered_at", 0.0)),
        attempts=int(data.get("attempts", 0)),
        deliveries=int(data.get("deliveries", 0)),
        lost=int(data.get("lost", 0)),
        worker_id=str(data.get("worker", "")),
        correlation_id=correlation_id,
        first_failure_at=history[0].at if history else None,
        last_failure_at=history[-1].at if history else None,
        history=history,
        envelope_raw=envelope_raw,
        envelope_base64=envelope_base64,
    )


async def fetch_dead_letters(
    client: AsyncClient, queue: str, *, offset: int = 0, limit: int = 50
) -> list[DeadLetter]:
    """One page of dead letters, newest first (read-only; one round trip per LIST_BATCH)."""
    k = keys.build_keys(queue).script_keys()
    out: list[DeadLetter] = []
    start = max(0, offset)
    while len(out) < limit:
        # A large page is read in slices: one script call never copies more than LIST_BATCH
        # records (each up to a few KB of history), so Redis is never blocked for long.
        want = min(LIST_BATCH, limit - len(out))
        total, recs = await scripts.DLQ_LIST(client, k, [start, want], decode=False)
        out.extend(build_dead_letter(r) for r in recs)
        start += want
        if start >= int(total):
            break
    return out


async def fetch_dead_letter_count(client: AsyncClient, queue: str) -> int:
    """How many dead letters the queue holds."""
    return int(await client.zcard(keys.build_keys(queue).dlq))


async def fetch_dead_letter(client: AsyncClient, queue: str, job_id: str) -> DeadLetter | None:
    """One dead letter by job id, or None."""
    raw = await client.execute_command(
        "HGET",
        keys.build_keys(queue).dlq_data,
        job_id.encode("utf-8", "surrogateescape"),  # an id that is not UTF-8: its own bytes
        **{redis.client.NEVER_DECODE: []},
    )
    return None if raw is None else build_dead_letter(raw)


async def apply_replay(
    client: AsyncClient,
    queue: str,
    *,
    job_ids: Sequence[str] | None = None,
    limit: int | None = None,
    reset_attempts: bool = False,
    rate_per_second: float = 100.0,
) -> list[str]:
    """Move dead letters back to the ready queue, oldest first, at most ``rate_per_second``.

    ``job_ids`` picks entries (else the oldest, up to ``limit``, else all); ``reset_attempts``
    gives them a full set of attempts again. Returns the replayed ids. An entry whose job id
    is live again (enqueued anew meanwhile) is skipped and stays; the walk goes on past it.
    Safe to re-send (the script replays by id): a call whose reply was lost and that redis-py
    sent again replays nothing twice and nothing past ``limit``; the ids it replayed are
    counted towards ``limit`` but are not in the returned list.
    """
    if rate_per_second <= 0:
        raise ValueError("rate_per_second must be positive")
    names = keys.build_keys(queue)
    k = names.script_keys()
    batch = max(1, min(REPLAY_BATCH, int(rate_per_second)))
    reset = "1" if reset_attempts else "0"
    replayed: list[str] = []
    pending = list(job_ids) if job_ids is not None else None
    remaining = limit
    skipped = 0  # oldest entries left in place (live again): the next page starts after them
    while True:
        started = time.monotonic()
        size = batch if remaining is None else min(batch, remaining)
        if size <= 0:
            break
        if pending is not None:
            chunk, pending = pending[:size], pending[size:]
            if not chunk:
                break
            ids: list[Any] = [job_id.encode("utf-8", "surrogateescape") for job_id in chunk]
        else:
            # The oldest are read first and replayed by id: the script call is then a no-op
            # for them when redis-py sends it again after a lost reply. ("The oldest n" picked
            # inside the script replayed n more on every re-send, past the limit and rate.)
            ids = list(
                await client.execute_command(
                    "ZRANGE", names.dlq, skipped, skipped + size - 1,
                    **{redis.client.NEVER_DECODE: []},
                )
            )  # fmt: skip
            if not ids:
                break
        left, raw = await scripts.DLQ_REPLAY(client, k, [reset, *ids], decode=False)
        skipped += int(left)
        done = [_text(x) for x in raw]
        replayed.extend(done)
        if remaining is not None:
            # every id handled counts, also one a lost-reply call replayed (not in `done`)
            remaining -= len(ids) if pending is not None else len(ids) - int(left)
        if pending is not None and not pending:
            break
        # the rate limit: n jobs taken out of the DLQ take at least n/rate seconds
        pause = (len(ids) - int(left)) / rate_per_second - (time.monotonic() - started)
        if pause > 0:
            await asyncio.sleep(pause)
    return replayed


async def delete_dead_letters(
    client: AsyncClient,
    queue: str,
    *,
    job_ids: Sequence[str] | None = None,
    older_than_seconds: float | None = None,
    everything: bool = False,
) -> int:
    """Purge dead letters by id, by age, or all (exactly one: else ValueError); returns how
    many were deleted."""
    total = 0
    async for n in delete_dead_letters_in_chunks(
        client, queue, job_ids=job_ids, older_than_seconds=older_than_seconds, everything=everything
    ):
        total += n
    return total


async def delete_dead_letters_in_chunks(
    client: AsyncClient,
    queue: str,
    *,
    job_ids: Sequence[str] | None = None,
    older_than_seconds: float | None = None,
    everything: bool = False,
) -> AsyncIterator[int]:
    """Purge like :func:`delete_dead_letters`, one script call (≤1,000 entries) per step.

    Yields how many each call deleted, so a caller can show progress and stop between calls
    knowing exactly what was deleted (the CLI's Ctrl-C summary).
    """
    # Exactly one selection, as on every broker: with two, "everything and older than D"
    # meant only the old ones here and everything on the memory broker.
    if sum((job_ids is not None, older_than_seconds is not None, everything)) != 1:
        raise ValueError(
            "say which dead letters to purge: exactly one of job_ids, older_than_seconds or "
            "everything"
        )
    k = keys.build_keys(queue).script_keys()
    if job_ids is not None:
        ids = [job_id.encode("utf-8", "surrogateescape") for job_id in job_ids]
        for start in range(0, len(ids), 1000):
            yield int(await scripts.DLQ_PURGE(client, k, ["ids", *ids[start : start + 1000]]))
        return
    args: list[scripts.Arg] = ["all"]
    if older_than_seconds is not None:
        args = ["age", int(older_than_seconds * 1000)]
    for _ in range(100_000):
        n = int(await scripts.DLQ_PURGE(client, k, args))
        yield n
        if n < 1000:
            break


async def fetch_dead_letter_count_older_than(
    client: AsyncClient, queue: str, older_than_seconds: float
) -> int:
    """How many dead letters were dead-lettered more than ``older_than_seconds`` ago."""
    # the DLQ sorted set is scored by dead-letter time in ms (the purge script's age cutoff)
    now_s, now_us = await client.time()
    cutoff_ms = int(now_s) * 1000 + int(now_us) // 1000 - int(older_than_seconds * 1000)
    return int(await client.zcount(keys.build_keys(queue).dlq, "-inf", cutoff_ms))
