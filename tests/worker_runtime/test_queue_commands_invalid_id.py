"""``dlq show`` and ``dlq purge`` of a job id that is not UTF-8, named on the command line.

The shell passes the id's bytes (``$'bad\\xff'``); Python reads them as lone surrogates, which
the Redis broker must send back as the same bytes. Real processes on a real Redis.
"""

from __future__ import annotations

from typing import Any

import redis

from tests.support import raw_dead_letters
from tests.support.cli import run_cli
from worker_runtime.brokers.redis import keys


def test_a_non_utf8_job_id_named_on_the_command_line_is_shown_and_purged_alone(
    redis_server: Any, queue_name: str
) -> None:
    # Given two dead letters, one whose id is not UTF-8
    raw = redis.Redis(port=redis_server.port)
    try:
        raw_dead_letters.store_raw_dead_letter(raw, queue_name, b"bad\xff")
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
    finally:
        raw.close()
