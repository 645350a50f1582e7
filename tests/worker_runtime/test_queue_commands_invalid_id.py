"""``dlq show``, ``dlq purge``, ``job show`` and ``job cancel`` of a job id that is not UTF-8,
named on the command line.

The shell passes the id's bytes (``$'bad\\xff'``); Python reads them as lone surrogates, which
the Redis broker must send back as the same bytes. Real processes on a real Redis.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
import redis
import redis.cluster

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


SPOOF_ID = "ev\x1b[31mil\rX\nfake line\x07\x9b"
"""A job id holding an escape sequence, CR, LF, BEL and a C1 control character (CSI)."""

RAW_CONTROLS = ("\x1b", "\r", "\x07", "\x9b")
"""Control characters no line for humans may carry (newlines are counted apart)."""


def _store_spoofing_dead_letter(client: redis.Redis, queue_name: str) -> None:
    """A dead letter whose id, task, worker and error carry control characters (its record
    is valid JSON: another producer wrote it with its own JSON encoder)."""
    k = keys.build_keys(queue_name)
    record = {
        "id": SPOOF_ID,
        "reason": "max_deliveries",
        "attempts": 1,
        "deliveries": 1,
        "worker": "w\x1b[2J",
        "dead_lettered_at": 1700000000.0,
        "history": [
            {"error_type": "Boom\x1b[1m", "message": "one\x1b[31m\rtwo", "attempt": 1, "at": 1.0}
        ],
        "envelope": json.dumps({"task": "t\x1b[5mask", "payload": {}}),
    }
    client.hset(k.dlq_data, SPOOF_ID.encode(), json.dumps(record))
    client.zadd(k.dlq, {SPOOF_ID.encode(): 1700000000000})


def test_control_characters_of_a_job_show_escaped_to_humans_and_exact_in_json(
    redis_server: Any, queue_name: str
) -> None:
    # Given a dead letter whose id, task, worker and error carry control characters
    client = redis.Redis(port=redis_server.port)
    try:
        _store_spoofing_dead_letter(client, queue_name)
    finally:
        client.close()
    cli = {"redis_url": redis_server.url, "queue_name": queue_name}
    commands = [("dlq", "ls"), ("dlq", "show", SPOOF_ID), ("job", "show", SPOOF_ID)]
    commands.append(("job", "cancel", SPOOF_ID))
    # When each command that prints it runs for humans, and with --json
    human = [run_cli(*c, **cli) for c in commands]
    machine = [run_cli(*c, "--json", **cli) for c in commands]
    # Then humans see every control character escaped (the id as ev\x1b[31mil\rX\nfake
    # line\x07\x9b, on one line), and the JSON carries the id exactly
    for done in human:
        output = done.stdout + done.stderr
        assert done.returncode in (0, 1), done.stderr
        assert not any(c in output for c in RAW_CONTROLS), output
        assert "ev\\x1b[31mil\\rX\\nfake line\\x07\\x9b" in output
        assert "fake line" not in output.replace("\\nfake line", "")
    assert "t\\x1b[5mask" in human[1].stdout and "w\\x1b[2J" in human[1].stdout
    assert "Boom\\x1b[1m: one\\x1b[31m\\rtwo" in human[1].stdout
    dlq_ls, dlq_show, job_show, job_cancel = (json.loads(done.stdout) for done in machine)
    assert dlq_ls[0]["job_id"] == dlq_show["job_id"] == SPOOF_ID
    assert job_show["jobs"][0]["job_id"] == SPOOF_ID
    assert job_cancel["outcomes"] == {SPOOF_ID: "dead_lettered"}


def test_dlq_show_of_an_id_with_no_dead_letter_names_it_escaped(
    redis_server: Any, queue_name: str
) -> None:
    # Given a queue with no dead letter of the id to be shown, which is not UTF-8 and holds an
    # escape sequence
    cli = {"redis_url": redis_server.url, "queue_name": queue_name}
    # When dlq show names it
    show = run_cli("dlq", "show", "bad\x1b[31m\udcff", **cli)
    # Then it says so, the id escaped as every other line shows ids (not Python's repr of it)
    assert show.returncode == 1
    assert f"workerfleet: no dead letter 'bad\\x1b[31m\\xff' in {queue_name}" in show.stderr


def test_a_non_utf8_job_id_is_looked_up_and_refused_a_cancel_on_a_redis_cluster(
    redis_cluster: Any, queue_name: str
) -> None:
    # Given a dead letter whose id is not UTF-8, on a Redis Cluster
    client = redis.cluster.RedisCluster(host="127.0.0.1", port=redis_cluster.ports[0])
    k = keys.build_keys(queue_name)
    try:
        record = b'{"id":"bad\xff","reason":"max_deliveries","envelope":"{}"}'
        client.hset(k.dlq_data, b"bad\xff", record)
        client.zadd(k.dlq, {b"bad\xff": 1700000000000})
    finally:
        client.close()
    on = ("--broker-url", f"redis+cluster://127.0.0.1:{redis_cluster.ports[0]}/", "-q", queue_name)
    # When job show and job cancel name it by its bytes
    show = run_cli("job", "show", "bad\udcff", *on)
    cancel = run_cli("job", "cancel", "bad\udcff", *on)
    # Then the cluster answers for it: dead-lettered, so shown (exit 0) and not cancelled
    assert show.returncode == 0, show.stderr
    assert "bad\\xff: dead-lettered (max_deliveries)" in show.stdout
    assert cancel.returncode == 1, cancel.stderr
    assert "refused bad\\xff: dead-lettered" in cancel.stdout
