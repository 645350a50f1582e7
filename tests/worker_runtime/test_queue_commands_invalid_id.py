"""``dlq show``, ``dlq purge``, ``job show`` and ``job cancel`` of a job id that is not UTF-8,
named on the command line.

The shell passes the id's bytes (``$'bad\\xff'``); Python reads them as lone surrogates, which
the Redis broker must send back as the same bytes. Real processes on a real Redis.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import redis

from tests.support import raw_dead_letters
from tests.support.cli import run_cli
from worker_runtime.brokers.redis import keys


@pytest.fixture
def raw(redis_server: Any, queue_name: str) -> Iterator[redis.Redis]:
    """A plain client of the redis-server, the queue holding a dead letter whose id is the
    bytes b"bad\\xff"."""
    client = redis.Redis(port=redis_server.port)
    try:
        raw_dead_letters.store_raw_dead_letter(client, queue_name, b"bad\xff")
        yield client
    finally:
        client.close()


def test_a_non_utf8_job_id_named_on_the_command_line_is_shown_and_purged_alone(
    raw: redis.Redis, redis_server: Any, queue_name: str
) -> None:
    # Given two dead letters, one whose id is not UTF-8
    raw_dead_letters.store_raw_dead_letter(raw, queue_name, b"good")
    cli = {"redis_url": redis_server.url, "queue_name": queue_name}
    # When it is shown, then purged, by the id's bytes
    show = run_cli("dlq", "show", "bad\udcff", **cli)
    purge = run_cli("dlq", "purge", "bad\udcff", **cli)
    # Then it is shown (its id escaped) and it alone is deleted
    assert show.returncode == 0, show.stderr
    assert "bad\\xff" in show.stdout and "max_deliveries" in show.stdout
    assert purge.returncode == 0 and "purged 1" in purge.stdout, purge.stderr
    assert raw.zrange(keys.build_keys(queue_name).dlq, 0, -1) == [b"good"]


def test_a_non_utf8_job_id_named_on_the_command_line_is_looked_up_and_refused_a_cancel(
    raw: redis.Redis, redis_server: Any, queue_name: str
) -> None:
    # Given a dead letter whose id is not UTF-8
    cli = {"redis_url": redis_server.url, "queue_name": queue_name}
    # When job show and job cancel name it by its bytes, beside an id never enqueued
    show = run_cli("job", "show", "bad\udcff", "gone\udcfe", **cli)
    cancel = run_cli("job", "cancel", "bad\udcff", "gone\udcfe", **cli)
    # Then the broker answers for each (exit 1: one is unknown, one refused), the ids
    # escaped, and the dead letter is kept
    assert show.returncode == 1, show.stderr
    assert "bad\\xff: dead-lettered (max_deliveries)" in show.stdout
    assert "gone\\xfe: unknown" in show.stdout
    assert cancel.returncode == 1, cancel.stderr
    assert "refused bad\\xff: dead-lettered" in cancel.stdout
    assert "unknown gone\\xfe" in cancel.stdout
    assert raw.zrange(keys.build_keys(queue_name).dlq, 0, -1) == [b"bad\xff"]
