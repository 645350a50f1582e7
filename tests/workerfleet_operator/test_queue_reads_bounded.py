"""Many pools polling one Redis at the same moment all read their queues.

Found by ``make bench-operator`` on the real API server: 1,000 new pools sharing one Redis Secret
poll in step, and more than the client's connection pool (redis-py's default, 100) asked at
once. redis-py does not wait for a free connection, it raises ``MaxConnectionsError``: each of
those pools reported its queue unreachable (a Warning Event and a status write), then reachable
again on its next poll (another Event and write), and the churn repeated every interval.
"""

from __future__ import annotations

import asyncio

from workerfleet_operator.shell import kube, queue

from tests.support import redis_servers


async def test_more_pools_than_redis_connections_polling_at_once_all_read_their_queue(
    redis_server: redis_servers.RedisServer,
) -> None:
    # Given 300 pools whose queues live on one Redis, behind one Secret
    reader = queue.QueueReader(socket_timeout=10.0)
    secret = kube.SecretValue(resource_version="1", value=redis_server.url, uid="u")
    key = queue.ClientKey("ns", "redis", "url", "1")
    try:
        # When every pool polls at the same moment
        observations = await asyncio.gather(
            *(
                reader.fetch_observation(key, secret, f"bounded-{i}", deadline_seconds=30.0)
                for i in range(300)
            )
        )
    finally:
        await reader.close()
    # Then every pool read its queue: none is reported unreachable
    errors = [o.error for o in observations if o.error is not None]
    assert errors == []
    assert all(o.stats is not None for o in observations)
