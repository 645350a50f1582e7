"""A DLQ replay whose reply is lost and that is sent again replays no more than was asked.

``dlq replay --limit N`` (and the library's ``apply_replay``) runs on a client that keeps
redis-py's automatic re-send. The replay script used to pick "the N oldest" itself, so a re-send
after a lost reply picked the N oldest that were left and replayed them too. A proxy on loopback
loses the reply of the first replay call; the history (what was dead-lettered, what the queue
then hands out, what stays in the DLQ) must show exactly the N oldest replayed, once each.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import redis.asyncio

from tests.support import engine as es
from tests.worker_runtime import cutting_proxy
from worker_runtime.brokers.redis import connection, dlq, keys, queue, scripts


async def _dead_letters(
    direct: Any, queue_name: str, n: int
) -> tuple[queue.QueueClient, dict[str, queue.Job], list[str]]:
    """``n`` jobs run and dead-lettered; returns the engine, the deliveries by id and the
    DLQ's own order, oldest first (several dead-lettered in one millisecond sort by id)."""
    engine = es.make_engine(direct, queue_name)
    await engine.enqueue_many([es.request(payload={"n": i}) for i in range(n)])
    held = {j.id: j for j in await es.fetch_all(engine, "w1", want=n)}
    for job in held.values():
        assert await engine.dead_letter(job, "non_retryable")
    oldest_first = await direct.zrange(keys.build_keys(queue_name).dlq, 0, -1)
    assert sorted(oldest_first) == sorted(held)
    return engine, held, oldest_first


async def test_a_resent_replay_of_the_oldest_ten_replays_those_ten_only(
    redis_factory: Callable[..., Any], queue_name: str
) -> None:
    # Given 30 dead letters
    server = redis_factory()
    direct = redis.asyncio.Redis(port=server.port, decode_responses=True)
    engine, _held, oldest_first = await _dead_letters(direct, queue_name, 30)
    assert await dlq.apply_replay(direct, queue_name, job_ids=["absent"]) == []  # script loaded
    # and a client with the default automatic re-send behind a proxy that loses the reply of
    # the next replay call (the script runs, the client sends it again)
    proxy = cutting_proxy.CuttingProxy(server.port, (scripts.DLQ_REPLAY.sha.encode(),))
    client = connection.build_client(proxy.url, socket_timeout=5.0)  # retries=3, as the CLI
    try:
        # When the ten oldest are replayed and the first reply is lost
        proxy.armed.set()
        await dlq.apply_replay(client, queue_name, limit=10)
        assert proxy.cuts == 1
        # Then the queue hands out exactly the ten oldest, once each, and nothing more
        ran = await es.fetch_all(engine, "w2", want=30, within=1.0)
        assert sorted(j.id for j in ran) == sorted(oldest_first[:10])
        assert all(await asyncio.gather(*(engine.ack(j) for j in ran)))
        # and the twenty newer ones are still dead letters
        left = await dlq.fetch_dead_letters(direct, queue_name, limit=100)
        assert sorted(d.job_id for d in left) == sorted(oldest_first[10:])
    finally:
        proxy.close()
        await client.aclose()
        await direct.aclose()


async def test_a_replay_walks_past_dead_letters_whose_job_is_live_again(
    engine_client: Any, queue_name: str
) -> None:
    # Given 4 dead letters, the oldest of which was enqueued anew (its job id live again)
    engine, held, oldest_first = await _dead_letters(engine_client, queue_name, 4)
    await es.enqueue_again(engine, held[oldest_first[0]].envelope)
    # When the two oldest are replayed
    replayed = await dlq.apply_replay(engine_client, queue_name, limit=2, rate_per_second=1000.0)
    # Then the two oldest that were not live are replayed; the live one stays a dead letter
    assert replayed == oldest_first[1:3]
    left = await dlq.fetch_dead_letters(engine_client, queue_name, limit=10)
    assert sorted(d.job_id for d in left) == sorted([oldest_first[0], oldest_first[3]])
