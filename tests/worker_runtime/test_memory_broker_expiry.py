"""The memory broker forgets what has expired: a long-lived process holds only live entries.

Idempotency keys, "done" markers and traces carry an expiry; the memory broker kept every one
it was ever given (2,000 jobs with 1 s keys and the clock far past them: all 2,000 of each still
held). It now drops the expired ones once their count doubles (amortized: one pass per
doubling). The tests drive its clock; the entries are read from its own state, as nothing else
can show what a process holds.
"""

from __future__ import annotations

from tests.support.brokers import request
from worker_runtime.brokers import base, memory


class _Clock:
    def __init__(self) -> None:
        self.now = 1_000.0

    def __call__(self) -> float:
        return self.now


async def test_expired_idempotency_keys_and_done_markers_are_dropped() -> None:
    # Given a broker that enqueued and acknowledged 3,000 jobs, each with a 1 s idempotency key
    # and a 1 s done marker
    clock = _Clock()
    broker = memory.MemoryBroker("q", clock=clock)
    for n in range(3_000):
        req = request(payload={"n": n}, idempotency_key=f"k{n}")
        await broker.enqueue(base.EnqueueRequest(req.envelope, idempotency_ttl_seconds=1.0))
        [job] = await broker.fetch("w", 1)
        assert await broker.ack(job, done_key=f"d{n}", done_ttl_seconds=1.0)
    # When work goes on for 3,000 more jobs while the clock moves past each hundred's expiry
    for n in range(3_000, 6_000):
        if n % 100 == 0:
            clock.now += 10.0
        req = request(payload={"n": n}, idempotency_key=f"k{n}")
        await broker.enqueue(base.EnqueueRequest(req.envelope, idempotency_ttl_seconds=1.0))
        [job] = await broker.fetch("w", 1)
        assert await broker.ack(job, done_key=f"d{n}", done_ttl_seconds=1.0)
    # Then what is held is the live hundred and the expired ones of at most one doubling, not
    # all 6,000 keys and markers
    held = len(broker._q.idempotency) + len(broker._q.done)
    assert held <= memory._SWEEP_FLOOR + 2
    # and the live ones still work: a live key deduplicates, a live marker reads as done
    again = request(payload={"n": -1}, idempotency_key="k5999")
    result = await broker.enqueue(base.EnqueueRequest(again.envelope, idempotency_ttl_seconds=1.0))
    assert result.created is False
    assert await broker.fetch_is_done("d5999") is True
    assert await broker.fetch_is_done("d0") is False


async def test_expired_traces_are_dropped() -> None:
    # Given 3,000 correlation ids traced
    clock = _Clock()
    broker = memory.MemoryBroker("q", clock=clock, store="trace-expiry")
    entry = base.TraceEntry(kind="job", id="j", parent=None, name="t", at=clock.now)
    for n in range(3_000):
        await broker.record_trace(f"c{n}", entry)
    # When 3,000 more are recorded while the clock moves past each hundred's expiry
    for n in range(3_000, 6_000):
        if n % 100 == 0:
            clock.now += base.TRACE_TTL_SECONDS + 1.0
        await broker.record_trace(f"c{n}", entry)
    # Then the expired ones are gone from the index (at most one doubling's worth left), the
    # live ones kept
    mine = [k for k in memory._TRACES if k[0] == "trace-expiry"]
    assert len(mine) <= memory._SWEEP_FLOOR + 1
    assert await broker.fetch_trace("c5999") != []
    assert await broker.fetch_trace("c0") == []
