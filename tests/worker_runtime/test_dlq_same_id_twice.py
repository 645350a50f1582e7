"""A job id dead-lettered a second time keeps the first time's failures in its dead letter.

A job id can come back while its dead letter waits: an event published again past the dedup
window, a producer that names its jobs (``job_id=``) and enqueues one anew. The DLQ keeps one
record per id, and the second dead-lettering used to overwrite the first record, so the
first run's failure history vanished without a trace. Both runs' failures are now in the one
record, oldest first (the first failure and the latest ones within the usual 25).
"""

from __future__ import annotations

from typing import Any

from tests.support import engine as es
from worker_runtime.brokers.redis import dlq


async def test_a_job_id_dead_lettered_twice_keeps_both_runs_failures(
    engine_client: Any, queue_name: str
) -> None:
    # Given job J dead-lettered after failing with "first run"
    engine = es.make_engine(engine_client, queue_name)
    [created] = await engine.enqueue_many([es.request(payload={"n": 1})])
    [run1] = await engine.fetch("w1", 1)
    assert await engine.dead_letter(run1, "max_attempts", failure=es.failure("first run", "w1"))
    # When J is enqueued again, runs and is dead-lettered after failing with "second run"
    await es.enqueue_again(engine, run1.envelope)
    [run2] = await engine.fetch("w2", 1)
    assert run2.id == created.job_id
    assert await engine.dead_letter(run2, "max_attempts", failure=es.failure("second run", "w2"))
    # Then J has one dead letter, holding both runs' failures, oldest first
    letters = await dlq.fetch_dead_letters(engine_client, queue_name, limit=10)
    assert [d.job_id for d in letters] == [created.job_id]
    assert [(h.message, h.worker_id) for h in letters[0].history] == [
        ("first run", "w1"),
        ("second run", "w2"),
    ]
    assert (letters[0].worker_id, letters[0].attempts) == ("w2", 1)
