"""The bare-loop ceiling for bench/runtime/driver.py: ``produce``, ``pace`` and ``work`` (.venv).

Not a queue library: the least a Python process must do to move no-op jobs through a Redis
stream, measured in the same run as workerfleet so ``share = workerfleet / bare loop`` says how
close the runtime is to the practical limit of one Python process on this machine.

What it does (and nothing more):

- ``produce``: XADD of N entries ``{"j": <JSON envelope {"id", "task", "payload"}>}`` to one
  stream, 500 per non-transactional pipeline, after XGROUP CREATE.
- ``work``: ONE asyncio coroutine on redis-py's asyncio client (hiredis parser, the same client
  and parser workerfleet uses). Each cycle is ONE pipeline, one round trip: XACK + XDEL of the
  previous batch's entry ids, then XREADGROUP COUNT 500 BLOCK 1000 for the next batch. For each
  entry it ``json.loads`` the envelope, looks the task up in a dict and awaits the async no-op
  handler inline (the handler calls ``common.hit`` like every other system's).

What it does NOT do (everything workerfleet does on top): no per-job state (attempts,
deliveries), no leases, fencing tokens or lease renewal, no reclaim of a crashed consumer's
pending entries, no retries, backoff, DLQ, delayed jobs, priorities, rate limits or
idempotency keys, no payload validation beyond ``json.loads`` (workerfleet validates the envelope
and the payload with pydantic), no concurrency (handlers run one after another inside the loop:
no Task per job, no slots, no timeouts), no metrics, logs, heartbeat, health endpoints or
drain. An entry read but not acknowledged when the process dies stays in the group's pending
list forever: this is a ceiling, not a queue.

``pace`` produces at BENCH_RATE jobs/s for BENCH_SECONDS like ``wf_bench.py pace``.

By hand only, ``BENCH_BARE_READ`` (default 500) sets the XREADGROUP COUNT of ``work``: with 25,
a worker lane's batch at concurrency 50, it shows what the smaller batches alone cost. The
ceiling ``make bench-runtime`` reports always reads 500.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any

import common
import redis.asyncio
import redis.exceptions

STREAM = "bare:stream"
GROUP = "bare"
BATCH = 500
READ = int(os.environ.get("BENCH_BARE_READ", str(BATCH)))


async def noop(payload: dict[str, Any]) -> None:
    common.hit(payload.get("t"))


HANDLERS: dict[str, Callable[[dict[str, Any]], Awaitable[None]]] = {"noop": noop}


async def _ensure_group(client: redis.asyncio.Redis) -> None:
    try:
        await client.xgroup_create(STREAM, GROUP, id="0", mkstream=True)
    except redis.exceptions.ResponseError as exc:
        if "BUSYGROUP" not in str(exc):
            raise


async def _add(client: redis.asyncio.Redis, first: int, last: int, stamp: float | None) -> None:
    pipe = client.pipeline(transaction=False)
    for i in range(first, last):
        payload: dict[str, Any] = {"i": i} if stamp is None else {"i": i, "t": stamp}
        pipe.xadd(STREAM, {"j": json.dumps({"id": str(i), "task": "noop", "payload": payload})})
    await pipe.execute()


async def _produce() -> None:
    client = redis.asyncio.Redis.from_url(common.REDIS_URL)
    await _ensure_group(client)
    start = time.perf_counter()
    for part in common.chunks(common.JOBS, BATCH):
        await _add(client, part.start, part.stop, None)
    common.report_enqueue(common.JOBS, time.perf_counter() - start)
    await client.aclose()


async def _pace() -> None:
    rate = float(os.environ["BENCH_RATE"])
    seconds = float(os.environ.get("BENCH_SECONDS", "5"))
    client = redis.asyncio.Redis.from_url(common.REDIS_URL)
    await _ensure_group(client)
    start = time.perf_counter()
    sent, total = 0, int(rate * seconds)
    durations: list[float] = []
    while sent < total:
        due = min(total, int((time.perf_counter() - start) * rate) + 1)
        if due > sent:
            now = time.time()
            await _add(client, sent, due, now)
            durations.append(time.time() - now)
            sent = due
        await asyncio.sleep(0.005)
    elapsed = time.perf_counter() - start
    common.report_enqueue(sent, elapsed, rate=rate, **common.call_stats(durations, sent))
    await client.aclose()


async def _work() -> None:
    client = redis.asyncio.Redis.from_url(common.REDIS_URL)
    await _ensure_group(client)
    done: list[bytes] = []
    while True:
        pipe = client.pipeline(transaction=False)
        if done:
            pipe.xack(STREAM, GROUP, *done)
            pipe.xdel(STREAM, *done)
        pipe.xreadgroup(GROUP, "bare-1", {STREAM: ">"}, count=READ, block=1000)
        replies = await pipe.execute()
        done = []
        for _stream, entries in replies[-1] or ():
            for entry_id, fields in entries:
                envelope = json.loads(fields[b"j"])
                await HANDLERS[envelope["task"]](envelope["payload"])
                done.append(entry_id)


if __name__ == "__main__":
    actions = {"produce": _produce, "pace": _pace, "work": _work}
    action = actions.get(sys.argv[1] if len(sys.argv) > 1 else "")
    if action is None:
        common.usage("bare_bench")
    else:
        asyncio.run(action())
