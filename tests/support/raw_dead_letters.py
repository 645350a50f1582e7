"""Dead-letter records written to Redis byte for byte, as another producer may have written them.

Used by the tests of job ids that are not UTF-8 (the command line's and the console's).
"""

from __future__ import annotations

import redis

from worker_runtime.brokers.redis import keys


def store_raw_dead_letter(
    client: redis.Redis, queue_name: str, job_id: bytes, envelope: bytes = b'"{}"'
) -> None:
    """Write the DLQ record of ``job_id`` (any bytes) with ``envelope`` (raw JSON bytes)."""
    k = keys.build_keys(queue_name)
    record = (
        b'{"id":"' + job_id + b'","reason":"max_deliveries","priority":"normal","attempts":0,'
        b'"deliveries":2,"lost":2,"worker":"w","dead_lettered_at":1700000000.0,"history":[],'
        b'"envelope":' + envelope + b"}"
    )
    client.hset(k.dlq_data, job_id, record)
    client.zadd(k.dlq, {job_id: 1700000000000})
