"""The tests' own redis-server never takes another server for its own.

Two pytest processes run side by side in CI, each starting redis-servers on ports it picked as
free. A port taken between the pick and the start made the new server exit while the old one
answered the readiness ping: the test then ran against another test's Redis.
"""

from __future__ import annotations

import redis

from tests.support.redis_servers import RedisServer


def test_a_server_whose_port_was_taken_moves_to_another_and_answers_as_itself() -> None:
    # Given a running server, and a second one that picked the same port before it was taken
    first = RedisServer()
    first.start()
    second = RedisServer()
    second.port = first.port
    try:
        # When the second one starts
        second.start()
        # Then it runs on a port of its own, and the server there is its process
        assert second.port != first.port
        client = redis.Redis(port=second.port)
        try:
            assert int(client.info("server")["process_id"]) == second.pid
        finally:
            client.close()
        # And the first server is untouched
        client = redis.Redis(port=first.port)
        try:
            assert int(client.info("server")["process_id"]) == first.pid
        finally:
            client.close()
    finally:
        second.close()
        first.close()
