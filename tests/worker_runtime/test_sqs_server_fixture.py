"""The private ElasticMQ servers of the SQS tests: loopback only, stopped by PID, persistent."""

from __future__ import annotations

import os
import urllib.parse
import urllib.request
from collections.abc import Callable

from tests.support import elasticmq


def _query(server: elasticmq.ElasticMQServer, **params: str) -> str:
    """One SQS Query-API call (no client library: this tests the server, not the broker)."""
    url = f"{server.endpoint}/?{urllib.parse.urlencode(params)}"
    with urllib.request.urlopen(url, timeout=10) as reply:
        return str(reply.read().decode())


def _listening_addresses(pid: int) -> set[tuple[str, int]]:
    """(address, port) of every TCP socket the process listens on, read from /proc."""
    inodes = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        path = f"/proc/{pid}/fd/{fd}"
        target = os.readlink(path) if os.path.islink(path) else ""
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(table) as f:
            for line in f.readlines()[1:]:
                cols = line.split()
                local, state, inode = cols[1], cols[3], cols[9]
                if state != "0A" or inode not in inodes:  # 0A = LISTEN
                    continue
                addr_hex, port_hex = local.split(":")
                found.add((addr_hex, int(port_hex, 16)))
    return found


LOOPBACK_HEX = {"0100007F", "0000000000000000FFFF00000100007F"}
"""127.0.0.1 as /proc/net/tcp spells it, plain and as an IPv4-mapped IPv6 address."""


def test_the_server_listens_only_on_loopback_on_its_rest_and_stats_ports(
    elasticmq_server: elasticmq.ElasticMQServer,
) -> None:
    listening = _listening_addresses(elasticmq_server.pid)
    ports = {port for _, port in listening}
    assert {elasticmq_server.port, elasticmq_server.stats_port} <= ports
    assert all(addr in LOOPBACK_HEX for addr, _ in listening), listening


def test_a_persistent_server_keeps_its_queue_and_message_across_kill_9(
    elasticmq_factory: Callable[..., elasticmq.ElasticMQServer],
) -> None:
    # Given a persistent server with one message in a queue
    server = elasticmq_factory(persistent=True)
    _query(server, Action="CreateQueue", QueueName="kept")
    queue_url = f"{server.endpoint}/000000000000/kept"
    _query(server, Action="SendMessage", QueueUrl=queue_url, MessageBody="survivor")
    # When the server is killed with SIGKILL and started again on the same data
    pid = server.pid
    server.kill()
    assert not os.path.exists(f"/proc/{pid}")
    server.start()
    # Then the queue and its message are still there
    assert "kept" in _query(server, Action="ListQueues")
    assert "survivor" in _query(
        server, Action="ReceiveMessage", QueueUrl=queue_url, WaitTimeSeconds="1"
    )


def test_stop_ends_the_process_it_started(
    elasticmq_factory: Callable[..., elasticmq.ElasticMQServer],
) -> None:
    server = elasticmq_factory()
    pid = server.pid
    server.stop()
    assert server.process is not None and server.process.returncode is not None
    assert not os.path.exists(f"/proc/{pid}")
    assert not server.answers()
